"""The unconditional GAN recipe: alternate a D step and a G step on one batch of latents."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ganrun.recipes.base import Recipe, Stepper, frozen


class GANRecipe(Recipe):
    def __init__(self, *, G: nn.Module, D: nn.Module, z_dim: int, loss: Any, optim: dict[str, Any]):
        super().__init__()
        self.z_dim = z_dim
        self.loss = loss
        self.networks = {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        make_optimizer: dict[str, Callable] = optim
        self.optimizers = {name: make_optimizer[name](net.parameters()) for name, net in self.networks.items()}

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, D = self.train_networks["G"], self.train_networks["D"]
        real = batch["image"]
        z = torch.randn(real.shape[0], self.z_dim, device=real.device)
        with stepper.autocast():
            fake = G(z)
            d_terms = self.loss.d_loss(D, real, fake.detach())
        stepper.step("D", d_terms)
        # The same fakes train G against the updated D (as in pytorch/examples/dcgan).
        with frozen(D), stepper.autocast():
            g_terms = self.loss.g_loss(D, fake)
        stepper.step("G", g_terms)
        return {
            **{f"D/{name}": value.detach() for name, value in d_terms.items()},
            **{f"G/{name}": value.detach() for name, value in g_terms.items()},
        }

    def grid_inputs(self, n: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"z": torch.randn(n, self.z_dim, generator=generator)}

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return G(inputs["z"])
