"""The task interface, the in-training evaluator's best-so-far bookkeeping, and where results are
recorded. A new kind of job subclasses `Task` in a module of its own (ganrun/tasks/NAME.py) and
gets a `conf/task/NAME.yaml` naming it; see docs/architecture.md.
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
from omegaconf import DictConfig
from PIL import Image

from ganrun.data.images import list_images, warn
from ganrun.data.paired_sr import read_image
from ganrun.errors import GanrunError, ShouldAbort, check_abort
from ganrun.files import atomic_write_text
from ganrun.loop.checkpoint import run_dir_of

# classes


class Task:
    """One kind of job. The loop, `ganrun eval` and `ganrun sample` call these hooks on the task
    that the run's config names (`task._target_`), rebuilt from the checkpoint alone."""

    name: ClassVar[str] = ""
    # `ImageData.kind` values this task trains on ("single": images or points; "paired_sr": ...).
    data_kinds: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *, name: Optional[str] = None):
        # conf/task/NAME.yaml states its name, so saved configs say which task in plain words.
        if name is not None and name != self.name:
            raise GanrunError(f"task.name={name!r} does not match {type(self).__name__} ({self.name!r}); pick task={self.name}")

    # `dataset.*` keys this task reads itself rather than the dataset's loader (inpainting's
    # masks, mask_ratio, mask_dir); conf/task/NAME.yaml puts their defaults into `dataset`.
    dataset_keys: ClassVar[tuple[str, ...]] = ()

    # training

    def prepare_data(self, data: Any, *, settings: dict) -> Any:
        """The training data as this task trains on it, from the loader's `data` and the values
        of `dataset_keys` (`settings`); by default `data` itself. Raises GanrunError."""
        return data

    def check_config(self, cfg: DictConfig) -> None:
        """Reject settings this task cannot honour (eval.metrics, eval.best_metric), before any
        output exists. Raises GanrunError."""

    def check_run(self, *, data: Any, recipe: Any, dataset_name: str, model_target: str) -> None:
        """Refuse a dataset or recipe of another kind of job with a one-line error naming the fix."""
        if data.kind not in self.data_kinds:
            raise GanrunError(
                f"dataset={dataset_name} is {data.kind} data, which task={self.name} does not train on; "
                f"pick a {self.name} dataset or the task for this data"
            )
        if recipe.task != self.name:
            raise GanrunError(
                f"model {model_target} is a {recipe.task} recipe, not one for task={self.name}; "
                f"pick a {self.name} model (ganrun train --help lists them)"
            )

    def training_evaluator(self, *, settings: DictConfig, data: Any, dataset_cfg: dict,
                           device: torch.device) -> "Evaluator":
        """What `eval.every` runs during training (rank 0)."""
        raise NotImplementedError

    # commands

    def evaluate(self, paths: list[Path], cfg: DictConfig, *, should_abort: Optional[ShouldAbort] = None) -> list[dict]:
        """`ganrun eval` of these checkpoints (one result dict each, already printed and recorded).
        Between batches, `should_abort()` true raises SideWorkInterrupted."""
        raise NotImplementedError

    def sample(self, cfg: DictConfig, *, path: Path, device: torch.device,
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
        """`ganrun sample` of the checkpoint at `path`; returns what was written (files, or the
        folder of single images). Writes in batches (bounded memory); between them,
        `should_abort()` true raises SideWorkInterrupted."""
        raise NotImplementedError


class Evaluator:
    """In-training evaluation with a best-so-far record (checkpointed, so best.pt survives resume).
    Subclasses implement `measure`; `higher_is_better` says which way `settings.best_metric` improves."""

    def __init__(self, *, settings: DictConfig):
        self.settings = settings
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")

    def higher_is_better(self, key: str) -> bool:
        raise NotImplementedError

    def measure(self, recipe: Any, G: torch.nn.Module, *, step: int,
                should_abort: Optional[ShouldAbort] = None) -> dict[str, float]:
        """Metric values of G at this step (unprefixed keys; must include settings.best_metric).
        Polls `should_abort()` between batches and raises SideWorkInterrupted when it is true:
        a stop signal must not wait for the whole evaluation (schedulers give 30 s)."""
        raise NotImplementedError

    def __call__(self, recipe: Any, G: torch.nn.Module, *, step: int,
                 should_abort: Optional[ShouldAbort] = None) -> tuple[dict[str, float], bool]:
        """(scalars to log as eval/*, whether this step is the best so far by eval.best_metric).
        Raises SideWorkInterrupted when `should_abort()` turns true before the values are in;
        the best-so-far record is then unchanged."""
        start = time.perf_counter()
        if should_abort is not None and _takes_should_abort(self.measure):
            values = self.measure(recipe, G, step=step, should_abort=should_abort)
        else:  # an evaluator written before should_abort existed: it runs to its end
            values = self.measure(recipe, G, step=step)
        key = self.settings.best_metric
        improved = self.best is None or (values[key] > self.best if self.higher_is_better(key) else values[key] < self.best)
        if improved:
            self.best, self.best_step = values[key], step
        scalars = {f"eval/{name}": value for name, value in values.items()}
        scalars["eval/seconds"] = time.perf_counter() - start
        return scalars, improved


# helpers


def _takes_should_abort(method: Callable) -> bool:
    parameters = inspect.signature(method).parameters
    return "should_abort" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def map_folder(function: Callable[[torch.Tensor], torch.Tensor], *, input_dir: str, out_dir: str, channels: int,
               alpha_background: Any = "white", verb: str = "processing",
               should_abort: Optional[ShouldAbort] = None) -> list[Path]:
    """`function` (uint8 (C, H, W) -> uint8 (C', H', W')) on every image under `input_dir`, any
    size, written to `out_dir` as PNG with the same relative name. Images are decoded by ganrun's
    one policy (upright, 8-bit, transparency onto `alpha_background`; ganrun/data/decode.py);
    unreadable files are skipped and counted in one warning. `should_abort()` true before an
    image raises SideWorkInterrupted. Raises GanrunError for a missing or empty input_dir and for
    out_dir = input_dir (inputs are never overwritten)."""
    folder, target = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    if not folder.is_dir():
        raise GanrunError(f"input_dir={input_dir!r} is not a folder of images")
    files = list_images(folder)
    if not files:
        raise GanrunError(f"input_dir={input_dir!r} holds no images")
    if target.resolve() == folder.resolve():
        raise GanrunError(f"out_dir={out_dir!r} is input_dir: pick another folder, inputs are never overwritten")
    written, unreadable = [], []
    for path in files:
        check_abort(should_abort, f"{verb} ({len(written)} of {len(files)} images written to {target})")
        try:
            image = read_image(path, channels=channels, alpha_background=alpha_background)
        except GanrunError:  # one bad file of many: skipped and counted, as every reader does
            unreadable.append(path)
            continue
        output = function(image)
        out = (target / path.relative_to(folder)).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(output.permute(1, 2, 0).squeeze(-1).numpy()).save(out)
        written.append(out)
    if unreadable:
        examples = ", ".join(str(path) for path in unreadable[:3])
        warn(f"skipped {len(unreadable)} of {len(files)} images that could not be read (e.g. {examples})")
    return written


def record_result(path: Path, result: dict, *, values: dict) -> None:
    """The result into eval.json beside the checkpoint and an eval/* row of the run's metrics.jsonl."""
    eval_json = path.parent / "eval.json"
    entries = json.loads(eval_json.read_text()) if eval_json.is_file() else {}
    entries[path.name] = result
    atomic_write_text(eval_json, json.dumps(entries, indent=2) + "\n")
    run_dir = run_dir_of(path)
    if (run_dir / "metrics.jsonl").is_file():
        row = {"step": result["step"], **{f"eval/{name}": value for name, value in values.items()},
               "eval/protocol": result["protocol"], "eval/checkpoint": path.name, "time": round(time.time(), 3)}
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
