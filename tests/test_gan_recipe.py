"""The GAN recipe: n_critic schedule, clipping, LR decay, conditional training and sampling,
DiffAugment, every loss config through the real loop, bit-identical resume."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from conftest import cli, run_train, tiny_overrides
from PIL import Image
from test_training import _tensors_equal

from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint
from ganrun.losses import HingeLoss, NonSaturatingLoss, WassersteinLoss
from ganrun.models.dcgan import Discriminator, Generator
from ganrun.models.diffaugment import DiffAugment
from ganrun.recipes.base import Stepper
from ganrun.recipes.gan import GANRecipe

# helpers

Z_DIM, CLASSES = 4, 3


def adam(**options):
    return functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999), **options)


def tiny_recipe(*, loss, num_classes: int = 0, diffaugment=None, **optim) -> GANRecipe:
    torch.manual_seed(0)
    return GANRecipe(
        G=Generator(z_dim=Z_DIM, resolution=28, channels=1, width=4, num_classes=num_classes),
        D=Discriminator(resolution=28, channels=1, width=4, num_classes=num_classes),
        z_dim=Z_DIM,
        loss=loss,
        optim={"G": adam(), "D": adam(), **optim},
        num_classes=num_classes,
        diffaugment=diffaugment,
    )


def fp32_stepper(recipe: GANRecipe, *, step_index: int = 0) -> Stepper:
    stepper = Stepper(
        device_type="cpu",
        autocast_dtype=None,
        optimizers=recipe.optimizers,
        scalers={name: torch.amp.GradScaler("cpu", enabled=False) for name in recipe.optimizers},
    )
    stepper.step_index = step_index
    return stepper


def batch_for(recipe: GANRecipe, *, per_step: int = 4) -> dict[str, torch.Tensor]:
    n = per_step * recipe.batches_per_step
    batch = {"image": torch.rand(n, 1, 28, 28) * 2 - 1}
    if recipe.num_classes:
        batch["label"] = torch.arange(n) % recipe.num_classes
    return batch


def optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    return int(next(iter(optimizer.state.values()))["step"])


# schedules


def test_n_critic_five_takes_five_d_steps_per_g_step():
    recipe = tiny_recipe(loss=WassersteinLoss())
    assert recipe.batches_per_step == 5
    terms = recipe.train_step(batch_for(recipe), fp32_stepper(recipe))
    assert optimizer_steps(recipe.optimizers["D"]) == 5 and optimizer_steps(recipe.optimizers["G"]) == 1
    assert set(terms) == {"D/real", "D/fake", "G/adv"} and all(not v.requires_grad for v in terms.values())
    recipe.train_step(batch_for(recipe), fp32_stepper(recipe, step_index=1))
    assert optimizer_steps(recipe.optimizers["D"]) == 10 and optimizer_steps(recipe.optimizers["G"]) == 2


def test_n_critic_from_the_trainer_overrides_the_loss():
    recipe = tiny_recipe(loss=HingeLoss(n_critic=2))
    recipe.train_step(batch_for(recipe), fp32_stepper(recipe))
    assert optimizer_steps(recipe.optimizers["D"]) == 2 and optimizer_steps(recipe.optimizers["G"]) == 1


def test_weight_clipping_keeps_every_critic_parameter_in_range():
    recipe = tiny_recipe(loss=WassersteinLoss(clip=0.01))
    with torch.no_grad():
        for parameter in recipe.networks["D"].parameters():
            parameter.normal_(0, 1.0)  # far outside the box
    recipe.train_step(batch_for(recipe), fp32_stepper(recipe))
    values = torch.cat([p.flatten() for p in recipe.networks["D"].parameters()])
    assert values.abs().max() <= 0.01 and values.abs().max() > 0.009  # clipped, not zeroed
    assert any(p.abs().max() > 0.01 for p in recipe.networks["G"].parameters())  # G untouched


def test_linear_decay_holds_then_reaches_zero():
    recipe = tiny_recipe(loss=NonSaturatingLoss(), decay="linear", decay_start=0.5, total_steps=8)
    rates = []
    for _ in range(8):
        rates.append(recipe.optimizers["G"].param_groups[0]["lr"])
        for name, scheduler in recipe.schedulers.items():  # as the loop does after each train_step
            recipe.optimizers[name].step()
            scheduler.step()
    assert rates == pytest.approx([1e-3] * 5 + [7.5e-4, 5e-4, 2.5e-4])
    assert recipe.optimizers["D"].param_groups[0]["lr"] == 0.0
    assert tiny_recipe(loss=NonSaturatingLoss()).schedulers == {}  # decay: none
    with pytest.raises(GanrunError, match="optim.decay must be none or linear"):
        tiny_recipe(loss=NonSaturatingLoss(), decay="cosine", decay_start=0.0, total_steps=8)


# conditional


def test_conditional_generator_output_changes_with_the_label():
    recipe = tiny_recipe(loss=NonSaturatingLoss(), num_classes=CLASSES)
    G = recipe.generator.eval()
    z = torch.randn(2, Z_DIM).repeat(CLASSES, 1)
    labels = torch.arange(CLASSES).repeat_interleave(2)
    with torch.no_grad():
        images = G(z, labels).view(CLASSES, 2, -1)
    # The label code starts quiet (N(0, 0.02), so z dominates at init) but never silent.
    for a in range(CLASSES):
        for b in range(a + 1, CLASSES):
            assert (images[a] - images[b]).abs().max() > 1e-6
    # and the conditional recipe trains on labelled batches
    terms = recipe.train_step(batch_for(recipe), fp32_stepper(recipe))
    assert all(torch.isfinite(v) for v in terms.values())
    with pytest.raises(GanrunError, match="labelled batches"):
        recipe.train_step({"image": torch.zeros(4, 1, 28, 28)}, fp32_stepper(recipe))


def test_conditional_grid_has_one_row_per_class_and_one_latent_per_column():
    recipe = tiny_recipe(loss=NonSaturatingLoss(), num_classes=CLASSES)
    grid = recipe.grid_inputs(16, generator=torch.Generator().manual_seed(0))  # 4 columns, rows 0, 1, 2, 0
    assert grid["label"].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [0] * 4
    z = grid["z"].view(4, 4, Z_DIM)
    assert torch.equal(z[0], z[1]) and torch.equal(z[0], z[3]) and not torch.equal(z[0, 0], z[0, 1])
    chosen = recipe.grid_inputs(6, generator=torch.Generator().manual_seed(0), labels=[2, 0])
    assert chosen["label"].tolist() == [2, 2, 2, 0, 0, 0]
    with pytest.raises(GanrunError, match=r"labels=\[0, 3\].*\[0, 3\)"):
        recipe.grid_inputs(6, generator=torch.Generator(), labels=[0, 3])
    assert set(tiny_recipe(loss=NonSaturatingLoss()).grid_inputs(4, generator=torch.Generator())) == {"z"}


# DiffAugment


def test_diffaugment_keeps_shape_is_differentiable_and_differs_per_sample():
    augment = DiffAugment(policy="color,translation,cutout")
    x = torch.linspace(-1, 1, 3 * 8 * 8).view(1, 3, 8, 8).repeat(6, 1, 1, 1).requires_grad_(True)
    torch.manual_seed(0)
    out = augment(x)
    assert out.shape == x.shape
    assert len({tuple(sample.flatten().tolist()) for sample in out.detach()}) == 6  # 6 identical inputs, 6 outputs
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    torch.manual_seed(0)
    assert torch.equal(augment(x.detach()), out.detach())  # global RNG only: resumable
    assert DiffAugment(policy=["translation"])(x.detach()).shape == x.shape  # list form of the policy
    with pytest.raises(GanrunError, match="model.diffaugment='colour'"):
        DiffAugment(policy="colour")


def test_diffaugment_reaches_everything_d_sees():
    seen = []
    recipe = tiny_recipe(loss=NonSaturatingLoss(), diffaugment="cutout")
    D = recipe.networks["D"]
    D.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    batch = {"image": torch.full((4, 1, 28, 28), 0.5)}
    recipe.train_step(batch, fp32_stepper(recipe))
    assert len(seen) == 3  # real, fake (D step), fake (G step)
    assert all((images == 0).flatten(1).any(dim=1).all() for images in seen)  # every image got a cutout


# through the real loop


# loss=wgan_gp runs in the resume test below
@pytest.mark.parametrize("choice", ["loss=minimax", "loss=bce", "loss=lsgan", "loss=hinge", "model=wgan"])
def test_two_steps_of_each_loss_config_through_the_loop(choice, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    extra = {"trainer.max_steps": 2, "trainer.sample_every": 2, "trainer.ckpt_every": 2, "trainer.precision": "fp32"}
    run_train([choice, *tiny_overrides(mnist_root, **extra)], run_dir)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    losses = {key: value for key, value in row.items() if key.startswith("loss/")}
    assert {"loss/D/real", "loss/D/fake", "loss/G/adv"} <= set(losses)
    assert all(np.isfinite(value) for value in losses.values())
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    n_critic = 5 if choice == "model=wgan" else 1
    assert checkpoint["progress"] == {"step": 2, "images_seen": 2 * 8 * n_critic}
    assert optimizer_steps_in(checkpoint, "D") == 2 * n_critic and optimizer_steps_in(checkpoint, "G") == 2
    if choice == "model=wgan":
        assert "square_avg" in next(iter(checkpoint["recipe"]["optimizers"]["D"]["state"].values()))  # RMSprop
        critic = checkpoint["recipe"]["networks"]["D"]
        assert max(value.abs().max() for name, value in critic.items() if "running" not in name and value.is_floating_point()) <= 0.01


def optimizer_steps_in(checkpoint: dict, name: str) -> int:
    return int(next(iter(checkpoint["recipe"]["optimizers"][name]["state"].values()))["step"])


@pytest.mark.parametrize(
    "extra",
    [
        ["loss=wgan_gp", "optim.decay=linear", "optim.decay_start=0.25"],
        ["conditional=true", "model.diffaugment=[color,translation,cutout]", "loss.r1_gamma=1", "loss.r1_every=3"],
    ],
    ids=["wgan_gp+decay", "conditional+diffaugment+r1"],
)
def test_resume_is_bit_identical(extra, mnist_root, tmp_path):
    """Resuming from the step-2 checkpoint of a 4-step run ends where the uninterrupted run ends
    (the same max_steps: the LR schedule is a function of it)."""
    overrides = [*extra, *tiny_overrides(mnist_root, **{"trainer.sample_every": 2, "trainer.ckpt_every": 2})]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_train(overrides, full)
    middle = load_checkpoint(full / "checkpoints" / "step_0000002.pt")
    run_train([*overrides, f"resume={full / 'checkpoints' / 'step_0000002.pt'}"], resumed)

    a, b = load_checkpoint(full / "checkpoints" / LAST), load_checkpoint(resumed / "checkpoints" / LAST)
    for key in ("recipe", "G_ema", "scalers", "data", "rng", "grid", "progress"):
        _tensors_equal(a[key], b[key], key)
    grid = [np.asarray(Image.open(run / "samples" / "step_0000004.png")) for run in (full, resumed)]
    assert np.array_equal(*grid)
    if "loss=wgan_gp" in extra:
        # 4 steps, decay from step 1: lr 2e-4 * (4 - step) / 3; the paper's Adam betas; 5 batches a step
        assert middle["recipe"]["optimizers"]["D"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 2 / 3)
        assert a["recipe"]["optimizers"]["G"]["param_groups"][0]["lr"] == 0.0
        assert a["recipe"]["optimizers"]["G"]["param_groups"][0]["betas"] == (0.0, 0.9)
        assert a["progress"]["images_seen"] == 4 * 8 * 5 and optimizer_steps_in(a, "D") == 4 * 5
        assert "loss/D/gp" in (full / "metrics.jsonl").read_text()
    else:
        assert a["grid"]["label"].tolist() == [0, 0, 1, 1]  # rows = classes


# conditional end to end: config, sampling


def test_conditional_on_a_dataset_without_labels_is_a_clear_error(tmp_path):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "faces", count=8)
    overrides = ["dataset=image_folder", "conditional=true", f"dataset.root={root}", "dataset.resolution=32", "logger.mode=disabled"]
    with pytest.raises(GanrunError, match="conditional=true needs a dataset with labels"):
        run_train(overrides, tmp_path / "run")


def test_sample_rows_of_chosen_classes_and_clear_errors(capsys, mnist_root, tmp_path):
    conditional, plain = tmp_path / "conditional", tmp_path / "plain"
    extra = {"trainer.max_steps": 1, "trainer.ckpt_every": 1, "trainer.sample_every": 0}
    run_train(["conditional=true", *tiny_overrides(mnist_root, **extra)], conditional)
    out = tmp_path / "rows.png"
    code, stdout, err = cli(capsys, "sample", f"ckpt={conditional}", "labels=[0,1,2]", "n=12", f"out={out}")
    assert code == 0, err
    assert Image.open(out).size == (4 * 28 + 10, 3 * 28 + 8)  # 3 rows (classes) x 4 columns, 2-pixel padding
    code, _, err = cli(capsys, "sample", f"ckpt={conditional}", "labels=[0,10]", f"out={tmp_path / 'bad.png'}")
    assert code != 0 and "labels=[0, 10]" in err and "[0, 10)" in err
    run_train(tiny_overrides(mnist_root, **extra), plain)
    code, _, err = cli(capsys, "sample", f"ckpt={plain}", "labels=[1]", f"out={tmp_path / 'x.png'}")
    assert code != 0 and "needs a conditional checkpoint" in err


def test_experiment_configs_pin_the_published_settings():
    from conftest import compose_train

    from ganrun.config import build

    cgan = compose_train(["experiment=cgan_mnist"])
    assert cgan.conditional and cgan.model.num_classes == 10 and cgan.trainer.grid_size == 100
    wgangp = compose_train(["experiment=wgangp_cifar10"])
    assert wgangp.dataset.name == "cifar10" and wgangp.trainer.n_critic == 5 and wgangp.trainer.batch_size == 64
    assert wgangp.optim.lr == 1e-4 and list(wgangp.optim.D.betas) == [0.5, 0.9]
    loss = build(wgangp.loss)
    assert type(loss).__name__ == "WassersteinGPLoss" and loss.gp_lambda == 10.0 and loss.n_critic == 5
