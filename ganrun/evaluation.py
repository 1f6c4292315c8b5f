"""`ganrun eval`: metrics of a checkpoint, of every checkpoint of a run, or of two image folders.

Every number is printed with its protocol and stored with it: `eval.json` beside the checkpoint
(one entry per checkpoint file) and an `eval/*` row in the run's metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ganrun.loop.checkpoint import load_checkpoint, numbered_checkpoints, resolve_checkpoint_path, run_dir_of
from ganrun.config import build, choice
from ganrun.data import ImageData, load_image_folder
from ganrun.files import cache_dir
from ganrun.errors import GanrunError
from ganrun.hardware import choose_device
from ganrun.metrics.fidelity import (
    RESIZE,
    FeatureExtractor,
    check_metric_names,
    compute_metrics,
    data_batches,
    format_result,
    generated_batches,
    is_better,
    reference_features,
    timed,
)
from ganrun.sampling import rebuild_from_checkpoint

# helpers


def load_reference_data(dataset_cfg: dict, *, split: str, root: Optional[str]) -> ImageData:
    """The checkpoint's dataset, switched to the reference split (when the dataset has splits)."""
    options = {key: value for key, value in dataset_cfg.items() if key != "source"}
    if "split" in options:
        options["split"] = split
    if root is not None:
        options["root"] = root
    return build(options)


def _update_json(path: Path, key: str, value: dict) -> None:
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries[key] = value
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(entries, indent=2) + "\n")
    temp.replace(path)


# the command


def evaluate(cfg: DictConfig) -> list[dict]:
    from ganrun.metrics.image_quality import evaluate_sr_checkpoints, is_super_resolution  # it imports this module

    folders = cfg.real is not None or cfg.fake is not None
    if cfg.run is not None and not folders:
        run_dir = Path(cfg.run)
        paths = numbered_checkpoints(run_dir / "checkpoints") or [resolve_checkpoint_path(run_dir)]
    else:
        paths = [] if folders else [resolve_checkpoint_path(cfg.ckpt)]
    if paths and is_super_resolution(load_checkpoint(paths[-1])):  # PSNR/SSIM against HR images, not FID
        results = evaluate_sr_checkpoints(paths, cfg)
    else:
        metrics = check_metric_names(list(cfg.metrics))
        if cfg.num_samples < 2:
            raise GanrunError(f"num_samples must be >= 2, got {cfg.num_samples}")
        device = choose_device(choice(cfg.device), cuda_available=torch.cuda.is_available())
        extractor = FeatureExtractor(metrics=metrics, cache_dir=cache_dir(), allow_download=cfg.download, device=device,
                                     precision=choice(cfg.precision))
        if folders:
            return [evaluate_folders(cfg, metrics, extractor)]
        results = [evaluate_checkpoint(path, cfg, metrics, extractor) for path in paths]
    plot = None
    if cfg.run is not None:
        print_table(results)
        plot = plot_metrics(results, run_dir_of(paths[-1]) / "eval_vs_step.png")
        print(f"plot: {plot}")
    publish_to_wandb(results, checkpoint_path=paths[-1], requested_mode=choice(cfg.wandb), plot=plot)
    return results


def evaluate_checkpoint(path: Path, cfg: DictConfig, metrics: list[str], extractor: FeatureExtractor) -> dict:
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
    result = {"checkpoint": str(path), "step": step, "metrics": values, "protocol": protocol,
              "seconds_generated_side": round(fake_seconds, 1)}
    print(f"{path} (step {step}): {format_result(values, protocol)}\n  time for the generated side: {fake_seconds:.1f} s")
    record_result(path, result, values=values)
    return result


def record_result(path: Path, result: dict, *, values: dict) -> None:
    """The result into eval.json beside the checkpoint and an eval/* row of the run's metrics.jsonl."""
    _update_json(path.parent / "eval.json", path.name, result)
    run_dir = run_dir_of(path)
    if (run_dir / "metrics.jsonl").is_file():
        row = {"step": result["step"], **{f"eval/{name}": value for name, value in values.items()},
               "eval/protocol": result["protocol"], "eval/checkpoint": path.name, "time": round(time.time(), 3)}
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")


def evaluate_folders(cfg: DictConfig, metrics: list[str], extractor: FeatureExtractor) -> dict:
    if cfg.real is None or cfg.fake is None:
        raise GanrunError("comparing folders needs both: ganrun eval real=/path/to/real fake=/path/to/fake")
    if cfg.resolution is None:
        raise GanrunError("comparing folders needs resolution=N (images are resized and center-cropped to NxN first)")
    features, data = {}, {}
    for side in ("real", "fake"):
        data[side] = load_image_folder(root=cfg[side], resolution=cfg.resolution)
        count = min(cfg.num_samples, len(data[side]))
        features[side] = extractor(data_batches(data[side], count=count, batch_size=cfg.batch_size), total=count, label=side)
    values = compute_metrics(features["fake"], features["real"], metrics=metrics, kid_subset_size=cfg.kid_subset_size,
                             seed=cfg.seed)
    protocol = {
        "fake": f"{len(features['fake']['2048'])} of {data['fake'].source}",
        "real": f"{len(features['real']['2048'])} of {data['real'].source}",
        "resolution": cfg.resolution,
        "preprocessing": "shorter side resized (antialiased) and center-cropped, then " + RESIZE,
        "feature_extractor": extractor.description,
    }
    print(format_result(values, protocol))
    return {"metrics": values, "protocol": protocol}


def print_table(results: list[dict]) -> None:
    names = list(results[0]["metrics"]) if results else []
    print("step".rjust(10) + "".join(name.rjust(12) for name in names))
    for result in results:
        print(str(result["step"]).rjust(10) + "".join(f"{result['metrics'][name]:12.4f}" for name in names))


def plot_metrics(results: list[dict], path: Path) -> Path:
    """One panel per metric against the training step (the `run=` table, drawn)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    names = [name for name in results[0]["metrics"] if not name.endswith("_std")]
    steps = [result["step"] for result in results]
    figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for axis, name in zip(axes[0], names):
        axis.plot(steps, [result["metrics"][name] for result in results], marker="o")
        axis.set_xlabel("step")
        axis.set_title(name)
        axis.grid(alpha=0.3)
    protocol = results[-1]["protocol"]
    # A protocol may state its own one-line title (super-resolution: the image pairs measured).
    title = protocol.get("title") or f"{protocol['generator']}, {protocol['generated']} generated vs {protocol['reference']} reference images"
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def publish_to_wandb(results: list[dict], *, checkpoint_path: Path, requested_mode: str, plot: Optional[Path] = None) -> None:
    """Put the numbers and their protocol into the W&B summary of the run that made the checkpoint.

    The training run is resumed by its id, so the metrics sit beside its losses; a run trained
    without W&B gets nothing unless `wandb=online|offline` asks for a new run."""
    from ganrun.loop.tracking import Tracker

    checkpoint = load_checkpoint(checkpoint_path)
    run_id = checkpoint.get("tracker", {}).get("run_id")
    logger_cfg = OmegaConf.create(checkpoint["config"].get("logger", {"mode": "auto", "project": "ganrun"}))
    if requested_mode != "auto":
        logger_cfg.mode = requested_mode
    elif run_id is None:
        return
    OmegaConf.set_struct(logger_cfg, False)
    for key, default in (("project", "ganrun"), ("entity", None), ("name", None), ("tags", []), ("init_timeout", 30.0)):
        logger_cfg.setdefault(key, default)
    last = results[-1]
    tracker = Tracker(run_dir=run_dir_of(checkpoint_path), config=checkpoint["config"], logger_cfg=logger_cfg,
                      max_steps=last["step"], start_step=last["step"], resume_run_id=run_id, show_progress=False)
    try:
        if tracker.wandb_run is None:
            return
        tracker.summary({**{f"eval/{name}": value for name, value in last["metrics"].items()},
                         "eval/step": last["step"], "eval/protocol": last["protocol"]})
        if len(results) > 1:
            import wandb

            names = list(last["metrics"])
            table = wandb.Table(columns=["step", *names],
                                data=[[result["step"], *(result["metrics"][name] for name in names)] for result in results])
            media = {"eval/by_step": table, **({"eval/plot": wandb.Image(str(plot))} if plot is not None else {})}
            tracker.wandb_run.log(media)  # media go in a row of their own; the summary keeps the scalars
        tracker.note(f"W&B summary of run {tracker.run_id} updated with eval/*")
    finally:
        tracker.finish()


class TrainingEvaluator:
    """`eval.every` during training (rank 0): the same metrics and protocol as `ganrun eval`, on
    G_ema, with reference features loaded (or computed and cached) once, at the first evaluation."""

    def __init__(self, *, settings: DictConfig, dataset_cfg: dict, device: torch.device):
        self.settings = settings
        self.metrics = check_metric_names(list(settings.metrics))
        self.dataset_cfg = dataset_cfg
        self.device = device
        self.extractor: Optional[FeatureExtractor] = None
        self.real: Optional[dict] = None
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")

    def __call__(self, recipe, G: torch.nn.Module, *, step: int) -> tuple[dict[str, float], bool]:
        """(scalars to log, whether this step is the best so far by eval.best_metric)."""
        start = time.perf_counter()
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
        values = compute_metrics(fake, self.real, metrics=self.metrics)
        key = self.settings.best_metric
        improved = is_better(key, values[key], self.best)
        if improved:
            self.best, self.best_step = values[key], step
        scalars = {f"eval/{name}": value for name, value in values.items()}
        scalars["eval/seconds"] = time.perf_counter() - start
        return scalars, improved
