"""Every GAN loss on hand-made logits, the WGAN-GP and R1 penalties against hand computation,
the regularizers' schedules, fp32 penalties under autocast, and the loss configs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train
from torch import nn

from ganrun.config import build
from ganrun.errors import GanrunError
from ganrun.losses import (
    HingeLoss,
    LeastSquaresLoss,
    MinimaxLoss,
    NonSaturatingLoss,
    WassersteinGPLoss,
    WassersteinLoss,
)

ALL_LOSSES = [MinimaxLoss, NonSaturatingLoss, LeastSquaresLoss, HingeLoss, WassersteinLoss, WassersteinGPLoss]


def identity_critic(x: torch.Tensor) -> torch.Tensor:
    """'Images' of shape (N, 1) whose single pixel is the logit."""
    return x.flatten()


def tiny_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))


def images(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def logits(*values: float) -> torch.Tensor:
    return torch.tensor(values).unsqueeze(1)


# objectives on hand-made logits

REAL, FAKE = [2.0, -1.0], [0.5, -3.0]


@pytest.mark.parametrize(
    "loss, expected_real, expected_fake, expected_adv",
    [
        (MinimaxLoss(), lambda r: F.softplus(-r), lambda f: F.softplus(f), lambda f: torch.log1p(-torch.sigmoid(f))),
        (NonSaturatingLoss(), lambda r: F.softplus(-r), lambda f: F.softplus(f), lambda f: -torch.log(torch.sigmoid(f))),
        (LeastSquaresLoss(), lambda r: 0.5 * (r - 1) ** 2, lambda f: 0.5 * f**2, lambda f: 0.5 * (f - 1) ** 2),
        (HingeLoss(), lambda r: torch.clamp(1 - r, min=0), lambda f: torch.clamp(1 + f, min=0), lambda f: -f),
        (WassersteinLoss(), lambda r: -r, lambda f: f, lambda f: -f),
    ],
    ids=["minimax", "bce", "lsgan", "hinge", "wgan"],
)
def test_each_objective_matches_its_formula(loss, expected_real, expected_fake, expected_adv):
    real, fake = torch.tensor(REAL), torch.tensor(FAKE)
    d_terms = loss.d_loss(identity_critic, logits(*REAL), logits(*FAKE))
    assert set(d_terms) == {"real", "fake"}
    torch.testing.assert_close(d_terms["real"], expected_real(real).mean())
    torch.testing.assert_close(d_terms["fake"], expected_fake(fake).mean())
    torch.testing.assert_close(loss.g_loss(identity_critic, logits(*FAKE))["adv"], expected_adv(fake).mean())


@pytest.mark.parametrize("loss_class", ALL_LOSSES)
def test_a_better_critic_has_lower_d_loss_and_fooling_it_lowers_g_loss(loss_class):
    loss = loss_class()

    def d_total(real: float, fake: float) -> float:
        terms = loss.d_loss(identity_critic, logits(real, real), logits(fake, fake))
        return float(sum(value for name, value in terms.items() if name in ("real", "fake")))

    # logits 1 / 0 are LSGAN's targets for real / fake; the other losses only want them apart
    assert d_total(1.0, 0.0) < d_total(0.5, 0.5) < d_total(0.0, 1.0)
    g_adv = [float(loss.g_loss(identity_critic, logits(f, f))["adv"]) for f in (0.0, 0.5, 1.0)]
    assert g_adv[0] > g_adv[1] > g_adv[2]
    assert all(torch.isfinite(torch.tensor(g_adv)))


def test_minimax_saturates_where_the_non_saturating_loss_does_not():
    """The 2014 paper's reason for the non-saturating G loss: with D confidently rejecting
    fakes (logit -10), log(1 - D(G(z))) has almost no gradient."""
    gradients = {}
    for loss in (MinimaxLoss(), NonSaturatingLoss()):
        fake = logits(-10.0).requires_grad_(True)
        loss.g_loss(identity_critic, fake)["adv"].backward()
        gradients[type(loss).__name__] = fake.grad.abs().item()
    assert gradients["MinimaxLoss"] < 1e-4 < 0.99 < gradients["NonSaturatingLoss"]


def test_extreme_logits_stay_finite():
    for loss_class in ALL_LOSSES:
        loss = loss_class()
        terms = loss.d_loss(identity_critic, logits(1e4, -1e4), logits(-1e4, 1e4))
        terms.update(loss.g_loss(identity_critic, logits(-1e4, 1e4)))
        assert all(torch.isfinite(value) for value in terms.values()), loss_class.__name__


def test_label_smoothing_moves_the_real_target():
    smoothed = NonSaturatingLoss(label_smoothing=0.1).d_loss(identity_critic, logits(2.0), logits(0.0))["real"]
    expected = -(0.9 * F.logsigmoid(torch.tensor(2.0)) + 0.1 * F.logsigmoid(torch.tensor(-2.0)))
    torch.testing.assert_close(smoothed, expected)


@pytest.mark.parametrize("loss_class", [LeastSquaresLoss, HingeLoss, WassersteinLoss, WassersteinGPLoss])
def test_label_smoothing_on_a_loss_without_targets_is_a_clear_error(loss_class):
    with pytest.raises(GanrunError, match=r"loss\.label_smoothing=0\.1 has no meaning .* set loss\.label_smoothing=0"):
        loss_class(label_smoothing=0.1)


def test_bad_regularizer_values_are_clear_errors():
    for kwargs, key in [({"r1_gamma": -1}, "r1_gamma"), ({"r1_every": 0}, "r1_every"), ({"instance_noise": -0.1}, "instance_noise")]:
        with pytest.raises(GanrunError, match=key):
            HingeLoss(**kwargs)
    with pytest.raises(GanrunError, match="loss.clip"):
        WassersteinLoss(clip=0)


# penalties against hand computation


def _hand_gradient_norm(D: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||dD(x_i)/dx_i||_2 one sample at a time: no batching tricks to get wrong."""
    norms = []
    for sample in x:
        sample = sample.unsqueeze(0).clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(D(sample).sum(), sample)
        norms.append(gradient.flatten().norm())
    return torch.stack(norms)


def test_wgan_gp_penalty_equals_the_hand_computed_per_sample_penalty():
    D, real, fake = tiny_critic(), images(1), images(2)
    torch.manual_seed(7)
    terms = WassersteinGPLoss(gp_lambda=10.0).d_loss(D, real, fake)

    torch.manual_seed(7)  # the same eps ~ U(0, 1), one per sample
    eps = torch.rand(4, 1, 1, 1)
    assert len(eps.unique()) == 4
    interpolates = eps * real + (1 - eps) * fake
    expected = 10.0 * ((_hand_gradient_norm(D, interpolates) - 1) ** 2).mean()
    torch.testing.assert_close(terms["gp"], expected)
    torch.testing.assert_close(terms["real"], -D(real).mean())

    # create_graph: the penalty itself trains the critic
    terms["gp"].backward()
    assert D[1].weight.grad is not None and D[1].weight.grad.abs().sum() > 0


def test_lazy_r1_applies_on_multiples_of_k_scaled_by_k():
    D, real, fake = tiny_critic(), images(1), images(2)
    loss = HingeLoss(r1_gamma=2.0, r1_every=4)
    expected = (2.0 / 2) * 4 * (_hand_gradient_norm(D, real) ** 2).mean()
    for step in range(9):
        r1 = loss.d_loss(D, real, fake, step=step)["r1"]
        if step % 4 == 0:
            torch.testing.assert_close(r1, expected)
        else:
            assert r1.item() == 0.0 and not r1.requires_grad
    assert "r1" not in HingeLoss().d_loss(D, real, fake)  # off by default


@pytest.mark.parametrize("loss", [WassersteinGPLoss(), NonSaturatingLoss(r1_gamma=1.0)], ids=["gp", "r1"])
def test_penalties_are_fp32_under_bf16_autocast(loss):
    D, real, fake = tiny_critic(), images(1), images(2)
    torch.manual_seed(3)
    reference = loss.d_loss(D, real, fake)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = loss.d_loss(D, real, fake)
        assert D(real).dtype == torch.bfloat16  # the rest of D really runs in bf16 here
    name = "gp" if "gp" in terms else "r1"
    assert terms[name].dtype == torch.float32 and torch.isfinite(terms[name])
    # computed in fp32: equal to the fp32 reference, not merely close at bf16's 3 digits
    torch.testing.assert_close(terms[name], reference[name], rtol=1e-5, atol=1e-6)
    terms[name].backward()
    # (the output bias has no say in input gradients, hence no gradient from the penalty)
    assert torch.isfinite(D[1].weight.grad).all() and D[1].weight.grad.abs().sum() > 0


def test_instance_noise_anneals_linearly_to_zero():
    loss = HingeLoss(instance_noise=0.5, instance_noise_anneal_steps=10)
    x = torch.zeros(20000)
    torch.testing.assert_close(loss.noisy(x, step=0).std(), torch.tensor(0.5), rtol=0.03, atol=0)
    torch.testing.assert_close(loss.noisy(x, step=5).std(), torch.tensor(0.25), rtol=0.03, atol=0)
    assert torch.equal(loss.noisy(x, step=10), x) and torch.equal(loss.noisy(x, step=50), x)
    assert torch.equal(HingeLoss(instance_noise=0.5).noisy(x, step=10**6).eq(0), torch.zeros(20000, dtype=torch.bool))
    # D sees noisy reals and fakes in both steps
    seen = []
    loss.d_loss(lambda images: seen.append(images) or images.flatten(), logits(1.0, 1.0), logits(0.0, 0.0), step=0)
    assert all(not torch.equal(images, images.round()) for images in seen)


# configs


@pytest.mark.parametrize(
    "name, n_critic, target",
    [("minimax", 1, MinimaxLoss), ("bce", 1, NonSaturatingLoss), ("lsgan", 1, LeastSquaresLoss),
     ("hinge", 1, HingeLoss), ("wgan", 5, WassersteinLoss), ("wgan_gp", 5, WassersteinGPLoss)],
)
def test_each_loss_config_builds_with_its_schedule_and_the_trainer_can_override_it(name, n_critic, target):
    loss = build(compose_train([f"loss={name}"]).loss)
    assert type(loss) is target and loss.n_critic == n_critic
    assert build(compose_train([f"loss={name}", "trainer.n_critic=3"]).loss).n_critic == 3
    # every loss config takes every regularizer
    regularized = build(compose_train([f"loss={name}", "loss.r1_gamma=1", "loss.r1_every=4", "loss.instance_noise=0.1"]).loss)
    assert (regularized.r1_gamma, regularized.r1_every, regularized.instance_noise) == (1.0, 4, 0.1)


def test_label_smoothing_on_hinge_from_the_command_line_is_a_clear_error():
    with pytest.raises(GanrunError, match="label_smoothing"):
        build(compose_train(["loss=hinge", "loss.label_smoothing=0.1"]).loss)


def test_wgan_gp_brings_the_papers_adam_betas_unless_the_user_sets_them():
    def betas(*overrides: str) -> tuple:
        optim = compose_train(list(overrides)).optim
        return tuple(optim.G.betas), tuple(optim.D.betas)

    assert betas() == ((0.5, 0.999), (0.5, 0.999))
    assert betas("loss=wgan_gp") == ((0.0, 0.9), (0.0, 0.9))
    assert betas("loss=wgan_gp", "optim.G.betas=[0.5,0.99]") == ((0.5, 0.99), (0.0, 0.9))
    rmsprop = build(compose_train(["loss=wgan_gp", "optim=rmsprop"]).optim)  # no betas to read: still builds
    assert isinstance(rmsprop["G"]([nn.Parameter(torch.zeros(1))]), torch.optim.RMSprop)


def test_model_wgan_switches_loss_and_optimizer_and_the_command_line_still_wins():
    cfg = compose_train(["model=wgan"])
    assert cfg.loss._target_ == "ganrun.losses.WassersteinLoss" and cfg.loss.clip == 0.01
    assert cfg.optim.G._target_ == "torch.optim.RMSprop" and cfg.optim.lr == 5e-5
    assert cfg.model.G._target_ == "ganrun.models.dcgan.Generator"  # DCGAN's networks
    assert compose_train(["model=wgan", "optim=adam"]).optim.G._target_ == "torch.optim.Adam"
    assert compose_train(["model=wgan", "loss=hinge"]).loss._target_ == "ganrun.losses.HingeLoss"
