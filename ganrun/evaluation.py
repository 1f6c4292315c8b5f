"""`ganrun eval`: metrics of a checkpoint, of every checkpoint of a run, or of two image folders.

What is measured depends on the run's task (ganrun/tasks/: FID & co. for generation, PSNR/SSIM/
LPIPS for super-resolution), named in the checkpoint's config; this module dispatches to it and
draws what is common: the metric-vs-step table and plot (`run=`), and the W&B summary update.
Every number is printed with its protocol and stored with it: `eval.json` beside the checkpoint
(one entry per checkpoint file) and an `eval/*` row in the run's metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from ganrun.config import choice
from ganrun.data import load_image_folder
from ganrun.errors import GanrunError, ShouldAbort
from ganrun.loop.checkpoint import load_checkpoint, numbered_checkpoints, resolve_checkpoint_path, run_dir_of
from ganrun.loop.rebuild import task_of
from ganrun.loop.signals import stop_between_batches
from ganrun.loop.tracking import Tracker
from ganrun.metrics.fidelity import (
    RESIZE,
    cautions,
    compute_metrics,
    data_batches,
    extractor_for,
    format_result,
)

# the command


def evaluate(cfg: DictConfig) -> list[dict]:
    """Measure, print, record. SIGINT/SIGTERM stop it between batches (SystemExit 128 + signal);
    checkpoints measured by then keep their eval.json entries, the interrupted one gets none."""
    with stop_between_batches() as signals:
        return _evaluate(cfg, should_abort=signals.pending)


def _evaluate(cfg: DictConfig, *, should_abort: ShouldAbort) -> list[dict]:
    if cfg.real is not None or cfg.fake is not None:  # two folders: no checkpoint, no task
        return [evaluate_folders(cfg, should_abort=should_abort)]
    if cfg.run is not None:
        run_dir = Path(cfg.run)
        paths = numbered_checkpoints(run_dir / "checkpoints") or [resolve_checkpoint_path(run_dir)]
    else:
        paths = [resolve_checkpoint_path(cfg.ckpt)]
    results = task_of(load_checkpoint(paths[-1])["config"]).evaluate(paths, cfg, should_abort=should_abort)
    plot = None
    if cfg.run is not None:
        print_table(results)
        plot = plot_metrics(results, run_dir_of(paths[-1]) / "eval_vs_step.png")
        print(f"plot: {plot}")
    publish_to_wandb(results, checkpoint_path=paths[-1], requested_mode=choice(cfg.wandb), plot=plot)
    return results


def evaluate_folders(cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> dict:
    """FID & co. between two image folders (`real=` and `fake=`), both resized to `resolution`."""
    if cfg.real is None or cfg.fake is None:
        raise GanrunError("comparing folders needs both: ganrun eval real=/path/to/real fake=/path/to/fake")
    # What is there to compare comes first: a missing folder is the problem, not a missing resolution=.
    problems = {side: _folder_problem(Path(cfg[side]).expanduser()) for side in ("real", "fake")}
    named = [f"{side}={cfg[side]} {problem}" for side, problem in problems.items() if problem]
    if named:
        raise GanrunError(f"{' and '.join(named)}; pass existing folders of images")
    if cfg.resolution is None:
        raise GanrunError("comparing folders needs resolution=N (images are resized and center-cropped to NxN first)")
    metrics, extractor = extractor_for(cfg)
    features, data = {}, {}
    for side in ("real", "fake"):
        data[side] = load_image_folder(root=cfg[side], resolution=cfg.resolution)
        count = min(cfg.num_samples, len(data[side]))
        batches = data_batches(data[side], count=count, batch_size=cfg.batch_size, should_abort=should_abort)
        features[side] = extractor(batches, total=count, label=side)
    values = compute_metrics(features["fake"], features["real"], metrics=metrics, kid_subset_size=cfg.kid_subset_size,
                             seed=cfg.seed)
    protocol = {
        "fake": f"{len(features['fake']['2048'])} of {data['fake'].source}",
        "real": f"{len(features['real']['2048'])} of {data['real'].source}",
        "resolution": cfg.resolution,
        "preprocessing": "shorter side resized (antialiased) and center-cropped, then " + RESIZE,
        "feature_extractor": extractor.description,
    }
    notes = cautions(features["fake"], features["real"], metrics=metrics, kid_subset_size=cfg.kid_subset_size)
    if notes:
        protocol["cautions"] = notes
    print(format_result(values, protocol))
    for note in notes:
        print(f"  caution: {note}")
    return {"metrics": values, "protocol": protocol}


def _folder_problem(path: Path) -> Optional[str]:
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    return None


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
