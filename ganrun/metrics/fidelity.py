"""FID, KID, Inception Score and precision/recall, with the protocol stated beside every number.

The metric math is torch-fidelity's (its `*_features_to_metric` functions); ganrun only feeds
it features, because what makes numbers disagree between papers is the plumbing around it,
which is fixed and written down here: images quantized to uint8 before feature extraction (the
clean-fid study's advice), grayscale replicated to 3 channels, torch-fidelity's TF1-compatible
bilinear resize to 299x299, the TF Inception-v3 of 2015-12-05, and reference features cached per
(dataset, split, resolution, count, extractor) so repeated evaluations pay only for the fakes.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ganrun import hardware
from ganrun.config import choice
from ganrun.data.images import ImageData
from ganrun.errors import GanrunError, ShouldAbort, check_abort
from ganrun.files import cache_dir, save_to_cache
from ganrun.metrics.inception import find_inception_weights, fold_batch_norms, load_feature_extractor

METRICS = ("fid", "kid", "is", "prc")
# What each metric name reports, and which of those numbers grow with quality.
REPORTS = {"fid": ["fid"], "kid": ["kid_mean", "kid_std"], "is": ["is_mean", "is_std"], "prc": ["precision", "recall"]}
HIGHER_IS_BETTER = {"is_mean", "precision", "recall"}
RESIZE = "uint8 images, torch-fidelity's TF1-compatible bilinear resize to 299x299"
POOL_FEATURES = "2048"
LOGITS = "logits_unbiased"

# helpers


def check_metric_names(metrics: Sequence[str]) -> list[str]:
    names = [str(name).lower() for name in metrics]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise GanrunError(f"metrics={list(metrics)} has unknown names {unknown}; choose from {list(METRICS)}, e.g. metrics=[fid,kid]")
    return names


def metric_keys(metrics: Sequence[str]) -> list[str]:
    return [key for name in metrics for key in REPORTS[name]]


def is_better(key: str, value: float, best: Optional[float]) -> bool:
    if best is None:
        return True
    return value > best if key in HIGHER_IS_BETTER else value < best


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 RGB, quantized exactly as a saved PNG would be."""
    quantized = images.float().add(1).mul(127.5).round_().clamp_(0, 255).to(torch.uint8)
    return as_rgb(quantized)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def data_batches(data: ImageData, *, count: int, batch_size: int,
                 should_abort: Optional[ShouldAbort] = None) -> Iterator[torch.Tensor]:
    """The first `count` images of a dataset as uint8 RGB batches (N, 3, R, R), a fixed, ordered
    subset. Streamed files are decoded here by the loaders' policy (ImageData.readable_images):
    a file that fails to decode is skipped, the next one taking its place, and counted in one
    warning, exactly as training skips it. `should_abort()` true before a batch raises
    SideWorkInterrupted."""
    if data.images is not None:
        for start in range(0, count, batch_size):
            check_abort(should_abort, "reference images")
            yield as_rgb(data.images[start : min(start + batch_size, count)])
        return
    images = data.readable_images(count)
    while True:
        check_abort(should_abort, "reference images")
        batch = list(itertools.islice(images, batch_size))
        if not batch:
            return
        yield as_rgb(torch.stack(batch))


def generated_batches(recipe, G: torch.nn.Module, *, count: int, batch_size: int, seed: int,
                      device: torch.device, should_abort: Optional[ShouldAbort] = None) -> Iterator[torch.Tensor]:
    """`count` samples of G as uint8 RGB, from the recipe's own latent inputs (seeded).
    `should_abort()` true before a batch raises SideWorkInterrupted."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch_size):
        check_abort(should_abort, "generating samples")
        inputs = recipe.grid_inputs(min(batch_size, count - start), generator=generator)
        with torch.no_grad():
            images = recipe.render(G, {key: value.to(device) for key, value in inputs.items()})
        yield to_uint8_rgb(images.cpu())


def fingerprint(data: ImageData, count: int) -> str:
    """What reference features were computed from: the pixels themselves (in memory) or the files'
    names, sizes and times (streamed). A changed dataset changes this, and the cache recomputes."""
    digest = hashlib.sha1()
    if data.images is not None:
        digest.update(data.images[:count].contiguous().numpy().tobytes())
    else:
        for path in data.files[:count]:
            stat = path.stat()
            digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# classes


class FeatureExtractor:
    """torch-fidelity's Inception-v3 in batches, channels_last (the same features within 1e-5, 1.4x
    the throughput on CPU), BatchNorm folded into the convolutions (inception.fold_batch_norms).

    precision=auto runs Inception under bf16 autocast where the hardware computes in bf16 (CPUs
    with AVX512-BF16/AMX, Ampere+ GPUs): 2.5x the throughput on such a CPU, and FID moves by
    0.3% (MNIST train vs test, 1,000 each: 15.82 fp32, 15.77 bf16, 15.87 mixed), far inside the
    spread between sample draws. Features are cached per precision, so the two sides of one FID
    always come from the same arithmetic; precision=fp32 gives the reference arithmetic.
    """

    def __init__(self, *, metrics: Sequence[str], cache_dir: Path, allow_download: bool, device: torch.device,
                 precision: str = "fp32"):
        self.features = [POOL_FEATURES] + ([LOGITS] if "is" in metrics else [])
        self.weights = find_inception_weights(cache_dir=cache_dir, allow_download=allow_download)
        network = load_feature_extractor(self.weights, features=self.features)
        fold_batch_norms(network)  # the same features within float rounding; fp32 on 2 cores: 11.6 -> 12.5 img/s
        self.network = network.to(device, memory_format=torch.channels_last)
        self.device = device
        self.precision = choose_feature_precision(precision, device=device)
        self.description = (f"Inception-v3 (TF 2015-12-05) pool3 {POOL_FEATURES}-d, {self.precision}; "
                            f"weights: {self.weights.source}")
        self.tag = f"inception-2015-12-05-{'full' if self.weights.has_logits else 'pool'}-{self.precision}"

    @torch.inference_mode()
    def __call__(self, batches: Iterable[torch.Tensor], *, total: int, label: str,
                 should_abort: Optional[ShouldAbort] = None) -> dict[str, torch.Tensor]:
        """Features of every batch; `should_abort()` true between batches raises
        SideWorkInterrupted (a stop signal waits one batch, not the whole set)."""
        outputs: dict[str, list[torch.Tensor]] = {name: [] for name in self.features}
        progress = Progress(TextColumn(f"{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        with progress:
            task = progress.add_task(label, total=total)
            for batch in batches:
                check_abort(should_abort, label)
                batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    values = self.network(batch)
                for name, value in zip(self.features, values):
                    outputs[name].append(value.float().cpu())
                progress.advance(task, len(batch))
        return {name: torch.cat(values) for name, values in outputs.items()}


def choose_feature_precision(requested: str, *, device: torch.device) -> str:
    """fp32 | bf16 for Inception: auto = bf16 only where the hardware computes in it natively."""
    if requested not in ("auto", "fp32", "bf16"):
        raise GanrunError(f"precision={requested!r} is not an Inception precision; use precision=auto, fp32 or bf16")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if hardware.cpu_supports_bf16() else "fp32"


def reference_features(extractor: FeatureExtractor, data: ImageData, *, dataset: str, split: str, count: int,
                       batch_size: int, cache_dir: Path,
                       should_abort: Optional[ShouldAbort] = None) -> tuple[dict[str, torch.Tensor], str]:
    """Features of the first `count` reference images, from the cache when it was computed from
    the same data with the same extractor; returns (features, "hit" | "miss" | "recomputed").
    Interrupted (`should_abort`), nothing is cached."""
    count = min(count, len(data))
    meta = {
        "dataset": dataset, "split": split, "resolution": data.resolution, "count": count, "source": data.source,
        "fingerprint": fingerprint(data, count), "extractor": extractor.tag, "features": list(extractor.features),
    }
    path = cache_dir / "fid_refs" / f"{dataset}-{split}-{data.resolution}px-{count}-{extractor.tag}.pt"
    status = "miss"
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry.get("meta") == meta:
                return entry["features"], "hit"
        except Exception:  # a cache file we cannot read is recomputed, never trusted
            pass
        status = "recomputed"
    batches = data_batches(data, count=count, batch_size=batch_size, should_abort=should_abort)
    features = extractor(batches, total=count, label=f"reference {dataset} {split}")
    save_to_cache({"meta": meta, "features": features}, path)  # read-only cache: a warning, and on we go
    return features, status


KID_SUBSETS = 100
FID_FULL_RANK = 2048  # pool3 features: fewer samples than this leave FID's covariance rank-deficient


def kid_subset_size_for(requested: int, n_fake: int, n_real: int) -> int:
    """The KID subset size used: `requested`, but at most half the smaller side (rounded down).

    torch-fidelity draws 100 subsets without replacement from each side; a subset as large as
    the side is the whole side every time, and kid_std came out ~1e-7 however good the model.
    With at most half, the subsets differ and kid_std is the spread it claims to be. The
    unbiased MMD needs at least 2 samples per subset, so KID needs at least 4 per side.
    """
    size = min(requested, min(n_fake, n_real) // 2)
    if size < 2:
        raise GanrunError(
            f"KID needs at least 4 samples per side (subsets of at least 2, at most half of each side), got "
            f"{n_fake} generated and {n_real} reference; raise num_samples (eval.num_samples in training) or drop kid"
        )
    return size


def compute_metrics(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor], *, metrics: Sequence[str],
                    kid_subset_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """torch-fidelity's FID, KID (100 subsets), IS (10 splits) and precision/recall (k=3).

    KID's subsets hold `kid_subset_size` samples, at most half the smaller side
    (`kid_subset_size_for`). What makes small-sample numbers weaker (FID below 2,048 samples per
    side, smaller KID subsets than asked) is in `cautions(...)`, for the caller's protocol.
    """
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    fake_pool, real_pool = fake[POOL_FEATURES], real[POOL_FEATURES]
    results: dict[str, float] = {}
    if "fid" in metrics:
        score = fid_statistics_to_metric(fid_features_to_statistics(fake_pool), fid_features_to_statistics(real_pool), False)
        results["fid"] = score["frechet_inception_distance"]
    if "kid" in metrics:
        subset = kid_subset_size_for(kid_subset_size, len(fake_pool), len(real_pool))
        score = kid_features_to_metric(fake_pool, real_pool, kid_subsets=KID_SUBSETS, kid_subset_size=subset, rng_seed=seed,
                                       verbose=False)
        results["kid_mean"], results["kid_std"] = score["kernel_inception_distance_mean"], score["kernel_inception_distance_std"]
    if "is" in metrics:
        score = isc_features_to_metric(fake[LOGITS], splits=10, shuffle=True, rng_seed=seed)
        results["is_mean"], results["is_std"] = score["inception_score_mean"], score["inception_score_std"]
    if "prc" in metrics:
        score = prc_features_to_metric(fake_pool, real_pool, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False,
                                       verbose=False)
        results["precision"], results["recall"] = score["precision"], score["recall"]
    return results


def cautions(fake: dict[str, torch.Tensor], real: dict[str, torch.Tensor], *, metrics: Sequence[str],
             kid_subset_size: int = 1000) -> list[str]:
    """One line for each way `compute_metrics`' numbers from these features are weaker than their
    names suggest; callers print them and store them in the protocol (`protocol["cautions"]`).
    Empty at the usual sample counts (10,000 per side, KID subsets of 1,000)."""
    n_fake, n_real = len(fake[POOL_FEATURES]), len(real[POOL_FEATURES])
    notes = []
    if "fid" in metrics and min(n_fake, n_real) < FID_FULL_RANK:
        notes.append(
            f"FID from {n_fake:,} generated and {n_real:,} reference samples: below {FID_FULL_RANK:,} per side the "
            f"{FID_FULL_RANK}x{FID_FULL_RANK} covariance is rank-deficient, so FID reads high and compares only with "
            "FIDs from the same sample counts"
        )
    if "kid" in metrics:
        used = kid_subset_size_for(kid_subset_size, n_fake, n_real)
        if used < kid_subset_size:
            notes.append(
                f"KID on {KID_SUBSETS} subsets of {used} (at most half of the {min(n_fake, n_real):,} samples per side; "
                f"kid_subset_size={kid_subset_size} asked): kid_std compares only with KIDs from the same subset size"
            )
    return notes


def format_result(values: dict[str, float], protocol: dict) -> str:
    numbers = "  ".join(f"{name} {value:.4g}" for name, value in values.items())
    stated = "; ".join(f"{key}: {value}" for key, value in protocol.items() if key != "cautions")  # printed on lines of their own
    return f"{numbers}\n  protocol: {stated}"


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def extractor_for(settings: Any, *, key: str = "device") -> tuple[list[str], FeatureExtractor]:
    """(checked metric names, the Inception feature extractor) for `ganrun eval`'s settings
    (`metrics`, `num_samples`, `device`, `download`, `precision`). Raises GanrunError."""
    metrics = check_metric_names(list(settings.metrics))
    if settings.num_samples < 2:
        raise GanrunError(f"num_samples must be >= 2, got {settings.num_samples}")
    device = hardware.choose_device(choice(settings.device), cuda_available=torch.cuda.is_available(), key=key)
    extractor = FeatureExtractor(metrics=metrics, cache_dir=cache_dir(), allow_download=settings.download, device=device,
                                 precision=choice(settings.precision))
    return metrics, extractor
