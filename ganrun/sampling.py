"""`ganrun sample`: grids, single images and latent walks from a checkpoint alone."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ganrun.checkpoint import load_checkpoint, resolve_checkpoint_path, run_dir_of
from ganrun.config import build, choice
from ganrun.errors import GanrunError
from ganrun.hardware import choose_device
from ganrun.recipes.base import Recipe

# helpers


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latent rows `a` and `b` (N, D) at fractions `t` (T,) -> (N, T, D).

    Gaussian latents concentrate near a sphere; walking along it keeps every point typical,
    where a straight line would pass through unlikely, low-norm latents (White 2016)."""
    a_unit, b_unit = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    omega = torch.acos((a_unit * b_unit).sum(dim=1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]
    t = t[None, :, None]
    sin_omega = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin_omega) * a[:, None] + (torch.sin(t * omega) / sin_omega) * b[:, None]


def rebuild_from_checkpoint(path: Path, *, device: torch.device, use_ema: bool = True) -> tuple[Recipe, torch.nn.Module, DictConfig]:
    """The recipe and its generator, from nothing but the checkpoint file."""
    checkpoint = load_checkpoint(path)
    config = OmegaConf.create(checkpoint["config"])
    recipe: Recipe = build(config.model, loss=build(config.loss), optim=build(config.optim))
    generator = recipe.generator
    state = checkpoint["G_ema"] if use_ema else checkpoint["recipe"]["networks"][recipe.generator_name]
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        raise GanrunError(f"{path}: the generator weights do not fit its own config ({str(error).splitlines()[0]})") from None
    generator.to(device).eval().requires_grad_(False)
    return recipe, generator, config


def _default_out(checkpoint_path: Path, name: str) -> Path:
    return run_dir_of(checkpoint_path) / "samples" / name


# the command


@torch.no_grad()
def sample(cfg: DictConfig) -> list[Path]:
    if cfg.n < 1:
        raise GanrunError(f"n must be >= 1, got {cfg.n}")
    if cfg.interpolation_steps < 2:
        raise GanrunError(f"interpolation_steps must be >= 2, got {cfg.interpolation_steps}")
    path = resolve_checkpoint_path(cfg.ckpt)
    device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available())
    recipe, G, _ = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    generator = torch.Generator().manual_seed(cfg.seed)
    which = "ema" if cfg.ema else "raw"
    labels = list(cfg.labels) if cfg.labels is not None else None
    if labels is not None and not recipe.num_classes:
        raise GanrunError(f"labels={labels} needs a conditional checkpoint; {path} was trained without classes (drop labels=)")
    # Conditional recipes draw one row per listed class; the others take no labels.
    by_label = {"labels": labels} if labels is not None else {}

    if cfg.interpolate:
        steps = cfg.interpolation_steps
        rows = max(1, cfg.n // steps)
        start = recipe.grid_inputs(rows, generator=generator, **by_label)
        end = recipe.grid_inputs(rows, generator=generator, **by_label)
        walk = slerp(start["z"], end["z"], torch.linspace(0, 1, steps)).reshape(rows * steps, -1)
        # Other inputs (class labels, for conditional recipes) stay those of the walk's start.
        inputs = {key: value.repeat_interleave(steps, dim=0) for key, value in start.items() if key != "z"}
        inputs["z"] = walk
        nrow = steps
        default_name = f"interpolate_seed{cfg.seed}_{which}.png"
    else:
        inputs = recipe.grid_inputs(cfg.n, generator=generator, **by_label)
        # With labels, each row is one class: n // len(labels) samples per row.
        nrow = cfg.nrow or (max(1, cfg.n // len(labels)) if labels else max(1, int(math.sqrt(cfg.n))))
        default_name = f"sample_n{cfg.n}_seed{cfg.seed}_{which}.png"

    images = torch.cat(
        [
            recipe.render(G, {key: value[i : i + 256].to(device) for key, value in inputs.items()}).float().cpu()
            for i in range(0, len(inputs["z"]), 256)
        ]
    )

    if cfg.save_individual:
        folder = Path(cfg.out) if cfg.out else _default_out(path, f"individual_seed{cfg.seed}_{which}")
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for index, image in enumerate(images):
            target = folder / f"{index:06d}.png"
            save_image(image.add(1).div(2).clamp(0, 1), target)
            written.append(target)
        print(f"wrote {len(written)} images to {folder}")
        return written
    out = Path(cfg.out) if cfg.out else _default_out(path, default_name)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise GanrunError(f"out={cfg.out!r} must end in .png or .jpg (or pass save_individual=true for a folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe.save_grid(images, out, nrow=nrow)
    print(f"wrote {out} ({len(images)} images, step {int(load_step(path))})")
    return [out]


def load_step(path: Path) -> int:
    return load_checkpoint(path)["progress"]["step"]
