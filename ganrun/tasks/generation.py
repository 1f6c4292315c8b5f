"""Generation: images (or toy 2-D points) from latents, unconditional or per class, and the
families with an encoder (BiGAN, VAE). `ganrun eval` measures FID/KID/IS/precision-recall of
G_ema's samples against the dataset's held-out split; `ganrun sample` draws grids, latent walks,
class rows, reconstructions or single images.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from ganrun.config import choice
from ganrun.data.reference import load_reference_data
from ganrun.errors import GanrunError, ShouldAbort, SideWorkInterrupted, check_abort
from ganrun.files import cache_dir
from ganrun.loop.checkpoint import load_checkpoint, run_dir_of
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.metrics.fidelity import (
    HIGHER_IS_BETTER,
    RESIZE,
    FeatureExtractor,
    cautions,
    check_metric_names,
    compute_metrics,
    extractor_for,
    format_result,
    generated_batches,
    metric_keys,
    reference_features,
    timed,
)
from ganrun.tasks.base import Evaluator, Task, record_result

# `ganrun sample` draws its inputs in chunks of at most this many images and renders them in
# batches of RENDER_BATCH, so memory stays bounded whatever n is (n=200000000 with
# save_individual=true streams files). A grid is one picture: it must fit one chunk and
# 8192 x 8192 pixels (~0.8 GB as floats while it is encoded).
INPUT_CHUNK = 65_536
RENDER_BATCH = 256
GRID_MAX_SIDE = 8192  # a grid holds at most GRID_MAX_SIDE**2 pixels, in any shape
JPEG_MAX_SIDE = 65_500  # the JPEG format's limit is 65,535 pixels per side

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


def _check_out(out: Path, typed: Optional[str], *, folder: bool) -> None:
    """Refuse an `out=` that cannot be written, in one line, before anything is drawn."""
    shown = f"out={typed}" if typed else f"the default output {out}"
    if folder and out.exists() and not out.is_dir():
        raise GanrunError(f"{shown} is a file, but save_individual=true writes one PNG per image into a folder; "
                          "pass a folder path (new or existing)")
    if not folder and out.is_dir():
        raise GanrunError(f"{shown} is a folder; pass a file name such as out={out / 'grid.png'}")
    existing = out if folder else out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise GanrunError(f"{shown}: {existing} is a file, not a folder; pick an out= path inside a folder")


def _check_grid_size(cfg: DictConfig, out: Path, *, total: int, nrow: int, height: int, width: int) -> None:
    """Refuse a grid picture too large to draw in sane memory (or for JPEG to hold)."""
    grid_w, grid_h = nrow * (width + 2) + 2, -(-total // nrow) * (height + 2) + 2  # save_image's 2-pixel padding
    grid = f"n={cfg.n:,} images of {width}x{height} make a grid of {grid_w:,} x {grid_h:,} pixels"
    fix = "pass save_individual=true to write one PNG per image (or lower n)"
    if grid_w * grid_h > GRID_MAX_SIDE**2:
        raise GanrunError(f"{grid}, more than one picture should hold ({GRID_MAX_SIDE:,} x {GRID_MAX_SIDE:,} at most); {fix}")
    if out.suffix.lower() in (".jpg", ".jpeg") and max(grid_w, grid_h) > JPEG_MAX_SIDE:
        raise GanrunError(f"{grid}, and JPEG allows {JPEG_MAX_SIDE:,} per side; write a .png, set nrow=, or {fix}")


def _count_images(cfg: DictConfig, labels: Optional[list[int]]) -> int:
    """How many images `ganrun sample` draws for these settings (`_input_chunks` in total)."""
    if cfg.interpolate:
        return max(1, cfg.n // cfg.interpolation_steps) * cfg.interpolation_steps
    if labels:  # rows of n // len(labels), one per listed class, in every chunk
        sizes = [min(INPUT_CHUNK, cfg.n - first) for first in range(0, cfg.n, INPUT_CHUNK)]
        return sum(len(labels) * max(1, size // len(labels)) for size in sizes)
    return cfg.n


def _input_chunks(recipe: Any, cfg: DictConfig, *, by_label: dict, real: Optional[torch.Tensor]
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """The sample's inputs, drawn in order from one seeded generator, in chunks of at most
    INPUT_CHUNK images: up to that, one chunk, exactly the inputs of one grid. Reconstruction
    pairs (`real`) open the first chunk; later chunks are plain samples."""
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.interpolate:
        steps = cfg.interpolation_steps
        rows, rows_per_chunk = max(1, cfg.n // steps), max(1, INPUT_CHUNK // steps)
        for first in range(0, rows, rows_per_chunk):
            count = min(rows_per_chunk, rows - first)
            start = recipe.grid_inputs(count, generator=generator, **by_label)
            end = recipe.grid_inputs(count, generator=generator, **by_label)
            walk = slerp(start["z"], end["z"], torch.linspace(0, 1, steps)).reshape(count * steps, -1)
            # Other inputs (class labels, for conditional recipes) stay those of the walk's start.
            inputs = {key: value.repeat_interleave(steps, dim=0) for key, value in start.items() if key != "z"}
            inputs["z"] = walk
            yield inputs
        return
    for first in range(0, cfg.n, INPUT_CHUNK):
        count = min(INPUT_CHUNK, cfg.n - first)
        if first == 0 and real is not None:
            yield recipe.grid_inputs(count, generator=generator, real=real)
        else:
            yield recipe.grid_inputs(count, generator=generator, **by_label)


def _rendered(recipe: Any, G: torch.nn.Module, chunks: Iterator[dict[str, torch.Tensor]], *, device: torch.device,
              should_abort: Optional[ShouldAbort], what: str) -> Iterator[torch.Tensor]:
    """G's outputs (float, CPU, in [-1, 1]) in batches of RENDER_BATCH; `should_abort()` is
    polled before each batch."""
    for inputs in chunks:
        for i in range(0, max(len(value) for value in inputs.values()), RENDER_BATCH):
            check_abort(should_abort, what)
            yield recipe.render(G, {key: value[i : i + RENDER_BATCH].to(device) for key, value in inputs.items()}).float().cpu()


def _png_bytes(image: torch.Tensor) -> bytes:
    """One image in [-1, 1] as PNG bytes, converted exactly as torchvision's save_image does."""
    buffer = io.BytesIO()
    save_image(image.add(1).div(2).clamp(0, 1), buffer, format="png")
    return buffer.getvalue()


def _size(nbytes: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:,.1f} {unit}"
    return f"{nbytes / 2**10:,.1f} KiB"


def _check_room(folder: Path, *, total: int, first_sizes: list[int], n: int) -> None:
    """Refuse a folder of single images that cannot fit, before writing any: the first batch's
    PNG sizes rounded up to whole filesystem blocks, times the count (a rough estimate; a disk
    that fills anyway is reported in one line too), and one inode per file."""
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the disk it will be on
        existing = existing.parent
    usage = os.statvfs(existing)
    block = usage.f_frsize or usage.f_bsize or 4096
    per_file = sum(-(-size // block) * block for size in first_sizes) / len(first_sizes)
    need, free = per_file * total, usage.f_bavail * usage.f_frsize
    if need > free:
        raise GanrunError(
            f"n={n:,} single images need about {_size(need)} ({total:,} PNGs of about {_size(per_file)} on disk) but "
            f"the disk of {folder} has {_size(free)} free; lower n or pass out= on a disk with room"
        )
    if usage.f_files and total > usage.f_favail:  # f_files is 0 where inodes are not counted (btrfs)
        raise GanrunError(
            f"n={n:,} single images need {total:,} files but the filesystem of {folder} has room for "
            f"{usage.f_favail:,} more; lower n or pass out= on another disk"
        )


def evaluate_checkpoint(path: Path, cfg: DictConfig, metrics: list[str], extractor: FeatureExtractor,
                        should_abort: Optional[ShouldAbort] = None) -> dict:
    """FID & co. of one checkpoint's generator against its dataset's `cfg.split`, printed with the
    protocol and recorded (eval.json beside it, an eval/* row in the run's metrics.jsonl).
    `should_abort()` true between batches raises SideWorkInterrupted, recording nothing."""
    checkpoint = load_checkpoint(path)
    step = int(checkpoint["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=extractor.device, use_ema=cfg.ema)
    dataset_cfg = OmegaConf.to_container(config.dataset, resolve=True)
    data = load_reference_data(dataset_cfg, split=cfg.split, root=cfg.data_root)
    real, cache_status = reference_features(
        extractor, data, dataset=dataset_cfg["name"], split=cfg.split, count=cfg.num_samples,
        batch_size=cfg.batch_size, cache_dir=cache_dir(), should_abort=should_abort,
    )
    fake, fake_seconds = timed(
        extractor,
        generated_batches(recipe, G, count=cfg.num_samples, batch_size=cfg.batch_size, seed=cfg.seed, device=extractor.device,
                          should_abort=should_abort),
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

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int,
                should_abort: Optional[ShouldAbort] = None) -> dict[str, float]:
        if self.extractor is None:
            self.extractor = FeatureExtractor(metrics=self.metrics, cache_dir=cache_dir(), allow_download=True,
                                              device=self.device, precision=choice(self.settings.precision))
        if self.real is None:  # interrupted, it is computed (or read from the cache) next time
            data = load_reference_data(self.dataset_cfg, split=self.settings.split, root=None)
            self.real, _ = reference_features(
                self.extractor, data, dataset=self.dataset_cfg["name"], split=self.settings.split,
                count=self.settings.num_samples, batch_size=self.settings.batch_size, cache_dir=cache_dir(),
                should_abort=should_abort,
            )
        was_training = G.training
        G.eval()
        try:
            fake = self.extractor(
                generated_batches(recipe, G, count=self.settings.num_samples, batch_size=self.settings.batch_size, seed=0,
                                  device=self.device, should_abort=should_abort),
                total=self.settings.num_samples, label=f"eval at step {step}",
            )
        finally:
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

    def evaluate(self, paths: list[Path], cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> list[dict]:
        metrics, extractor = extractor_for(cfg)
        return [evaluate_checkpoint(path, cfg, metrics, extractor, should_abort) for path in paths]

    @torch.no_grad()
    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device,
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
        """Grids (the recipe's layout: class rows, reconstruction pairs, scatter plots), slerp
        walks (`interpolate=true`) or one PNG per image (`save_individual=true`, streamed in
        batches: any n that fits the disk). Returns the picture written, or the folder."""
        if cfg.input_dir is not None or cfg.out_dir is not None:
            model = load_checkpoint(path)["config"]["model"].get("_target_")
            raise GanrunError(f"input_dir=/out_dir= need an image-to-image checkpoint (e.g. super-resolution); {cfg.ckpt} is {model}")
        which = "ema" if cfg.ema else "raw"
        if cfg.save_individual:
            out = Path(cfg.out) if cfg.out else _default_out(path, f"individual_seed{cfg.seed}_{which}")
        else:
            name = f"interpolate_seed{cfg.seed}_{which}.png" if cfg.interpolate else f"sample_n{cfg.n}_seed{cfg.seed}_{which}.png"
            out = Path(cfg.out) if cfg.out else _default_out(path, name)
            if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                raise GanrunError(f"out={cfg.out!r} must end in .png or .jpg (or pass save_individual=true for a folder)")
            if cfg.n > INPUT_CHUNK:  # before drawing anything: n latents alone may not fit in memory
                raise GanrunError(f"n={cfg.n:,} images are too many for one picture (at most {INPUT_CHUNK:,}); pass "
                                  "save_individual=true to write one PNG per image, in batches (or lower n)")
        _check_out(out, cfg.out, folder=cfg.save_individual)
        recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
        labels = list(cfg.labels) if cfg.labels is not None else None
        if labels is not None and not recipe.num_classes:
            raise GanrunError(f"labels={labels} needs a conditional checkpoint; {path} was trained without classes (drop labels=)")
        # Conditional recipes draw one row per listed class; the others take no labels.
        by_label = {"labels": labels} if labels is not None else {}
        real = None
        if recipe.grid_shows_reconstructions and not cfg.interpolate:
            real = _real_images_for(path, config, min(cfg.n, INPUT_CHUNK))
        chunks = _input_chunks(recipe, cfg, by_label=by_label, real=real)
        total = _count_images(cfg, labels)
        if cfg.save_individual:
            return [self._write_individual(recipe, G, chunks, folder=out, total=total, cfg=cfg, device=device,
                                           should_abort=should_abort)]
        inputs = next(chunks)  # a grid is one chunk (n <= INPUT_CHUNK)
        nrow = cfg.interpolation_steps if cfg.interpolate else (
            cfg.nrow or (max(1, cfg.n // len(labels)) if labels else max(1, int(math.sqrt(cfg.n)))))
        probe = recipe.render(G, {key: value[:1].to(device) for key, value in inputs.items()})
        if probe.ndim == 4:  # images (points are a scatter plot: any count up to INPUT_CHUNK)
            _check_grid_size(cfg, out, total=total, nrow=nrow, height=probe.shape[-2], width=probe.shape[-1])
        outputs = torch.cat(list(_rendered(recipe, G, iter([inputs]), device=device, should_abort=should_abort,
                                           what="sampling")))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            recipe.save_grid(outputs, out, nrow=nrow)  # the recipe's layout: pairs of reconstructions, scatter plots
        except OSError as error:
            out.unlink(missing_ok=True)  # no half-written picture
            raise GanrunError(f"cannot write out={out} ({error.strerror or error}); pick another out= or free space") from None
        print(f"wrote {out} ({len(outputs)} images, step {int(load_checkpoint(path)['progress']['step'])})")
        return [out]

    @staticmethod
    def _write_individual(recipe: Any, G: torch.nn.Module, chunks: Iterator[dict[str, torch.Tensor]], *, folder: Path,
                          total: int, cfg: DictConfig, device: torch.device, should_abort: Optional[ShouldAbort]) -> Path:
        """One PNG per image (000000.png, ...), batch by batch: memory bounded by a chunk of
        inputs and a batch of images. Refused before the first file when it cannot fit."""
        digits = max(6, len(str(total - 1)))
        written = 0
        try:
            for outputs in _rendered(recipe, G, chunks, device=device, should_abort=should_abort, what="sampling"):
                if outputs.ndim != 4:
                    raise GanrunError(f"save_individual=true writes images, and {cfg.ckpt} draws 2-D points; "
                                      "drop save_individual for a scatter plot")
                encoded = [_png_bytes(image) for image in outputs]
                if written == 0:  # refused before the folder exists: a refused command leaves nothing
                    _check_room(folder, total=total, first_sizes=[len(data) for data in encoded], n=cfg.n)
                    folder.mkdir(parents=True, exist_ok=True)
                for data in encoded:
                    target = folder / f"{written:0{digits}d}.png"
                    target.write_bytes(data)
                    written += 1
        except OSError as error:
            where = error.filename or folder
            raise GanrunError(f"cannot write {where} ({error.strerror or error}); {written:,} of {total:,} images were "
                              f"written to {folder}; free space or pass another out=") from None
        except SideWorkInterrupted as stop:
            raise SideWorkInterrupted(f"{stop}: {written:,} of {total:,} images written to {folder}") from None
        print(f"wrote {written:,} images to {folder}")
        return folder
