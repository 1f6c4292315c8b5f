"""Inpainting on the one loop: DeepFill v2 (Yu et al., ICCV 2019, "Free-Form Image Inpainting with
Gated Convolution") with one gated-convolution stage, trained as mmagic's DeepFill v2 config
(configs/deepfillv2/deepfillv2_8xb2_celeba-256x256.py on configs/_base_/models/base_deepfillv2.py).

Batches: {"image": float (N, C, S, S) in [-1, 1], "mask": float (N, 1, S, S), exactly 0.0 or 1.0,
1 = hole}. Per step, as mmagic's inpaintors' train_step (D first, then G on the same forward):
    x_masked = x * (1 - m);  out = G(cat(x_masked, m));  x_hat = m * out + (1 - m) * x
    D: the loss object's D terms of D(cat(x, m)) (real) against D(cat(x_hat.detach(), m)) (fake)
    G: hole_weight * L1_hole + valid_weight * L1_valid + adversarial_weight * the loss object's
       G term of D(cat(x_hat, m)), D frozen
with mmagic's weights 1.0 (loss_l1_hole), 1.0 (loss_l1_valid), 0.1 (loss_gan, hinge).

mmagic's two-stage model puts the L1 terms on stage 1 and L1 + GAN on stage 2; the one stage here
takes all three. The L1 terms follow mmagic exactly (mmagic/models/base_models/two_stage.py,
TwoStageInpaintor.calculate_loss_with_type; mmagic/models/losses/loss_wrapper.py mask_reduce_loss,
reduction "mean", sample_wise False):
    L1_hole  = sum(|out - x| * m)       / sum(m expanded to C channels)
    L1_valid = sum(|out - x| * (1 - m)) / sum((1 - m) expanded to C channels)
i.e. a mean over the hole's (valid region's) pixel values of the whole batch, each region
normalized by its own size (not a mean over all elements: a small hole weighs as much as a big
one). Both are on G's raw output `out` ("fake_res"): on the composite x_hat the valid term would
be 0 by construction. The adversarial term sees the composite ("fake_img"), as D does.

Any `loss=` works: D is wrapped as a one-argument critic images -> D(cat(images, m)) under the
batch's own mask, so wgan_gp's penalty interpolates x and x_hat under the same mask and R1 takes
gradients with respect to the image. The critic gives the loss D's whole patch-score map (every
element a score, averaged by the loss objects, as the reference's hinge loss on the flattened
map), except for the Wasserstein losses (wgan, wgan_gp): their terms are linear in the scores,
so the critic hands them each image's mean score (N,), which leaves their D and G terms as they
are and makes the gradient penalty constrain that per-image mean (the function whose expectations
the Wasserstein objective compares) instead of the sum of all patch scores, whose gradient norm
grows with the map's size. R1 (loss.r1_gamma) takes the gradient of the summed patch scores, as
for every ganrun loss on a PatchGAN (pix2pix's too). n_critic > 1 takes that many D steps per G step on
consecutive chunks of the batch (as the GAN recipe); wgan's weight clipping applies after each.
Logged: G/l1_hole, G/l1_valid, G/adv (weighted, as summed), D/real, D/fake (+ D/gp, D/r1),
stat/D_acc_fake (the share of fake patch scores the updated D calls fake, for the saturation alarm).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from ganrun.errors import GanrunError
from ganrun.losses import WassersteinLoss
from ganrun.recipes.base import Recipe, Stepper, add_terms, clip_weights, generator_adversarial
from ganrun.recipes.reconstruction import evaluating

# helpers

GRID_COLUMNS = 4  # damaged | mask | output | original


def composite(out: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x_hat = m * out + (1 - m) * x, in fp32: the valid pixels (m = 0) are the input's, bit for
    bit (0 * out + 1 * x = x for finite out), the hole's are G's."""
    masks = masks.float()
    return masks * out.float() + (1 - masks) * images.float()


def masked_l1(out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mmagic's L1Loss with `weight` (reduction mean): sum(|out - target| * weight) / sum(weight
    expanded to the C channels), over the whole batch; fp32 (a sum of many small terms)."""
    weight = weight.float().expand_as(out)
    return ((out.float() - target.float()).abs() * weight).sum() / (weight.sum() + 1e-12)


def check_weight(key: str, value: float) -> None:
    if value < 0:
        raise GanrunError(f"model.{key} must be >= 0, got {value}")


def grid_masks(count: int, height: int, width: int, *, generator: torch.Generator) -> torch.Tensor:
    """`count` fixed masks for sample grids, float (count, 1, height, width) in {0, 1}, from
    `generator` alone: a box (sides 25-50 % of the image) plus a brush stroke of 3 segments
    (width ~ 1/10 of the image), so every grid row shows a large hole and a thin one. A simple
    stand-in for the dataset's masks, used when the data offers none (ImageData.grid_examples)."""
    ys = torch.arange(height, dtype=torch.float32).view(height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, width)
    masks = torch.zeros(count, 1, height, width)
    for index in range(count):
        u = torch.rand(8, generator=generator)
        box_h, box_w = int(height * (0.25 + 0.25 * u[0])), int(width * (0.25 + 0.25 * u[1]))
        top, left = int((height - box_h) * u[2]), int((width - box_w) * u[3])
        masks[index, 0, top:top + box_h, left:left + box_w] = 1
        radius = max(1.0, min(height, width) / 20)
        points = torch.rand(4, 2, generator=generator) * torch.tensor([height - 1, width - 1])
        for (y0, x0), (y1, x1) in zip(points[:-1].tolist(), points[1:].tolist()):
            # distance of every pixel to the segment (y0, x0)-(y1, x1)
            dy, dx = y1 - y0, x1 - x0
            t = (((ys - y0) * dy + (xs - x0) * dx) / max(dy * dy + dx * dx, 1e-6)).clamp(0, 1)
            distance = ((ys - y0 - t * dy) ** 2 + (xs - x0 - t * dx) ** 2).sqrt()
            masks[index, 0][distance <= radius] = 1
    return masks


# classes


class InpaintRecipe(Recipe):
    """DeepFill v2-style inpainting: a gated-conv G(cat(x_masked, m)) against an SN-PatchGAN
    D(cat(x_hat, m)) (module docstring: the step, the losses and their sources).

    G, D: the networks (ganrun.models.inpaint: GatedGenerator, SNPatchDiscriminator, or any with
    the same inputs). loss: a ganrun.losses object (hinge = DeepFill v2's). optim: the optimizer
    partials for "G" and "D". hole_weight, valid_weight, adversarial_weight: >= 0.
    """

    task = "inpainting"
    # Grids show fixed data examples (ImageData.grid_examples: "real", optionally "mask").
    grid_shows_reconstructions = True
    size_multiple = 4
    min_size = 4

    def __init__(
        self,
        *,
        G: nn.Module,
        D: nn.Module,
        loss: Any,
        optim: dict[str, Any],
        hole_weight: float = 1.0,
        valid_weight: float = 1.0,
        adversarial_weight: float = 0.1,
    ):
        super().__init__()
        for key, value in (("hole_weight", hole_weight), ("valid_weight", valid_weight),
                           ("adversarial_weight", adversarial_weight)):
            check_weight(key, value)
        self.loss = loss
        self.hole_weight, self.valid_weight, self.adversarial_weight = hole_weight, valid_weight, adversarial_weight
        self.size_multiple = getattr(G, "size_multiple", self.size_multiple)
        self.min_size = getattr(G, "min_size", self.min_size)
        self.networks = {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        self.bind_optimizers(optim)

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic

    def critic(self, D: nn.Module, masks: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """D as the loss objects' one-argument critic: images -> D(cat(images, m)), the patch-score
        map; for the Wasserstein losses each image's mean score (N,) (module docstring: why)."""
        per_image = isinstance(self.loss, WassersteinLoss)

        def scores(images: torch.Tensor) -> torch.Tensor:
            patches = D(torch.cat([images, masks.to(images.dtype)], dim=1))
            return patches.flatten(start_dim=1).mean(dim=1) if per_image else patches

        return scores

    # the loop's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G, D = self.train_networks["G"], self.train_networks["D"]
        steps = self.batches_per_step
        image_chunks, mask_chunks = batch["image"].chunk(steps), batch["mask"].chunk(steps)
        terms: dict[str, torch.Tensor] = {}
        for x, m in zip(image_chunks[:-1], mask_chunks[:-1]):  # extra critic steps (n_critic > 1)
            with torch.no_grad(), stepper.autocast():
                out = G(torch.cat([x * (1 - m), m], dim=1))
            self._step_D(D, x, composite(out, x, m), m, stepper, terms, share=1 / steps)
        x, m = image_chunks[-1], mask_chunks[-1]
        with stepper.autocast():
            out = G(torch.cat([x * (1 - m), m], dim=1))
        x_hat = composite(out, x, m)
        self._step_D(D, x, x_hat.detach(), m, stepper, terms, share=1 / steps)
        adversarial, rejected = generator_adversarial(self.loss, self.critic(D, m), x_hat, D=D, stepper=stepper)
        g_terms = {"adv" if name == "adv" else f"adv_{name}": self.adversarial_weight * value
                   for name, value in adversarial.items()}
        g_terms["l1_hole"] = self.hole_weight * masked_l1(out, x, m)
        g_terms["l1_valid"] = self.valid_weight * masked_l1(out, x, 1 - m)
        stepper.step("G", g_terms)
        add_terms(terms, "G", g_terms, share=1.0)
        if rejected is not None:
            terms["stat/D_acc_fake"] = rejected
        return terms

    def _step_D(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, masks: torch.Tensor, stepper: Stepper,
                totals: dict[str, torch.Tensor], *, share: float) -> None:
        with stepper.autocast():
            d_terms = self.loss.d_loss(self.critic(D, masks), real, fake, step=stepper.step_index)
        stepper.step("D", d_terms)
        clip_weights(self.networks["D"], self.loss.clip)
        add_terms(totals, "D", d_terms, share=share)

    @torch.no_grad()
    def inpaint(self, G: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Filled images, float (N, C, H, W) in [-1, 1]: G's output in the holes (masks == 1), the
        input's pixels elsewhere, bit for bit. images: float (N, C, H, W) in [-1, 1]; masks: float
        (N, 1, H, W) in {0, 1}; H, W multiples of `size_multiple` (ganrun sample pads to them).
        G runs in eval mode, without gradients. Raises GanrunError for mismatched shapes."""
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise GanrunError(
                f"masks must be (N, 1, H, W) matching the images {tuple(images.shape)}, got {tuple(masks.shape)}"
            )
        height, width = images.shape[-2:]
        if height % self.size_multiple or width % self.size_multiple or min(height, width) < self.min_size:
            raise GanrunError(
                f"image size {height}x{width} does not fit this generator: it needs multiples of {self.size_multiple} "
                f"of at least {self.min_size} px; pad or crop to that (ganrun sample pads and crops back)"
            )
        images, masks = images.float(), masks.float()
        with evaluating(G):
            out = G(torch.cat([images * (1 - masks), masks], dim=1))
        return composite(out.float().clamp(-1, 1), images, masks)

    # grids

    def grid_inputs(
        self,
        n: int,
        *,
        generator: torch.Generator,
        real: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        """The fixed grid examples, one grid row (4 images) per example, about n images in all:
        {"real": float (rows, C, S, S) in [-1, 1], "mask": float (rows, 1, S, S) in {0, 1}}
        (copies, so the checkpoint's "grid" holds only these). The masks are `mask`'s when the
        data gives them, else drawn from `generator` (`grid_masks`)."""
        if real is None:
            raise GanrunError("inpainting grids need real images (the dataset's first images)")
        rows = max(1, min(len(real), n // GRID_COLUMNS))
        real = real[:rows].float().clone()
        if mask is not None and len(mask) >= rows:
            masks = mask[:rows].float().clone()
        else:
            masks = grid_masks(rows, real.shape[-2], real.shape[-1], generator=generator)
        return {"real": real, "mask": masks}

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows of damaged (holes mid-gray) | mask (holes white on black) | output | original,
        flattened: (rows * 4, C, S, S) in [-1, 1]."""
        real, masks = inputs["real"].float(), inputs["mask"].float()
        columns = [
            real * (1 - masks),
            (masks * 2 - 1).expand_as(real),
            self.inpaint(G, real, masks),
            real,
        ]
        return torch.stack(columns, dim=1).flatten(0, 1)

    def save_grid(self, outputs: torch.Tensor, path: Path, *, nrow: int) -> None:
        super().save_grid(outputs, path, nrow=GRID_COLUMNS)  # damaged | mask | output | original
