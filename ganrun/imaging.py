"""Tensor image operations shared by data, models and tasks: uint8 <-> [-1, 1] floats, bicubic
resizing (the super-resolution degradation and baseline) and tiled inference for images of any
size. Pure functions on tensors, nothing read from disk.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ganrun.errors import GanrunError

SCALES = (2, 3, 4)

# helpers


def check_scale(scale: int, key: str = "dataset.scale") -> int:
    if scale not in SCALES:
        raise GanrunError(f"{key} must be 2, 3 or 4, got {scale}")
    return scale


def bicubic_downscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """uint8 (..., C, H, W) -> uint8 (..., C, H // scale, W // scale): antialiased bicubic,
    rounded to uint8 as a saved LR image is. H and W must be multiples of `scale`."""
    height, width = images.shape[-2:]
    resized = TF.resize(images.float(), [height // scale, width // scale], interpolation=InterpolationMode.BICUBIC,
                        antialias=True)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def bicubic_upscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Float (N, C, h, w) -> (N, C, h * scale, w * scale): the bicubic baseline and the models'
    global skip (same call, so 'SR equals bicubic' means exactly that)."""
    return F.interpolate(images, scale_factor=scale, mode="bicubic", align_corners=False)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> uint8, quantized as a saved PNG is."""
    return images.float().add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)


def mod_crop(image: torch.Tensor, scale: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    return image[..., : height - height % scale, : width - width % scale]



def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """(N, C, H, W) padded at the bottom/right to multiples of `multiple` (fully convolutional
    networks with stride-2 stages need them): reflected where the image is larger than the
    padding (no hard edge for the network to see), else replicated (reflection cannot pad more
    than the image holds). Crop the output back with [..., :H, :W]."""
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)


def check_tiles(tile: Optional[int], overlap: Optional[int], *, default_tile: int, default_overlap: int) -> tuple[int, int]:
    """(tile, overlap) for `tiled` from the `tile=`/`tile_overlap=` settings, None meaning the
    task's default. Raises GanrunError for negative values."""
    tile = default_tile if tile is None else tile
    overlap = default_overlap if overlap is None else overlap
    if tile < 0 or overlap < 0:
        raise GanrunError(f"tile and tile_overlap must be >= 0 (or null for the default), got {tile} and {overlap}")
    return tile, overlap


def tiled(upscale: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor, *, scale: int, tile: int,
          overlap: int) -> torch.Tensor:
    """`upscale` applied to (N, C, H, W) tile by tile: each tile of `tile` LR pixels is run with
    `overlap` extra pixels of context on every side, and only its centre is kept, so memory is
    bounded by the tile size and the result equals whole-image inference when `overlap` covers
    the network's receptive field. tile <= 0: the whole image at once."""
    height, width = lr.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return upscale(lr)
    output = None
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            ya, xa = max(y0 - overlap, 0), max(x0 - overlap, 0)
            yb, xb = min(y1 + overlap, height), min(x1 + overlap, width)
            piece = upscale(lr[..., ya:yb, xa:xb])
            if output is None:
                output = piece.new_empty(*lr.shape[:-3], piece.shape[-3], height * scale, width * scale)
            top, left = (y0 - ya) * scale, (x0 - xa) * scale
            output[..., y0 * scale : y1 * scale, x0 * scale : x1 * scale] = piece[
                ..., top : top + (y1 - y0) * scale, left : left + (x1 - x0) * scale
            ]
    return output
