"""What the BiGAN and VAE recipes share: an encoder E next to the generator G, optimizers that
train several networks from one backward, and sample grids that show reconstructions.

A grid of n images: the top half pairs real images with their reconstructions G(E(x)) side
by side (original, reconstruction, original, ...), the bottom half is samples G(z), z ~ N(0, I).
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ganrun.recipes.base import Recipe, linear_decay_schedulers

# helpers


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block: encoding a grid must not move E's BatchNorm statistics."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def grid_pairs(n: int, available: int) -> int:
    """How many (original, reconstruction) pairs fill about half of an n-image grid."""
    return min(available, (n + 2) // 4)


# classes


class ReconstructionRecipe(Recipe):
    """Base for recipes with an encoder: subclasses set `z_dim` and implement `encode`."""

    grid_shows_reconstructions = True
    z_dim: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent G reconstructs `images` from (E in eval mode around this call)."""
        raise NotImplementedError

    def bind_joint_optimizers(self, optim: dict[str, Any], groups: dict[str, tuple[str, list[nn.Module]]]) -> None:
        """`groups`: optimizer name -> (the partial in `optim` it is made from, the networks it trains).

        Like Recipe.bind_optimizers, but one optimizer may own several networks: G and E are
        trained from one backward of one objective, so they step together.
        """
        self.optimizers = {
            name: optim[partial](itertools.chain.from_iterable(network.parameters() for network in networks))
            for name, (partial, networks) in groups.items()
        }
        self.schedulers = linear_decay_schedulers(
            self.optimizers,
            decay=optim.get("decay", "none"),
            decay_start=optim.get("decay_start", 0.0),
            total_steps=optim.get("total_steps", 1),
        )

    def grid_inputs(
        self, n: int, *, generator: torch.Generator, real: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        if real is None:  # plain samples: what `ganrun eval` and interpolations ask for
            return {"z": torch.randn(n, self.z_dim, generator=generator)}
        pairs = grid_pairs(n, len(real))
        # `real` stays in the inputs, so the checkpoint's "grid" entry keeps the originals.
        return {"real": real[:pairs], "z": torch.randn(n - 2 * pairs, self.z_dim, generator=generator)}

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        samples = G(inputs["z"])
        if "real" not in inputs:
            return samples
        real = inputs["real"]
        with evaluating(self.networks["E"]):
            reconstructions = G(self.encode(real)).to(real.dtype)
        pairs = torch.stack([real, reconstructions], dim=1).flatten(0, 1)  # original, its reconstruction, ...
        return torch.cat([pairs, samples.to(real.dtype)])

    def save_grid(self, outputs: torch.Tensor, path: Path, *, nrow: int) -> None:
        # An even row length keeps every original beside its reconstruction.
        super().save_grid(outputs, path, nrow=nrow + nrow % 2)
