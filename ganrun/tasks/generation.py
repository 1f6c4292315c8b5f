"""Generation: images (or toy 2-D points) from latents, unconditional or per class, and the
families with an encoder (BiGAN, VAE). `ganrun eval` measures FID/KID/IS/precision-recall of
G_ema's samples against the dataset's held-out split; `ganrun sample` draws grids, latent walks,
class rows, reconstructions or single images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ganrun.data.reference import load_reference_data
from ganrun.errors import GanrunError
from ganrun.files import cache_dir
from ganrun.hardware import choose_device
from ganrun.config import choice
from ganrun.loop.checkpoint import load_checkpoint, run_dir_of
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.metrics.fidelity import (
    HIGHER_IS_BETTER,
    RESIZE,
    FeatureExtractor,
    cautions,
    check_metric_names,
    compute_metrics,
    format_result,
    generated_batches,
    metric_keys,
    reference_features,
    timed,
)
from ganrun.tasks.base import Evaluator, Task, record_result

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


def _real_images_for(checkpoint_path: Path, config: DictConfig, count: int) -> torch.Tensor:
    """Originals for a reconstruction grid: the checkpoint's training data when it can be loaded
    here (never downloaded), else the originals its training grids used."""
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


def _default_out(checkpoint_path: Path, name: str) -> Path:
    return run_dir_of(checkpoint_path) / "samples" / name


def evaluate_checkpoint(path: Path, cfg: DictConfig, metrics: list[str], extractor: FeatureExtractor) -> dict:
    """FID & co. of one checkpoint's generator against its dataset's `cfg.split`, printed with the
    protocol and recorded (eval.json beside it, an eval/* row in the run's metrics.jsonl)."""
    checkpoint = load_checkpoint(path)
    step = int(checkpoint["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=extractor.device, use_ema=cfg.ema)
    dataset_cfg = OmegaConf.to_container(config.dataset, resolve=True)
    data = load_reference_data(dataset_cfg, split=cfg.split, root=cfg.data_root)
    real, cache_status = reference_features(
        extractor, data, dataset=dataset_cfg["name"], split=cfg.split, count=cfg.num_samples,
        batch_size=cfg.batch_size, cache_dir=cache_dir(),
    )
    fake, fake_seconds = timed(
        extractor,
        generated_batches(recipe, G, count=cfg.num_samples, batch_size=cfg.batch_size, seed=cfg.seed, device=extractor.device),
        total=cfg.num_samples, label=f"generated, step {step}",
    )
    values = compute_metrics(fake, real, metrics=metrics, kid_subset_size=cfg.kid_subset_size, seed=cfg.seed)
    protocol = {
        "generated": len(fake["2048"]),
        "reference": len(real["2048"]),
        "reference_data": f"{cfg.split} split requested; {data.source}",
        "reference_cache": cache_status,
        "generator": "G_ema" if cfg.ema else "G (raw)",
        "resolution": data.resolution,
        "preprocessing": RESIZE + ("; grayscale replicated to RGB" if data.channels == 1 else ""),
        "feature_extractor": extractor.description,
        "seed": cfg.seed,
    }
    notes = cautions(fake, real, metrics=metrics, kid_subset_size=cfg.kid_subset_size)
    if notes:
        protocol["cautions"] = notes
    result = {"checkpoint": str(path), "step": step, "metrics": values, "protocol": protocol,
              "seconds_generated_side": round(fake_seconds, 1)}
    print(f"{path} (step {step}): {format_result(values, protocol)}\n  time for the generated side: {fake_seconds:.1f} s")
    for note in notes:
        print(f"  caution: {note}")
    record_result(path, result, values=values)
    return result


# classes


class FIDEvaluator(Evaluator):
    """`eval.every` during training (rank 0): the same metrics and protocol as `ganrun eval`, on
    G_ema, with reference features loaded (or computed and cached) once, at the first evaluation."""

    def __init__(self, *, settings: DictConfig, dataset_cfg: dict, device: torch.device):
        super().__init__(settings=settings)
        self.metrics = check_metric_names(list(settings.metrics))
        self.dataset_cfg = dataset_cfg
        self.device = device
        self.extractor: FeatureExtractor | None = None
        self.real: dict | None = None

    def higher_is_better(self, key: str) -> bool:
        return key in HIGHER_IS_BETTER

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int) -> dict[str, float]:
        if self.extractor is None:
            self.extractor = FeatureExtractor(metrics=self.metrics, cache_dir=cache_dir(), allow_download=True,
                                              device=self.device, precision=choice(self.settings.precision))
            data = load_reference_data(self.dataset_cfg, split=self.settings.split, root=None)
            self.real, _ = reference_features(
                self.extractor, data, dataset=self.dataset_cfg["name"], split=self.settings.split,
                count=self.settings.num_samples, batch_size=self.settings.batch_size, cache_dir=cache_dir(),
            )
        was_training = G.training
        G.eval()
        fake = self.extractor(
            generated_batches(recipe, G, count=self.settings.num_samples, batch_size=self.settings.batch_size, seed=0,
                              device=self.device),
            total=self.settings.num_samples, label=f"eval at step {step}",
        )
        G.train(was_training)
        return compute_metrics(fake, self.real, metrics=self.metrics)


class GenerationTask(Task):
    name: ClassVar[str] = "generation"
    data_kinds: ClassVar[tuple[str, ...]] = ("single",)

    def check_config(self, cfg: DictConfig) -> None:
        if not cfg.eval.every:
            return
        metrics = check_metric_names([str(name).lower() for name in cfg.eval.metrics])
        keys = metric_keys(metrics)
        if cfg.eval.best_metric not in keys:
            raise GanrunError(
                f"eval.best_metric={cfg.eval.best_metric!r} is not among what eval.metrics={metrics} reports "
                f"({', '.join(keys)}); e.g. eval.best_metric={keys[0]}"
            )
        least = 4 if "kid" in metrics else 2  # KID: subsets of >= 2, at most half of each side
        if cfg.eval.num_samples < least:
            raise GanrunError(f"eval.num_samples must be >= {least} for eval.metrics={metrics}, got {cfg.eval.num_samples}")

    def training_evaluator(self, *, settings: DictConfig, data: Any, dataset_cfg: dict,
                           device: torch.device) -> Evaluator:
        return FIDEvaluator(settings=settings, dataset_cfg=dataset_cfg, device=device)

    def evaluate(self, paths: list[Path], cfg: DictConfig) -> list[dict]:
        metrics = check_metric_names(list(cfg.metrics))
        if cfg.num_samples < 2:
            raise GanrunError(f"num_samples must be >= 2, got {cfg.num_samples}")
        device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available())
        extractor = FeatureExtractor(metrics=metrics, cache_dir=cache_dir(), allow_download=cfg.download, device=device,
                                     precision=choice(cfg.precision))
        return [evaluate_checkpoint(path, cfg, metrics, extractor) for path in paths]

    @torch.no_grad()
    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device) -> list[Path]:
        """Grids (the recipe's layout: class rows, reconstruction pairs, scatter plots), slerp
        walks (`interpolate=true`) or one PNG per image (`save_individual=true`)."""
        if cfg.input_dir is not None or cfg.out_dir is not None:
            model = load_checkpoint(path)["config"]["model"].get("_target_")
            raise GanrunError(f"input_dir=/out_dir= need an image-to-image checkpoint (e.g. super-resolution); {cfg.ckpt} is {model}")
        recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
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
        print(f"wrote {out} ({len(images)} images, step {int(load_checkpoint(path)['progress']['step'])})")
        return [out]
