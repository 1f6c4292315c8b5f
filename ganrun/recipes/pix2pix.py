"""Paired image-to-image translation: pix2pix (Isola et al. 2017, "Image-to-Image Translation with
Conditional Adversarial Networks"; junyanz/pytorch-CycleGAN-and-pix2pix models/pix2pix_model.py),
and what every translation recipe shares (`TranslationRecipe`: the task, sizes, directions,
`translate`, grids).

pix2pix's objective (eq. 4): G* = arg min_G max_D L_cGAN(G, D) + lambda_L1 * L1(G(A), B), with
a conditional D that judges the pair cat(A, B) (eq. 1) and lambda_L1 = 100 (sec. 4.2). The GAN
term is any ganrun loss (`loss=`; the paper's is the vanilla cross-entropy, loss=bce, which is
the reference's GANLoss("vanilla"): BCE(D(A, G(A)), 1) for G). Batches come from dataset=paired:
{"A": inputs, "B": aligned targets}, float (N, C, S, S) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError
from ganrun.recipes.base import Recipe, Stepper, add_terms, clip_weights, generator_adversarial
from ganrun.recipes.reconstruction import evaluating

# helpers


def check_weight(key: str, value: float) -> None:
    if value < 0:
        raise GanrunError(f"model.{key} must be >= 0, got {value}")


# classes


class TranslationRecipe(Recipe):
    """What pix2pix and CycleGAN share: the translation task's contract.

    Subclasses set `directions` (the ones `translate` accepts), `grid_columns` (images per grid
    row), `size_multiple` / `min_size` (from the generator) and implement `generate`.
    """

    task = "translation"
    # Grids show fixed data examples (ImageData.grid_examples: {"A", "B"}) and their translations.
    grid_shows_reconstructions = True
    directions: tuple[str, ...] = ("AtoB",)
    grid_columns = 3
    # The spatial multiple (and the smallest size) the generator accepts; the translation task
    # reflect-pads inputs to it and crops the outputs back.
    size_multiple = 1
    min_size = 1

    def generate(self, G: nn.Module, images: torch.Tensor, direction: str) -> torch.Tensor:
        """G's raw output for `images` in `direction` (no mode, grad or size handling)."""
        raise NotImplementedError

    def check_size(self, images: torch.Tensor) -> None:
        """A one-line GanrunError unless images are (N, C, H, W) with H, W multiples of size_multiple."""
        height, width = images.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple or min(height, width) < self.min_size:
            raise GanrunError(
                f"image size {height}x{width} does not fit this generator: it needs multiples of {self.size_multiple} "
                f"of at least {self.min_size} px; pad or crop to that (ganrun sample reflect-pads and crops back)"
            )

    @torch.no_grad()
    def translate(self, G: nn.Module, images: torch.Tensor, *, direction: str = "AtoB") -> torch.Tensor:
        """Translated images, float (N, C', H, W) in [-1, 1], from float (N, C, H, W) in [-1, 1];
        G in eval mode (no dropout, BatchNorm's running statistics), no gradients. H, W: any
        multiples of `size_multiple` (>= min_size). `direction` must be one of `directions`.

        The pix2pix paper runs its generator at test time in training mode (dropout on, the test
        batch's statistics); eval mode is deterministic and independent of the batch.
        """
        if direction not in self.directions:
            raise GanrunError(self.direction_error(direction))
        self.check_size(images)
        with evaluating(G):
            return self.generate(G, images, direction).float().clamp(-1, 1)

    def direction_error(self, direction: str) -> str:
        return f"direction={direction!r}: this model translates {' or '.join(self.directions)}"

    def grid_inputs(
        self,
        n: int,
        *,
        generator: torch.Generator,
        A: Optional[torch.Tensor] = None,
        B: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        """The fixed grid examples, one grid row per example, about n images in all: {"A", "B"},
        float (rows, C, S, S) in [-1, 1] (copies, so the checkpoint's "grid" holds only these)."""
        if A is None or B is None:
            raise GanrunError("translation grids need data examples (A and B images of the dataset's grid_examples)")
        rows = min(len(A), len(B), max(1, n // self.grid_columns))
        return {"A": A[:rows].float().clone(), "B": B[:rows].float().clone()}

    def save_grid(self, outputs: torch.Tensor, path: Path, *, nrow: int) -> None:
        super().save_grid(outputs, path, nrow=self.grid_columns)  # one example per row


class Pix2PixRecipe(TranslationRecipe):
    """pix2pix: a U-Net G(A) ~ B against a conditional PatchGAN D(cat(A, B)).

    Per step (the reference's optimize_parameters order): fake = G(A); one D step on the loss
    object's D terms for real cat(A, B) vs fake cat(A, G(A)); then one G step, D frozen, on
    G/adv (the loss object's G term) + G/l1 = lambda_L1 * mean |G(A) - B|.
    D's loss is what the loss object gives. The reference halves it (loss_D = 0.5 * (real +
    fake), "slows down the rate at which D learns relative to G"); a constant factor on one
    optimizer's whole loss leaves Adam's steps unchanged (up to eps), so it is not copied.
    D is wrapped as a one-argument critic x -> D(cat(A, x)), so every ganrun loss and
    regularizer works unchanged: wgan_gp's penalty interpolates B and G(A) under the same A,
    R1 takes gradients with respect to B. n_critic > 1 (loss=wgan/wgan_gp) takes that many D
    steps per G step on consecutive chunks of the batch, as the GAN recipe does.

    Logged: G/adv, G/l1, D/real, D/fake (+ D/gp, D/r1 when on), stat/D_acc_fake (the share of
    fake patches the updated D calls fake, for the saturation alarm).
    """

    # Aligned pairs only: the L1 term compares G(A) with A's own target (the task refuses unpaired data).
    data_kinds = ("paired",)

    directions = ("AtoB",)
    grid_columns = 3  # input | output | target

    def __init__(self, *, G: nn.Module, D: nn.Module, loss: Any, optim: dict[str, Any], lambda_L1: float = 100.0):
        super().__init__()
        check_weight("lambda_L1", lambda_L1)
        condition = getattr(D, "condition_channels", None)
        if condition is not None and condition != getattr(G, "in_channels", condition):
            raise GanrunError(
                f"pix2pix's D judges cat(A, B): model.D.condition_channels must be A's channels "
                f"({G.in_channels}), got {condition}"
            )
        self.loss = loss
        self.lambda_L1 = lambda_L1
        self.size_multiple, self.min_size = G.size_multiple, G.min_size
        self.networks = {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        self.bind_optimizers(optim)

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic

    def direction_error(self, direction: str) -> str:
        return (f"direction={direction!r}: a pix2pix model translates only AtoB (its inputs to its targets); "
                "for the other way train another model with the roles swapped (e.g. dataset.direction=BtoA)")

    def generate(self, G: nn.Module, images: torch.Tensor, direction: str) -> torch.Tensor:
        return G(images)

    @staticmethod
    def critic(D: nn.Module, A: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """The conditional D as the loss objects' one-argument critic: images B -> D(cat(A, B))."""
        return lambda images: D(torch.cat([A.to(images.dtype), images], dim=1))

    # the loop's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, D = self.train_networks["G"], self.train_networks["D"]
        steps = self.batches_per_step
        inputs, targets = batch["A"].chunk(steps), batch["B"].chunk(steps)
        terms: dict[str, torch.Tensor] = {}
        for A, B in zip(inputs[:-1], targets[:-1]):  # extra critic steps (n_critic > 1)
            with torch.no_grad(), stepper.autocast():
                fake = G(A)
            self._step_D(D, A, B, fake, stepper, terms, share=1 / steps)
        A, B = inputs[-1], targets[-1]
        with stepper.autocast():
            fake = G(A)
        self._step_D(D, A, B, fake.detach(), stepper, terms, share=1 / steps)
        adversarial, rejected = generator_adversarial(self.loss, self.critic(D, A), fake, D=D, stepper=stepper)
        g_terms = {"adv" if name == "adv" else f"adv_{name}": value for name, value in adversarial.items()}
        # In fp32: a mean of small absolute differences loses bits in bf16.
        g_terms["l1"] = self.lambda_L1 * F.l1_loss(fake.float(), B.float())
        stepper.step("G", g_terms)
        add_terms(terms, "G", g_terms, share=1.0)
        if rejected is not None:
            terms["stat/D_acc_fake"] = rejected
        return terms

    def _step_D(self, D: nn.Module, A: torch.Tensor, B: torch.Tensor, fake: torch.Tensor, stepper: Stepper,
                totals: dict[str, torch.Tensor], *, share: float) -> None:
        with stepper.autocast():
            d_terms = self.loss.d_loss(self.critic(D, A), B, fake, step=stepper.step_index)
        stepper.step("D", d_terms)
        clip_weights(self.networks["D"], self.loss.clip)
        add_terms(totals, "D", d_terms, share=share)

    # grids

    @torch.no_grad()
    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of input A | G(A) | target B, flattened: (rows * 3, C, S, S) in [-1, 1]."""
        A, B = inputs["A"], inputs["B"]
        columns = [A.float(), self.translate(G, A), B.float()]
        return torch.stack(columns, dim=1).flatten(0, 1)
