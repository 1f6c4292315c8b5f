"""The VAE baseline (Kingma & Welling 2014): maximize the ELBO
    log p(x) >= E_q(z|x)[log p(x | z)] - KL(q(z | x) || N(0, I))
with a Gaussian encoder q(z | x) = N(mu(x), diag(exp(logvar(x)))), one reparameterized
sample per image, and the DCGAN generator as the decoder's mean.

Reconstruction term: Gaussian p(x | z) = N(G(z), recon_std^2 I) on the [-1, 1] pixels the
loop provides, i.e. a sum of squared errors / (2 recon_std^2) per image (the constant
D log(recon_std sqrt(2 pi)) is left out). Gaussian rather than Bernoulli because it fits every
dataset here (CIFAR-10 and CelebA are not binary) and G's tanh output as it is. The KL term
is analytic. Both are summed over pixels / latent dimensions and averaged over the batch, so
`VAE/neg_elbo` is the negative ELBO in nats per image (up to that constant).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.losses import NonSaturatingLoss
from ganrun.models.bigan import reject_labels
from ganrun.recipes.base import Stepper
from ganrun.recipes.reconstruction import ReconstructionRecipe

# helpers


def reject_gan_loss(loss: Any) -> None:
    """The VAE has no discriminator. The loss group still composes (its default is bce); any
    other choice or setting would be silently ignored, so it is an error instead."""
    default = NonSaturatingLoss()
    # adam_betas is read by optim=adam, so it does reach the VAE (through optim.G).
    changed = [key for key, value in vars(default).items() if key != "adam_betas" and vars(loss).get(key) != value]
    if type(loss) is not NonSaturatingLoss or changed:
        what = type(loss).__name__ if type(loss) is not NonSaturatingLoss else f"bce with {', '.join(changed)} changed"
        raise GanrunError(
            f"model=vae trains on its ELBO and uses no GAN loss, but the config asks for {what}; "
            "drop the loss=... / loss.* / trainer.n_critic overrides"
        )


# classes


class VAERecipe(ReconstructionRecipe):
    def __init__(
        self,
        *,
        G: nn.Module,
        E: nn.Module,
        z_dim: int,
        recon_std: float,
        loss: Any,
        optim: dict[str, Any],
        num_classes: int = 0,
    ):
        super().__init__()
        reject_labels(num_classes, "vae")
        reject_gan_loss(loss)
        if not recon_std > 0:
            raise GanrunError(f"model.recon_std must be > 0, got {recon_std}; e.g. model.recon_std=0.2")
        self.z_dim = z_dim
        self.recon_std = recon_std
        self.networks = {"G": G, "E": E}
        self.train_networks = dict(self.networks)
        # One optimizer over encoder and decoder, with optim.G's settings: one objective, one backward.
        self.bind_joint_optimizers(optim, {"VAE": ("G", [E, G])})

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        mu, _ = self.networks["E"](images)  # the posterior mean: the usual reconstruction to show
        return mu

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        E, G = self.train_networks["E"], self.train_networks["G"]
        real = batch["image"]
        with stepper.autocast():
            mu, logvar = E(real)
        # The sampling, KL and likelihood in fp32: exp() and sums of squares lose bits in bf16.
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterization trick
        with stepper.autocast():
            reconstruction = G(z)
        squared_error = (real.float() - reconstruction.float()).square().flatten(start_dim=1).sum(dim=1)
        recon = (squared_error / (2 * self.recon_std**2)).mean()
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(dim=1).mean()
        stepper.step("VAE", {"recon": recon, "kl": kl})
        return {"VAE/recon": recon.detach(), "VAE/kl": kl.detach(), "VAE/neg_elbo": (recon + kl).detach()}
