"""The GAN recipe, unconditional or class-conditional: n_critic D steps, then one G step.

One train_step is one generator iteration, as the papers count them: the loop hands over
n_critic batches at once (`batches_per_step`), D takes one step on each, G one step after.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.models.diffaugment import DiffAugment
from ganrun.recipes.base import Recipe, Stepper, generator_adversarial


class GANRecipe(Recipe):
    """G(z [, labels]) against D(images [, labels]) under any loss of ganrun.losses.

    num_classes > 0 trains class-conditionally (Mirza & Osindero 2014): D sees the batch's
    labels, and the fakes of a step are drawn for those same labels, so one critic closure
    `lambda x: D(x, labels)` serves real images, fakes and WGAN-GP's interpolates alike, and
    the fakes follow the data's class balance. `diffaugment` is a DiffAugment policy applied
    to everything D sees (null = off).
    """

    def __init__(
        self,
        *,
        G: nn.Module,
        D: nn.Module,
        z_dim: int,
        loss: Any,
        optim: dict[str, Any],
        num_classes: int = 0,
        diffaugment: Optional[str | Sequence[str]] = None,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.loss = loss
        self.num_classes = num_classes
        self.augment = DiffAugment(policy=diffaugment) if diffaugment else None
        self.networks = {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        self.bind_optimizers(optim)

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic

    # helpers

    def critic(self, D: nn.Module, labels: Optional[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the loss calls as D: augmentation and class labels bound in."""

        def call(images: torch.Tensor) -> torch.Tensor:
            if self.augment is not None:
                images = self.augment(images)
            return D(images) if labels is None else D(images, labels)

        return call

    def generate(self, G: nn.Module, z: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return G(z) if labels is None else G(z, labels)

    def _clip_critic(self) -> None:
        # WGAN's Lipschitz constraint: every critic parameter back into [-clip, clip].
        with torch.no_grad():
            for parameter in self.networks["D"].parameters():
                parameter.clamp_(-self.loss.clip, self.loss.clip)

    # the loop's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, D = self.train_networks["G"], self.train_networks["D"]
        n_critic = self.loss.n_critic
        reals = batch["image"].chunk(n_critic)
        if self.num_classes:
            if "label" not in batch:
                raise GanrunError("conditional=true needs labelled batches, but this dataset yields none; drop conditional=true")
            labels_per_chunk: Sequence[Optional[torch.Tensor]] = batch["label"].chunk(n_critic)
        else:
            labels_per_chunk = [None] * n_critic
        d_totals: dict[str, torch.Tensor] = {}
        for index, (real, labels) in enumerate(zip(reals, labels_per_chunk)):
            z = torch.randn(real.shape[0], self.z_dim, device=real.device)
            last = index == n_critic - 1
            # Only the last D step's fakes carry a graph: they also train G (as in pytorch/examples/dcgan).
            with stepper.autocast(), torch.set_grad_enabled(last):
                fake = self.generate(G, z, labels)
            with stepper.autocast():
                d_terms = self.loss.d_loss(self.critic(D, labels), real, fake.detach(), step=stepper.step_index)
            stepper.step("D", d_terms)
            if self.loss.clip is not None:
                self._clip_critic()
            for name, value in d_terms.items():
                d_totals[name] = d_totals.get(name, 0) + value.detach() / n_critic
        g_terms, rejected = generator_adversarial(self.loss, self.critic(D, labels), fake, D=D, stepper=stepper)
        stepper.step("G", g_terms)
        # For the saturation alarm: how many fakes the just-updated D calls fake.
        stats = {} if rejected is None else {"stat/D_acc_fake": rejected}
        return {
            **{f"D/{name}": value for name, value in d_totals.items()},
            **{f"G/{name}": value.detach() for name, value in g_terms.items()},
            **stats,
        }

    def grid_inputs(
        self, n: int, *, generator: torch.Generator, labels: Optional[Sequence[int]] = None
    ) -> dict[str, torch.Tensor]:
        """Unconditional: n latents. Conditional: one row per class (`labels`, default every
        class in turn), one fixed latent per column, so a column shows one z across classes."""
        if not self.num_classes:
            return {"z": torch.randn(n, self.z_dim, generator=generator)}
        if labels is None:
            columns = max(1, int(math.sqrt(n)))
            row_labels = [row % self.num_classes for row in range(math.ceil(n / columns))]
        else:
            bad = [label for label in labels if not 0 <= label < self.num_classes]
            if bad or not labels:
                raise GanrunError(
                    f"labels={list(labels)}: each must be a class in [0, {self.num_classes}), e.g. labels=[0,1,2]"
                )
            row_labels, columns = list(labels), max(1, n // len(labels))
        z_columns = torch.randn(columns, self.z_dim, generator=generator)
        index = torch.arange(len(row_labels) * columns)
        inputs = {"z": z_columns[index % columns], "label": torch.tensor(row_labels)[index // columns]}
        return {key: value[:n] for key, value in inputs.items()} if labels is None else inputs

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.generate(G, inputs["z"], inputs.get("label"))
