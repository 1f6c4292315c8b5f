"""GAN losses. A loss holds hyperparameters, never networks: the recipe passes D in.

`D` is any callable images -> logits (N,); conditional recipes pass `lambda x: D(x, labels)`.
Every method returns a dict of named terms; the loop sums them, scales them for AMP,
backpropagates and reports each one (`loss/D/real`, `loss/D/gp`, `loss/G/adv`).

Each objective only says how logits become terms (`d_terms`, `g_term`); the regularizers that
work with any objective (lazy R1, instance noise, one-sided label smoothing for the
cross-entropy losses) live in the shared base class.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ganrun.errors import GanrunError

Critic = Callable[[torch.Tensor], torch.Tensor]

# helpers


def gradient_norms(D: Critic, inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample ||dD(x)/dx||_2 (N,), in fp32 even inside an autocast region, differentiable.

    Penalties on input gradients are sums of many small squares: in bf16/fp16 they lose most
    of their bits, so D runs this extra pass in fp32 (create_graph: the penalty is trained on).
    """
    with torch.autocast(inputs.device.type, enabled=False):
        inputs = inputs.detach().float().requires_grad_(True)
        (gradient,) = torch.autograd.grad(D(inputs).float().sum(), inputs, create_graph=True)
    return gradient.flatten(start_dim=1).norm(dim=1)


# classes


class GANLoss:
    """Base class: one objective plus the regularizers every objective can use.

    r1_gamma: R1 penalty (gamma/2) E||grad D(real)||^2 (Mescheder et al. 2018), 0 = off;
        lazy as in StyleGAN2: applied when step % r1_every == 0 and scaled by r1_every.
    label_smoothing: one-sided (real targets 1 - s, Salimans et al. 2016); cross-entropy losses only.
    instance_noise: std of Gaussian noise added to everything D sees (Sonderby et al. 2017),
        annealed linearly to 0 over instance_noise_anneal_steps (0 = constant).
    n_critic: D steps per G step; None = the objective's published schedule.
    adam_betas: the Adam betas the objective was published with; conf/optim/adam.yaml reads
        them from the loss node, so `loss=wgan_gp` brings (0, 0.9) unless optim.*.betas is set.
    """

    default_n_critic = 1
    supports_label_smoothing = False
    # Weight clipping bound the recipe applies to D after each D step (WGAN); None = no clipping.
    clip: Optional[float] = None
    # D's output at which it cannot tell real from fake: below it, a sample is called fake. The
    # saturation alarm reads D's accuracy on fakes from it; a Wasserstein critic has none.
    decision_threshold: Optional[float] = 0.0

    def __init__(
        self,
        *,
        r1_gamma: float = 0.0,
        r1_every: int = 1,
        label_smoothing: float = 0.0,
        instance_noise: float = 0.0,
        instance_noise_anneal_steps: int = 0,
        n_critic: Optional[int] = None,
        adam_betas: Optional[Sequence[float]] = None,
    ):
        name = type(self).__name__
        if r1_gamma < 0:
            raise GanrunError(f"loss.r1_gamma must be >= 0 (0 = off), got {r1_gamma}")
        if r1_every < 1:
            raise GanrunError(f"loss.r1_every must be >= 1, got {r1_every}")
        if not 0.0 <= label_smoothing < 1.0:
            raise GanrunError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
        if label_smoothing and not self.supports_label_smoothing:
            raise GanrunError(
                f"loss.label_smoothing={label_smoothing} has no meaning for {name} (only bce and minimax "
                "have targets to smooth); set loss.label_smoothing=0"
            )
        if instance_noise < 0 or instance_noise_anneal_steps < 0:
            raise GanrunError(
                f"loss.instance_noise and loss.instance_noise_anneal_steps must be >= 0, "
                f"got {instance_noise} and {instance_noise_anneal_steps}"
            )
        if n_critic is not None and n_critic < 1:
            raise GanrunError(f"n_critic must be >= 1, got {n_critic}; e.g. trainer.n_critic=5")
        self.r1_gamma, self.r1_every = r1_gamma, r1_every
        self.real_target = 1.0 - label_smoothing
        self.instance_noise, self.instance_noise_anneal_steps = instance_noise, instance_noise_anneal_steps
        self.n_critic = self.default_n_critic if n_critic is None else n_critic
        self.adam_betas = tuple(adam_betas) if adam_betas is not None else None

    # the recipe's side

    def d_loss(self, D: Critic, real: torch.Tensor, fake: torch.Tensor, *, step: int = 0) -> dict[str, torch.Tensor]:
        real, fake = self.noisy(real, step=step), self.noisy(fake, step=step)
        terms = self.d_terms(D(real), D(fake))
        terms.update(self.penalties(D, real, fake))
        if self.r1_gamma:
            # Every step reports r1 (0 between lazy steps), so the logged mean is the amortized penalty.
            terms["r1"] = (
                (self.r1_gamma / 2) * self.r1_every * gradient_norms(D, real).square().mean()
                if step % self.r1_every == 0
                else torch.zeros((), device=real.device)
            )
        return terms

    def g_loss(self, D: Critic, fake: torch.Tensor, *, step: int = 0) -> dict[str, torch.Tensor]:
        return {"adv": self.g_term(D(self.noisy(fake, step=step)))}

    def noisy(self, images: torch.Tensor, *, step: int) -> torch.Tensor:
        std = self.instance_noise
        if self.instance_noise_anneal_steps:
            std *= max(0.0, 1.0 - step / self.instance_noise_anneal_steps)
        return images + std * torch.randn_like(images) if std > 0 else images

    # the objective's side

    def d_terms(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalties(self, D: Critic, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        """Objective-specific penalty terms (WGAN-GP's); none by default."""
        return {}


class _CrossEntropyD(GANLoss):
    """D as a real/fake classifier on logits: -log D(x) - log(1 - D(G(z))), stably via softplus."""

    supports_label_smoothing = True

    def d_terms(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        real_term = F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.real_target))
        return {"real": real_term, "fake": F.softplus(fake_logits).mean()}


class MinimaxLoss(_CrossEntropyD):
    """The saturating game of Goodfellow et al. 2014 (eq. 1): G minimizes log(1 - D(G(z))).

    log(1 - sigmoid(l)) = -softplus(l): exact and stable on logits. Its gradient vanishes
    when D confidently rejects the fakes, which is why the paper trains G on the
    non-saturating form in practice (bce).
    """

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -F.softplus(fake_logits).mean()


class NonSaturatingLoss(_CrossEntropyD):
    """The standard GAN loss on logits; G maximizes log D(G(z)) (Goodfellow et al. 2014, sec. 3)."""

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake_logits).mean()


class LeastSquaresLoss(GANLoss):
    """LSGAN (Mao et al. 2017, eq. 2) with a=0, b=1, c=1 and the paper's 1/2 factors."""

    decision_threshold = 0.5  # halfway between the fake (0) and real (1) targets

    def d_terms(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"real": 0.5 * (real_logits - 1).square().mean(), "fake": 0.5 * fake_logits.square().mean()}

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return 0.5 * (fake_logits - 1).square().mean()


class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018): D margins at +-1, G raises D's score."""

    def d_terms(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"real": F.relu(1 - real_logits).mean(), "fake": F.relu(1 + fake_logits).mean()}

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


class WassersteinLoss(GANLoss):
    """WGAN critic (Arjovsky et al. 2017, Algorithm 1): D maximizes E D(x) - E D(G(z)).

    The Lipschitz constraint is weight clipping to [-clip, clip], done by the recipe after
    every critic step; 5 critic steps per G step.
    """

    default_n_critic = 5
    decision_threshold = None

    def __init__(self, *, clip: float = 0.01, **regularizers):
        super().__init__(**regularizers)
        if clip <= 0:
            raise GanrunError(f"loss.clip must be > 0, got {clip}; the paper uses loss.clip=0.01")
        self.clip = clip

    def d_terms(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"real": -real_logits.mean(), "fake": fake_logits.mean()}

    def g_term(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


class WassersteinGPLoss(WassersteinLoss):
    """WGAN-GP (Gulrajani et al. 2017, Algorithm 1): the critic loss plus
    lambda * E (||grad D(x_hat)||_2 - 1)^2 on x_hat = eps real + (1 - eps) fake, eps ~ U(0, 1)
    per sample. No clipping; lambda 10, 5 critic steps per G step, Adam(1e-4, 0, 0.9).
    """

    clip = None

    def __init__(self, *, gp_lambda: float = 10.0, **regularizers):
        GANLoss.__init__(self, **regularizers)
        if gp_lambda < 0:
            raise GanrunError(f"loss.gp_lambda must be >= 0, got {gp_lambda}; the paper uses loss.gp_lambda=10")
        self.gp_lambda = gp_lambda

    def penalties(self, D: Critic, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        real, fake = real.detach().float(), fake.detach().float()
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
        interpolates = eps * real + (1 - eps) * fake
        return {"gp": self.gp_lambda * (gradient_norms(D, interpolates) - 1).square().mean()}
