"""Super-resolution on the one loop: SRResNet (content loss only) and SRGAN (content loss plus
an adversarial term, Ledig et al. 2017).

G's objective: pixel_weight * pixel loss (L1 or MSE on [-1, 1] pixels)
             + perceptual_weight * MSE of VGG19 features (optional; ImageNet weights from the
               local torch hub cache only: never random VGG weights)
             + adversarial_weight * the loss object's G term (any ganrun.losses objective; 1e-3
               is SRGAN's weight), when the model has a discriminator D.
D (when present) takes n_critic steps per G step with the loss object's D terms, on HR crops
against G's outputs. Batches come from dataset=paired_sr: {"image": HR crops, "lr": LR crops}.
Grids: per validation crop, LR (nearest-upscaled) | bicubic | SR | HR in one row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ganrun.errors import GanrunError
from ganrun.imaging import bicubic_downscale, bicubic_upscale, check_scale, to_float, to_uint8
from ganrun.losses import NonSaturatingLoss
from ganrun.recipes.base import Recipe, Stepper, frozen
from ganrun.recipes.reconstruction import evaluating

# helpers

PIXEL_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
# torchvision's vgg19().features: the index just past each named layer.
VGG19_LAYERS = {"relu2_2": 9, "relu3_4": 18, "relu4_4": 27, "conv5_4": 35, "relu5_4": 36}
VGG19_WEIGHTS_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's VGG19_Weights.IMAGENET1K_V1
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VGGFeatures(nn.Module):
    """Frozen VGG19 features up to `layer`, from torchvision's ImageNet weights in the local
    torch hub cache; a clear error when they are not there (no download, no random weights)."""

    def __init__(self, *, layer: str):
        super().__init__()
        from torchvision.models import vgg19

        if layer not in VGG19_LAYERS:
            raise GanrunError(f"model.perceptual_layer must be one of {list(VGG19_LAYERS)}, got {layer!r}")
        path = Path(torch.hub.get_dir()) / "checkpoints" / VGG19_WEIGHTS_FILE
        if not path.is_file():
            raise GanrunError(
                f"model.perceptual_weight > 0 needs torchvision's ImageNet VGG19 weights, not found at {path}; "
                f"put {VGG19_WEIGHTS_FILE} there (or point TORCH_HOME at a cache that has it), "
                "or set model.perceptual_weight=0"
            )
        network = vgg19()
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.features = network.features[: VGG19_LAYERS[layer]].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.expand(-1, 3, -1, -1)  # grayscale: the same luminance on every channel
        return self.features(((images + 1) / 2 - self.mean) / self.std)


# classes


class SRRecipe(Recipe):
    task = "super_resolution"
    # Grids are built from fixed HR crops of the data (ImageData.first_images), like reconstructions.
    grid_shows_reconstructions = True

    def __init__(
        self,
        *,
        G: nn.Module,
        scale: int,
        loss: Any,
        optim: dict[str, Any],
        D: Optional[nn.Module] = None,
        pixel_loss: str = "l1",
        pixel_weight: float = 1.0,
        adversarial_weight: float = 1e-3,
        perceptual_weight: float = 0.0,
        perceptual_layer: str = "relu5_4",
        num_classes: int = 0,
    ):
        super().__init__()
        self.scale = check_scale(scale, "model.scale")
        if pixel_loss not in PIXEL_LOSSES:
            raise GanrunError(f"model.pixel_loss must be l1 or mse, got {pixel_loss!r}")
        for key, value in (("pixel_weight", pixel_weight), ("adversarial_weight", adversarial_weight),
                           ("perceptual_weight", perceptual_weight)):
            if value < 0:
                raise GanrunError(f"model.{key} must be >= 0, got {value}")
        if D is None and (type(loss) is not NonSaturatingLoss or loss.n_critic != 1):
            raise GanrunError(
                f"this SR model has no discriminator, so loss={type(loss).__name__} would be ignored; "
                "use model=srgan for adversarial training, or drop the loss=... / trainer.n_critic overrides"
            )
        self.loss = loss
        self.pixel_loss, self.pixel_weight = PIXEL_LOSSES[pixel_loss], pixel_weight
        self.adversarial_weight, self.perceptual_weight = adversarial_weight, perceptual_weight
        self.vgg = VGGFeatures(layer=perceptual_layer) if perceptual_weight > 0 else None
        self.networks = {"G": G} if D is None else {"G": G, "D": D}
        self.train_networks = dict(self.networks)
        self.bind_optimizers(optim)

    @property
    def batches_per_step(self) -> int:
        return self.loss.n_critic if "D" in self.networks else 1

    def to(self, device: torch.device, *, channels_last: bool) -> None:
        super().to(device, channels_last=channels_last)
        if self.vgg is not None:
            self.vgg.to(device)

    # the loop's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        G = self.train_networks["G"]
        D = self.train_networks.get("D")
        steps = self.batches_per_step
        lr_chunks, hr_chunks = batch["lr"].chunk(steps), batch["image"].chunk(steps)
        terms: dict[str, torch.Tensor] = {}
        if D is not None:
            for lr, hr in zip(lr_chunks[:-1], hr_chunks[:-1]):  # extra critic steps (n_critic > 1)
                with torch.no_grad(), stepper.autocast():
                    fake = G(lr)
                self._step_D(D, hr, fake, stepper, terms, share=1 / steps)
        lr, hr = lr_chunks[-1], hr_chunks[-1]
        with stepper.autocast():
            sr = G(lr)
        # Content terms in fp32: sums of small squared differences lose bits in bf16.
        g_terms = {"pixel": self.pixel_weight * self.pixel_loss(sr.float(), hr.float())}
        if self.vgg is not None:
            with stepper.autocast():
                sr_features, hr_features = self.vgg(sr), self.vgg(hr)
            g_terms["perceptual"] = self.perceptual_weight * F.mse_loss(sr_features.float(), hr_features.float())
        if D is not None:
            with frozen(D), stepper.autocast():
                adversarial = self.loss.g_loss(D, sr, step=stepper.step_index)
            g_terms.update({"adv" if name == "adv" else f"adv_{name}": self.adversarial_weight * value
                            for name, value in adversarial.items()})
        stepper.step("G", g_terms)
        if D is not None:
            self._step_D(D, hr, sr.detach(), stepper, terms, share=1 / steps)
        terms.update({f"G/{name}": value.detach() for name, value in g_terms.items()})
        return terms

    def _step_D(self, D: nn.Module, hr: torch.Tensor, fake: torch.Tensor, stepper: Stepper,
                totals: dict[str, torch.Tensor], *, share: float) -> None:
        with stepper.autocast():
            d_terms = self.loss.d_loss(D, hr, fake, step=stepper.step_index)
        stepper.step("D", d_terms)
        if self.loss.clip is not None:  # WGAN's weight clipping
            with torch.no_grad():
                for parameter in self.networks["D"].parameters():
                    parameter.clamp_(-self.loss.clip, self.loss.clip)
        for name, value in d_terms.items():
            totals[f"D/{name}"] = totals.get(f"D/{name}", 0) + value.detach() * share

    @torch.no_grad()
    def super_resolve(self, G: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """HR images in [-1, 1] from LR images in [-1, 1] (G in eval mode)."""
        with evaluating(G):
            return G(lr).float().clamp(-1, 1)

    def grid_inputs(
        self, n: int, *, generator: torch.Generator, real: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        """One row of four per fixed HR crop in `real`; the LR crops are their bicubic downscaling."""
        if real is None:
            raise GanrunError("super-resolution grids need real images (HR crops of the dataset)")
        hr = real[: max(1, n // 4)]
        return {"real": hr, "lr": to_float(bicubic_downscale(to_uint8(hr), self.scale))}

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        lr, hr = inputs["lr"], inputs["real"]
        columns = [
            F.interpolate(lr, scale_factor=self.scale, mode="nearest"),
            bicubic_upscale(lr, self.scale).clamp(-1, 1),
            self.super_resolve(G, lr),
            hr,
        ]
        return torch.stack([column.float() for column in columns], dim=1).flatten(0, 1)

    def save_grid(self, outputs: torch.Tensor, path: Path, *, nrow: int) -> None:
        super().save_grid(outputs, path, nrow=4)  # LR | bicubic | SR | HR
