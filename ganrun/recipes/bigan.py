"""The BiGAN recipe (Donahue et al. 2017; ALI, Dumoulin et al. 2017): G maps z to images,
E maps images to z, and a joint D(x, z) tells pairs (x, E(x)) from pairs (G(z), z).

D's step is the loss's D step with (x, E(x)) as real and (G(z), z) as fake. G and E then take
one step together (one optimizer "GE", one backward) on the same objective with the roles of
the pairs swapped: the label-flipped objective of the BiGAN/ALI implementations, which for
bce is the non-saturating game for both networks. At the game's optimum E inverts G, which is
what the sample grids show: real images beside G(E(x)).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.bigan import reject_labels
from ganrun.recipes.base import Stepper, frozen
from ganrun.recipes.reconstruction import ReconstructionRecipe

# helpers


def joint_critic(D: nn.Module, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the loss calls as D: images -> D(images, their latents), the latents looked up by
    which batch the loss passes (the loss API knows images only)."""

    def call(images: torch.Tensor) -> torch.Tensor:
        for batch, latents in pairs:
            if images is batch:
                return D(images, latents)
        raise GanrunError("the loss evaluated BiGAN's D on images it has no latents for")  # see check_loss_fits

    return call


def check_loss_fits(loss: Any) -> None:
    """Refuse losses that evaluate D on anything but the real and fake batch themselves
    (WGAN-GP's interpolates, R1's copies, instance noise): a joint D(x, z) has no z for them.

    Tried on tiny stand-ins with a probe D, so any loss class is judged by what it does."""
    real, fake = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    seen: list[torch.Tensor] = []

    def probe(images: torch.Tensor) -> torch.Tensor:
        seen.append(images)
        return images.flatten(start_dim=1).sum(dim=1)

    loss.d_loss(probe, real, fake, step=0)
    if any(images is not real and images is not fake for images in seen):
        raise GanrunError(
            f"loss {type(loss).__name__} evaluates D on images other than the real and generated batch "
            "(gradient penalty, R1 or instance noise), which BiGAN's joint D(x, z) has no latents for; "
            "use loss=bce, minimax, lsgan, hinge or wgan, with loss.r1_gamma=0 and loss.instance_noise=0"
        )


# classes


class BiGANRecipe(ReconstructionRecipe):
    def __init__(
        self,
        *,
        G: nn.Module,
        E: nn.Module,
        D: nn.Module,
        z_dim: int,
        loss: Any,
        optim: dict[str, Any],
        num_classes: int = 0,
    ):
        super().__init__()
        reject_labels(num_classes, "bigan")
        check_loss_fits(loss)
        self.z_dim = z_dim
        self.loss = loss
        self.networks = {"G": G, "E": E, "D": D}
        self.train_networks = dict(self.networks)
        # GE: optim.G's settings for both G and E (the BiGAN paper trains all three alike).
        self.bind_joint_optimizers(optim, {"D": ("D", [D]), "GE": ("G", [G, E])})

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.networks["E"](images)

    def _clip_critic(self, clip: float) -> None:
        # WGAN's Lipschitz constraint on the joint critic: every parameter back into [-clip, clip].
        with torch.no_grad():
            for parameter in self.networks["D"].parameters():
                parameter.clamp_(-clip, clip)

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, E, D = self.train_networks["G"], self.train_networks["E"], self.train_networks["D"]
        n_critic, clip = self.loss.n_critic, getattr(self.loss, "clip", None)
        step = stepper.step_index
        d_totals: dict[str, torch.Tensor] = {}
        reals = batch["image"].chunk(n_critic)
        for index, real in enumerate(reals):
            z = torch.randn(real.shape[0], self.z_dim, device=real.device)
            # Only the last D step's fakes and codes carry a graph: they also train G and E.
            with stepper.autocast(), torch.set_grad_enabled(index == n_critic - 1):
                fake, encoded = G(z), E(real)
            fake_detached, encoded_detached = fake.detach(), encoded.detach()
            with stepper.autocast():
                critic = joint_critic(D, [(real, encoded_detached), (fake_detached, z)])
                d_terms = self.loss.d_loss(critic, real, fake_detached, step=step)
            stepper.step("D", d_terms)
            if clip is not None:
                self._clip_critic(clip)
            for name, value in d_terms.items():
                d_totals[name] = d_totals.get(name, 0) + value.detach() / n_critic
        # G and E: the D objective with the pairs' roles swapped, through a frozen D.
        critic, fake_scores = joint_critic(D, [(fake, z), (real, encoded)]), []

        def watched_critic(images: torch.Tensor) -> torch.Tensor:
            scores = critic(images)
            if images is fake:
                fake_scores.append(scores.detach())
            return scores

        with frozen(D), stepper.autocast():
            ge_terms = self.loss.d_loss(watched_critic, fake, real, step=step)
        stepper.step("GE", ge_terms)
        stats = {}
        threshold = getattr(self.loss, "decision_threshold", None)
        if threshold is not None and len(fake_scores) == 1:
            # For the saturation alarm: how many fake pairs the just-updated D calls fake.
            stats["stat/D_acc_fake"] = (fake_scores[0].float() < threshold).float().mean()
        # The swapped "real" term is (G(z), z) passing as real: G's; "fake" is (x, E(x)) passing as fake: E's.
        owners = {"real": "G/adv", "fake": "E/adv"}
        return {
            **{f"D/{name}": value for name, value in d_totals.items()},
            **{owners.get(name, f"GE/{name}"): value.detach() for name, value in ge_terms.items()},
            **stats,
        }
