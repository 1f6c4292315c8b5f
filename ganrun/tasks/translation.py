"""Image-to-image translation: pix2pix on paired data (dataset=paired), CycleGAN on unpaired data
(dataset=unpaired). Domains are A (input) and B (output); a direction is "AtoB" or "BtoA".

`ganrun eval` measures on the held-out split the dataset keeps (ganrun/data/translation.py,
`test_split`), with the do-nothing baseline "input as output" measured the same way beside every
number:
- paired: PSNR and SSIM of each output against its target on RGB, over the whole image (the
  super-resolution code's measurement, ganrun/metrics/image_quality.py, with no border cropped),
  LPIPS when AlexNet's ImageNet weights are available (the same rules as there), and FID/KID of
  the outputs against the targets (torch-fidelity's Inception, ganrun/metrics/fidelity.py);
- unpaired: FID/KID of G_AB(testA) against testB and of G_BA(testB) against testA (as the
  CycleGAN paper's successors report, e.g. CUT, Park et al. 2020), and `fid` = their mean.
`ganrun sample input_dir= out_dir= direction=` translates every image of a folder at any size:
reflect-padded to the generator's multiple (`recipe.size_multiple`) and cropped back, tile by
tile above `tile` pixels (pix2pix's repo crashes on sizes that are not a multiple of 4, its #566).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from ganrun.config import build, choice
from ganrun.data.images import ImageData
from ganrun.errors import GanrunError, ShouldAbort, check_abort
from ganrun.files import cache_dir
from ganrun.hardware import choose_device
from ganrun.imaging import check_tiles, pad_to_multiple, tiled, to_float, to_uint8
from ganrun.loop.checkpoint import load_checkpoint, run_dir_of
from ganrun.loop.rebuild import rebuild_from_checkpoint
from ganrun.metrics.fidelity import FeatureExtractor, as_rgb, cautions, compute_metrics
from ganrun.metrics.image_quality import LPIPS_SKIPPED, PerceptualDistance, measure, perceptual_distance_or_reason
from ganrun.tasks.base import Evaluator, Task, map_folder, record_result

# Per-image numbers of paired evaluation, and the Inception ones of both kinds.
PAIRED_METRICS = ("psnr", "ssim", "lpips")
INCEPTION_METRICS = ("fid", "kid")
HIGHER_IS_BETTER = ("psnr", "ssim")
DEFAULT_TILE, DEFAULT_OVERLAP = 1024, 64
BATCH = 16  # test images translated at once (all are crop_size squares)

# helpers



def translate_any_size(recipe: Any, G: torch.nn.Module, images: torch.Tensor, *, direction: str, tile: int,
                       overlap: int) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] of any H, W -> the translated images, same size, [-1, 1]:
    each tile (whole image when tile=0 or it fits) padded to `recipe.size_multiple`, translated
    and cropped back."""

    def run(piece: torch.Tensor) -> torch.Tensor:
        height, width = piece.shape[-2:]
        return recipe.translate(G, pad_to_multiple(piece, recipe.size_multiple), direction=direction)[..., :height, :width]

    return tiled(run, images, scale=1, tile=tile, overlap=overlap)


def check_direction(recipe: Any, direction: Optional[str], *, path: Path) -> str:
    direction = direction or "AtoB"
    if direction not in recipe.directions:
        raise GanrunError(
            f"direction={direction} is not one {path} can translate: it has {', '.join(recipe.directions)} "
            f"({type(recipe).__name__}); pick direction={recipe.directions[0]}"
        )
    return direction


@torch.no_grad()
def translate_list(recipe: Any, G: torch.nn.Module, images: Sequence[torch.Tensor], *, direction: str,
                   device: torch.device, label: str, should_abort: Optional[ShouldAbort] = None) -> list[torch.Tensor]:
    """uint8 (C, H, W) images of one size -> their translations, uint8, in batches of BATCH."""
    outputs: list[torch.Tensor] = []
    for start in range(0, len(images), BATCH):
        check_abort(should_abort, f"{label} ({start} of {len(images)} images)")
        batch = to_float(torch.stack(list(images[start : start + BATCH]))).to(device)
        outputs.extend(to_uint8(translate_any_size(recipe, G, batch, direction=direction, tile=0, overlap=0)).cpu())
    return outputs


def _batches(images: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), BATCH):
        yield as_rgb(torch.stack(list(images[start : start + BATCH])))


def _features(extractor: FeatureExtractor, images: Sequence[torch.Tensor], *, label: str,
              should_abort: Optional[ShouldAbort]) -> dict[str, torch.Tensor]:
    return extractor(_batches(images), total=len(images), label=label, should_abort=should_abort)


def _inception_values(fake: dict, real: dict, *, metrics: Sequence[str], suffix: str = "", prefix: str = "",
                      kid_subset_size: int = 1000) -> dict[str, float]:
    values = compute_metrics(fake, real, metrics=metrics, kid_subset_size=kid_subset_size)
    return {f"{prefix}{key}{suffix}": value for key, value in values.items()}


def check_metrics(metrics: Sequence[str], *, paired: bool, best_metric: Optional[str] = None) -> list[str]:
    """The metric names a translation run measures (paired: psnr, ssim, lpips, fid, kid;
    unpaired: fid, kid), and that `best_metric` is among what they report. Raises GanrunError."""
    names = [str(name).lower() for name in metrics]
    allowed = (PAIRED_METRICS + INCEPTION_METRICS) if paired else INCEPTION_METRICS
    kind = "paired" if paired else "unpaired"
    if not names or not set(names) <= set(allowed):
        raise GanrunError(
            f"{kind} translation measures {list(allowed)}, got metrics={names}; "
            f"e.g. eval.metrics=[{', '.join(allowed[:2])}]"
        )
    if best_metric is not None:
        reports = reported_keys(names, paired=paired)
        if best_metric not in reports:
            raise GanrunError(
                f"eval.best_metric={best_metric!r} is not among what eval.metrics={names} reports on {kind} data "
                f"({', '.join(reports)}); e.g. eval.best_metric={reports[0]}"
            )
    return names


def reported_keys(names: Sequence[str], *, paired: bool) -> list[str]:
    keys = []
    for name in names:
        if name == "kid":
            keys += ["kid_mean", "kid_std"] if paired else ["kid_mean", "kid_mean_AtoB", "kid_mean_BtoA"]
        elif name == "fid" and not paired:
            keys += ["fid", "fid_AtoB", "fid_BtoA"]
        else:
            keys.append(name)
    return keys


def measure_split(recipe: Any, G: torch.nn.Module, split: Any, *, metrics: Sequence[str], device: torch.device,
                  extractor: Optional[FeatureExtractor], perceptual: Optional[PerceptualDistance],
                  real_features: Optional[dict] = None, kid_subset_size: int = 1000,
                  should_abort: Optional[ShouldAbort] = None) -> tuple[dict[str, float], list[dict], list[str]]:
    """(metric values, per-image rows (paired), cautions) of G on a held-out split.

    Paired: `psnr`, `ssim` (+ `lpips`) means over images, `fid`/`kid_*` of outputs vs targets;
    every key again with the prefix `input_` for the inputs taken as outputs. Unpaired: `fid_AtoB`
    (G_AB(testA) vs testB), `fid_BtoA` (G_BA(testB) vs testA), `fid` their mean (or the one
    direction the recipe has), `kid_mean_*` alike, and `input_fid` (testA vs testB). `real_features`
    caches the reference side's Inception features across calls (training evaluations)."""
    inception = [name for name in metrics if name in INCEPTION_METRICS]
    real_features = {} if real_features is None else real_features
    values: dict[str, float] = {}
    notes: list[str] = []

    def reference(key: str, images: Sequence[torch.Tensor]) -> dict:
        if key not in real_features:
            real_features[key] = _features(extractor, images, label=f"reference {key}", should_abort=should_abort)
        return real_features[key]

    if split.paired:
        outputs = translate_list(recipe, G, split.a, direction="AtoB", device=device, label="translating",
                                 should_abort=should_abort)
        rows = []
        for name, output, source, target in zip(split.names_a, outputs, split.a, split.b):
            check_abort(should_abort, "measuring image pairs")
            rows.append({"name": name,
                         "output": _paired_values(output, target, perceptual),
                         "input": _paired_values(source, target, perceptual)})
        for side, prefix in (("output", ""), ("input", "input_")):
            for key in rows[0][side]:
                values[f"{prefix}{key}"] = sum(row[side][key] for row in rows) / len(rows)
        if inception:
            targets = reference("B", split.b)
            fake = _features(extractor, outputs, label="outputs", should_abort=should_abort)
            values.update(_inception_values(fake, targets, metrics=inception, kid_subset_size=kid_subset_size))
            values.update(_inception_values(reference("A", split.a), targets, metrics=inception, prefix="input_",
                                            kid_subset_size=kid_subset_size))
            notes = cautions(fake, targets, metrics=inception, kid_subset_size=kid_subset_size)
        return values, rows, notes
    if not inception:
        raise GanrunError("unpaired translation is measured by FID/KID only; e.g. metrics=[fid,kid]")
    sides = {"AtoB": (split.a, "B", split.b), "BtoA": (split.b, "A", split.a)}
    for direction in recipe.directions:
        sources, target_key, targets = sides[direction]
        outputs = translate_list(recipe, G, sources, direction=direction, device=device, label=f"translating {direction}",
                                 should_abort=should_abort)
        fake = _features(extractor, outputs, label=f"outputs {direction}", should_abort=should_abort)
        real = reference(target_key, targets)
        values.update(_inception_values(fake, real, metrics=inception, suffix=f"_{direction}", kid_subset_size=kid_subset_size))
        notes = notes or cautions(fake, real, metrics=inception, kid_subset_size=kid_subset_size)
    values.update(_inception_values(reference("A", split.a), reference("B", split.b), metrics=inception, prefix="input_",
                                    kid_subset_size=kid_subset_size))
    for key in ("fid", "kid_mean"):
        measured = [values[f"{key}_{direction}"] for direction in recipe.directions if f"{key}_{direction}" in values]
        if measured:
            values[key] = sum(measured) / len(measured)
    return values, [], notes


def _paired_values(output: torch.Tensor, target: torch.Tensor, perceptual: Optional[PerceptualDistance]) -> dict[str, float]:
    measured = measure(output, target, border=0, perceptual=perceptual)
    return {key: measured[key] for key in PAIRED_METRICS if key in measured}


def protocol_of(split: Any, *, extractor: Optional[FeatureExtractor], perceptual: Optional[PerceptualDistance],
                lpips_reason: str, generator: str) -> dict:
    resolution = f"{split.a[0].shape[-1]}x{split.a[0].shape[-2]}" if split.a else "?"
    protocol = {"images": split.source, "generator": generator, "resolution": resolution}
    if split.paired:
        protocol["measurement"] = (
            "outputs quantized to uint8 (as saved PNGs); PSNR (data range 255) and SSIM (11x11 Gaussian, sigma 1.5, "
            "windows inside the image) from torchmetrics on RGB over the whole image, mean over images; "
            f"{perceptual.description if perceptual else lpips_reason}; "
            "input_* = the input image taken as the output (the do-nothing baseline)"
        )
    else:
        protocol["measurement"] = ("fid_AtoB: G_AB(testA) vs testB, fid_BtoA: G_BA(testB) vs testA, fid = their mean; "
                                   "input_fid: testA vs testB (the do-nothing baseline)")
    if extractor is not None:
        protocol["feature_extractor"] = extractor.description
    return protocol


def format_rows(rows: list[dict]) -> str:
    """Per-image table, output | input-as-output, and the means."""
    keys = list(rows[0]["output"])
    header = f"{'image':<16}" + "".join(f"{key:>10}" for key in keys) + "  |" + "".join(f"{'input_' + key:>14}" for key in keys)
    mean = {side: {key: sum(row[side][key] for row in rows) / len(rows) for key in keys} for side in ("output", "input")}
    lines = [header]
    for name, output, source in [(row["name"], row["output"], row["input"]) for row in rows] + [("mean", mean["output"], mean["input"])]:
        lines.append(f"{name[:16]:<16}" + "".join(f"{output[key]:10.4f}" for key in keys) + "  |"
                     + "".join(f"{source[key]:14.4f}" for key in keys))
    return "\n".join(lines)


def format_values(values: dict[str, float]) -> str:
    """'name value (input: value)' for every measured key with its baseline."""
    parts = []
    for key, value in values.items():
        if key.startswith("input_") or key.startswith("kid_std"):
            continue
        baseline = values.get(f"input_{key}", values.get(f"input_{key.rsplit('_', 1)[0]}") if key.endswith(("AtoB", "BtoA")) else None)
        parts.append(f"{key} {value:.4g}" + (f" (input: {baseline:.4g})" if baseline is not None else ""))
    return "  ".join(parts)


def _load_data(config: DictConfig) -> ImageData:
    dataset = OmegaConf.to_container(config.dataset, resolve=True)
    dataset.pop("source", None)
    return build(dataset)


# the commands


def evaluate_checkpoint(path: Path, cfg: DictConfig, *, device: torch.device, extractor: Optional[FeatureExtractor],
                        should_abort: Optional[ShouldAbort] = None) -> dict:
    """Metrics of one translation checkpoint on its dataset's held-out split, printed with the
    protocol and recorded (eval.json beside it, an eval/* row in the run's metrics.jsonl)."""
    step = int(load_checkpoint(path)["progress"]["step"])
    recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
    split = _load_data(config).test_split()
    metrics = [str(name).lower() for name in cfg.metrics]
    if split.paired:
        metrics = ["psnr", "ssim", "lpips"] + metrics
    metrics = check_metrics(metrics, paired=split.paired)
    perceptual, reason = None, LPIPS_SKIPPED
    if split.paired:
        perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=cfg.download)
        if reason:
            print(reason)
    start = time.perf_counter()
    values, rows, notes = measure_split(recipe, G, split, metrics=metrics, device=device, extractor=extractor,
                                        perceptual=perceptual, kid_subset_size=cfg.kid_subset_size, should_abort=should_abort)
    protocol = protocol_of(split, extractor=extractor, perceptual=perceptual, lpips_reason=reason,
                           generator="G_ema" if cfg.ema else "G (raw)")
    if notes:
        protocol["cautions"] = notes
    print(f"{path} (step {step}), {protocol['generator']}: {split.source}")
    if rows:
        print(format_rows(rows))
    print(format_values(values))
    print(f"protocol: {protocol['measurement']}")
    for note in notes:
        print(f"  caution: {note}")
    result = {"checkpoint": str(path), "step": step, "metrics": values, "protocol": protocol,
              "per_image": rows, "seconds": round(time.perf_counter() - start, 1)}
    record_result(path, result, values=values)
    return result


# classes


class TranslationEvaluator(Evaluator):
    """`eval.every` for translation runs (rank 0): the metrics of `ganrun eval` on the held-out
    split (`data.test_split()`), reference features computed once; best.pt by eval.best_metric."""

    def __init__(self, *, settings: DictConfig, split: Any, device: torch.device):
        super().__init__(settings=settings)
        self.split, self.device = split, device
        self.metrics = check_metrics(settings.metrics, paired=split.paired, best_metric=settings.best_metric)
        self.extractor: Optional[FeatureExtractor] = None
        self.perceptual: Optional[PerceptualDistance] = None
        if "lpips" in self.metrics:
            self.perceptual, reason = perceptual_distance_or_reason(device=device, allow_download=True)
            if reason:
                raise GanrunError(f"eval.metrics has lpips, but {reason[0].lower()}{reason[1:]}; or drop lpips from eval.metrics")
        self.real_features: dict = {}

    def higher_is_better(self, key: str) -> bool:
        return key in HIGHER_IS_BETTER

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int,
                should_abort: Optional[ShouldAbort] = None) -> dict[str, float]:
        if self.extractor is None and set(self.metrics) & set(INCEPTION_METRICS):
            self.extractor = FeatureExtractor(metrics=["fid"], cache_dir=cache_dir(), allow_download=True, device=self.device,
                                              precision=choice(self.settings.precision))
        was_training = G.training
        try:
            values, _, _ = measure_split(recipe, G, self.split, metrics=self.metrics, device=self.device,
                                         extractor=self.extractor, perceptual=self.perceptual,
                                         real_features=self.real_features, should_abort=should_abort)
        finally:
            G.train(was_training)
        return values


class TranslationTask(Task):
    name: ClassVar[str] = "translation"
    data_kinds: ClassVar[tuple[str, ...]] = ("paired", "unpaired")

    def check_config(self, cfg: DictConfig) -> None:
        if cfg.eval.every:
            check_metrics(cfg.eval.metrics, paired=True)  # the data's kind is checked again with the data

    def check_run(self, *, data: Any, recipe: Any, dataset_name: str, model_target: str) -> None:
        """As every task, and a recipe that needs aligned pairs (pix2pix: `data_kinds`) refuses
        unpaired domains."""
        super().check_run(data=data, recipe=recipe, dataset_name=dataset_name, model_target=model_target)
        kinds = getattr(recipe, "data_kinds", self.data_kinds)
        if data.kind not in kinds:
            raise GanrunError(
                f"model {model_target} trains on {' or '.join(kinds)} data, and dataset={dataset_name} is {data.kind}; "
                "use dataset=paired (aligned pairs), or model=cyclegan for unpaired domains"
            )

    def training_evaluator(self, *, settings: DictConfig, data: Any, dataset_cfg: dict,
                           device: torch.device) -> Evaluator:
        return TranslationEvaluator(settings=settings, split=data.test_split(), device=device)

    def evaluate(self, paths: list[Path], cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> list[dict]:
        device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available(), key="device")
        names = [str(name).lower() for name in cfg.metrics]
        check_metrics(names, paired=True)
        extractor = None
        if set(names) & set(INCEPTION_METRICS):
            extractor = FeatureExtractor(metrics=["fid"], cache_dir=cache_dir(), allow_download=cfg.download, device=device,
                                         precision=choice(cfg.precision))
        return [evaluate_checkpoint(path, cfg, device=device, extractor=extractor, should_abort=should_abort) for path in paths]

    @torch.no_grad()
    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device,
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
        """input_dir= -> out_dir=: every image translated (`direction`, any size); without
        input_dir: the run's grid (its fixed held-out examples) drawn by this checkpoint."""
        recipe, G, config = rebuild_from_checkpoint(path, device=device, use_ema=cfg.ema)
        direction = check_direction(recipe, cfg.direction, path=path)
        if (cfg.input_dir is None) != (cfg.out_dir is None):
            missing = "input_dir" if cfg.input_dir is None else "out_dir"
            raise GanrunError(f"{missing} is missing: run ganrun sample ckpt={cfg.ckpt} input_dir=FOLDER out_dir=FOLDER "
                              f"direction={direction} (or neither, for the run's grid)")
        if cfg.input_dir is None:
            grid = load_checkpoint(path)["grid"]
            out = Path(cfg.out) if cfg.out else run_dir_of(path) / "samples" / f"translation_{'ema' if cfg.ema else 'raw'}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            recipe.save_grid(recipe.render(G, {key: value.to(device) for key, value in grid.items()}).cpu(), out, nrow=0)
            print(f"wrote {out}")
            return [out]
        tile, overlap = check_tiles(cfg.tile, cfg.tile_overlap, default_tile=DEFAULT_TILE, default_overlap=DEFAULT_OVERLAP)

        def translate(image: torch.Tensor) -> torch.Tensor:
            batch = to_float(image).unsqueeze(0).to(device)
            return to_uint8(translate_any_size(recipe, G, batch, direction=direction, tile=tile, overlap=overlap)[0]).cpu()

        written = map_folder(translate, input_dir=cfg.input_dir, out_dir=cfg.out_dir, channels=config.dataset.channels,
                             alpha_background=config.dataset.get("alpha_background", "white"), verb="translating",
                             should_abort=should_abort)
        print(f"wrote {len(written)} images ({direction}) to {Path(cfg.out_dir).expanduser()}")
        return written
