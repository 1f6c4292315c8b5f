"""`ganrun sample`: grids, single images and latent walks from a checkpoint alone."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path, run_dir_of
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
    try:
        # Every network, not only G: recipes with an encoder render reconstructions G(E(x)).
        for name, network in recipe.networks.items():
            network.load_state_dict(checkpoint["recipe"]["networks"][name])
        if use_ema:
            generator.load_state_dict(checkpoint["G_ema"])
    except (RuntimeError, KeyError) as error:
        raise GanrunError(f"{path}: the network weights do not fit its own config ({str(error).splitlines()[0]})") from None
    for network in recipe.networks.values():
        network.to(device).eval().requires_grad_(False)
    from ganrun.data.toy import scatter_reference_for  # toy imports data, which imports nothing of ours here

    # Scatter plots of 2-D outputs draw the data's mode rings, rebuilt from the config alone.
    recipe.scatter_reference = scatter_reference_for(checkpoint["config"]["dataset"])
    return recipe, generator, config


def _real_images_for(checkpoint_path: Path, config: DictConfig, count: int) -> torch.Tensor:
    """Originals for a reconstruction grid: the checkpoint's training data when it can be loaded
    here (never downloaded), else the originals its training grids used."""
    from ganrun.evaluation import load_reference_data  # evaluation imports this module

    dataset = OmegaConf.to_container(config.dataset, resolve=True)
    if "download" in dataset:
        dataset["download"] = False
    try:
        return load_reference_data(dataset, split=dataset.get("split", "train"), root=None).first_images(count)
    except GanrunError as error:
        stored = load_checkpoint(checkpoint_path)["grid"].get("real")
        if stored is None:
            raise GanrunError(
                f"{checkpoint_path}: no real images to reconstruct ({error}); make the training data "
                "readable where it was trained from"
            ) from None
        print(f"training data not readable ({error}); reconstructing the {len(stored)} originals stored in the checkpoint")
        return stored


def _super_resolve_folder(recipe: Recipe, G: torch.nn.Module, cfg: DictConfig, config: DictConfig,
                          device: torch.device) -> list[Path]:
    from ganrun.data.paired_sr import super_resolve_folder

    if not hasattr(recipe, "super_resolve"):
        raise GanrunError(f"input_dir=/out_dir= need a super-resolution checkpoint; {cfg.ckpt} is {config.model._target_}")
    if cfg.input_dir is None or cfg.out_dir is None:
        raise GanrunError("super-resolving a folder needs both: ganrun sample ckpt=... input_dir=LR_FOLDER out_dir=SR_FOLDER")
    if cfg.tile < 0 or cfg.tile_overlap < 0:
        raise GanrunError(f"tile and tile_overlap must be >= 0, got {cfg.tile} and {cfg.tile_overlap}")
    return super_resolve_folder(recipe, G, input_dir=cfg.input_dir, out_dir=cfg.out_dir, channels=config.dataset.channels,
                                device=device, tile=cfg.tile, overlap=cfg.tile_overlap)


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
    recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    if cfg.input_dir is not None or cfg.out_dir is not None:  # image-to-image: every file of a folder
        return _super_resolve_folder(recipe, G, cfg, config, device)
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
        if recipe.grid_shows_reconstructions:
            inputs = recipe.grid_inputs(cfg.n, generator=generator, real=_real_images_for(path, config, cfg.n))
        else:
            inputs = recipe.grid_inputs(cfg.n, generator=generator, **by_label)
        # With labels, each row is one class: n // len(labels) samples per row.
        nrow = cfg.nrow or (max(1, cfg.n // len(labels)) if labels else max(1, int(math.sqrt(cfg.n))))
        default_name = f"sample_n{cfg.n}_seed{cfg.seed}_{which}.png"

    outputs = torch.cat(
        [
            recipe.render(G, {key: value[i : i + 256].to(device) for key, value in inputs.items()}).float().cpu()
            for i in range(0, max(len(value) for value in inputs.values()), 256)
        ]
    )
    images = outputs.add(1).div(2).clamp(0, 1)

    if cfg.save_individual:
        folder = Path(cfg.out) if cfg.out else _default_out(path, f"individual_seed{cfg.seed}_{which}")
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for index, image in enumerate(images):
            target = folder / f"{index:06d}.png"
            save_image(image, target)
            written.append(target)
        print(f"wrote {len(written)} images to {folder}")
        return written
    out = Path(cfg.out) if cfg.out else _default_out(path, default_name)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise GanrunError(f"out={cfg.out!r} must end in .png or .jpg (or pass save_individual=true for a folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    recipe.save_grid(outputs, out, nrow=nrow)  # the recipe's layout: pairs of reconstructions, scatter plots
    print(f"wrote {out} ({len(images)} images, step {int(load_step(path))})")
    return [out]


def load_step(path: Path) -> int:
    return load_checkpoint(path)["progress"]["step"]
