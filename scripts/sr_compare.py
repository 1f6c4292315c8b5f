"""Super-resolution checkpoints side by side: fidelity (PSNR-Y), detail, and a figure of crops.

    python scripts/sr_compare.py --ckpt SRResNet=RUN_A --ckpt SRGAN=RUN_B \
        --hr ../shared/data/sr/Set5/HR --lr ../shared/data/sr/Set5/LR_bicubic/X4 --lr-name '{stem}x4' \
        --out docs/sr_set5_crops.png

PSNR-Y follows `ganrun eval` (uint8 outputs, crop_border = scale). "Detail" is the mean gradient
magnitude of the Y channel (finite differences, same border crop) as a percentage of the HR
image's: a pixel-loss SR network averages plausible textures into blur and reads well below
100 %, an adversarial one puts texture back (SRGAN's point) and reads closer to 100 %, or above
when it invents noise. It measures sharpness, not correctness: read it beside PSNR and the
crops. The figure has one row per image: bicubic | each checkpoint | HR, on the crop with the
most HR detail. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganrun.data.paired_sr import load_pairs  # noqa: E402
from ganrun.imaging import bicubic_upscale, tiled, to_float, to_uint8  # noqa: E402
from ganrun.loop.checkpoint import resolve_checkpoint_path  # noqa: E402
from ganrun.loop.rebuild import rebuild_from_checkpoint  # noqa: E402
from ganrun.metrics.image_quality import crop_border, measure, rgb_to_y  # noqa: E402


def gradient_energy(image: torch.Tensor) -> float:
    """Mean |grad| of the Y channel of a uint8 (C, H, W) image."""
    y = rgb_to_y(image.double())[0]
    dx, dy = y[:, 1:] - y[:, :-1], y[1:, :] - y[:-1, :]
    return float(torch.sqrt(dx[:-1, :] ** 2 + dy[:, :-1] ** 2).mean())


def most_detailed_window(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the `size` x `size` HR window with the largest mean |grad|."""
    y = rgb_to_y(hr.double())[0]
    magnitude = (y[:, 1:] - y[:, :-1]).abs()[:-1, :] + (y[1:, :] - y[:-1, :]).abs()[:, :-1]
    window_means = F.avg_pool2d(magnitude[None, None], size - 1, stride=max(1, size // 4))[0, 0]
    row, column = divmod(int(window_means.argmax()), window_means.shape[1])
    return row * max(1, size // 4), column * max(1, size // 4)


def labelled_grid(rows: list[list[torch.Tensor]], labels: list[str], path: Path) -> None:
    grid = make_grid([crop for row in rows for crop in row], nrow=len(labels), padding=4, pad_value=255)
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    canvas = Image.new("RGB", (image.width, image.height + 16), "white")
    canvas.paste(image, (0, 16))
    cell = image.width / len(labels)
    draw = ImageDraw.Draw(canvas)
    for index, label in enumerate(labels):
        draw.text((index * cell + 6, 2), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", action="append", required=True, help="LABEL=checkpoint or run dir (repeatable)")
    parser.add_argument("--hr", required=True)
    parser.add_argument("--lr", default=None, help="LR folder (default: bicubic downscaling of --hr)")
    parser.add_argument("--lr-name", default="{stem}")
    parser.add_argument("--crop", type=int, default=96, help="HR pixels per side of each figure crop")
    parser.add_argument("--zoom", type=int, default=2, help="nearest-neighbour enlargement of the figure crops")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None, help="the crops figure (PNG)")
    args = parser.parse_args()
    device = torch.device("cpu")

    models = []
    for entry in args.ckpt:
        label, _, path = entry.partition("=")
        if not path:
            parser.error(f"--ckpt {entry!r}: expected LABEL=PATH, e.g. --ckpt SRGAN=outputs/RUN")
        recipe, G, _ = rebuild_from_checkpoint(resolve_checkpoint_path(path), device=device)
        models.append((label, recipe, G))
    scale = models[0][1].scale
    pairs = load_pairs(hr_dir=args.hr, lr_dir=args.lr, lr_name=args.lr_name, scale=scale, channels=3)

    labels = ["bicubic", *[label for label, _, _ in models], "HR"]
    totals = {label: {"psnr_y": 0.0, "detail": 0.0} for label in labels}
    figure_rows = []
    print(f"{'image':<12}" + "".join(f"{label + ' PSNR-Y/detail':>28}" for label in labels))
    for pair in pairs:
        lr = to_float(pair.low_res(scale)).unsqueeze(0)
        outputs = {"bicubic": to_uint8(bicubic_upscale(lr, scale).clamp(-1, 1)[0])}
        for label, recipe, G in models:
            sr = tiled(lambda x, recipe=recipe, G=G: recipe.super_resolve(G, x), lr, scale=scale, tile=args.tile, overlap=32)
            outputs[label] = to_uint8(sr[0])
        outputs["HR"] = pair.hr
        reference_detail = gradient_energy(crop_border(pair.hr, scale))
        cells = []
        for label in labels:
            psnr_y = measure(outputs[label], pair.hr, border=scale)["psnr_y"] if label != "HR" else float("inf")
            detail = 100 * gradient_energy(crop_border(outputs[label], scale)) / reference_detail
            totals[label]["psnr_y"] += psnr_y / len(pairs)
            totals[label]["detail"] += detail / len(pairs)
            cells.append(f"{psnr_y:7.2f} dB {detail:6.1f} %")
        print(f"{pair.name[:12]:<12}" + "".join(f"{cell:>28}" for cell in cells))
        size = min(args.crop, *pair.hr.shape[-2:])
        top, left = most_detailed_window(pair.hr, size)
        crops = [outputs[label][:, top : top + size, left : left + size].expand(3, -1, -1) for label in labels]
        figure_rows.append([F.interpolate(crop[None], scale_factor=args.zoom, mode="nearest")[0] for crop in crops])
    print(f"{'mean':<12}" + "".join(f"{totals[label]['psnr_y']:7.2f} dB {totals[label]['detail']:6.1f} %".rjust(28)
                                      for label in labels))
    print(f"x{scale}, {len(pairs)} images from {args.hr}; PSNR-Y: uint8, BT.601 Y, crop_border={scale}; "
          "detail: mean |grad Y| as % of HR's (100 % = as much fine structure as the real photo)")
    if args.out is not None:
        labelled_grid(figure_rows, labels, args.out)
        print(f"crops ({args.crop} px HR, most detailed window per image, shown x{args.zoom}): {args.out}")


if __name__ == "__main__":
    main()
