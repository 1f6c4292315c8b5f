"""The one training loop. It knows steps, precision, EMA, logging, sampling, checkpoints,
resume and signals; it never knows which GAN family (the recipe's job) or kind of job (the
task's) it trains. `ganrun.loop.setup.build_run` builds a `Run`; `Run.train()` runs it.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ganrun.config import format_duration, parse_duration
from ganrun.errors import GanrunError, SideWorkInterrupted
from ganrun.hardware import PrecisionPolicy, ThreadWatch, describe, set_threads
from ganrun.loop import distributed
from ganrun.loop.checkpoint import save_checkpoint_file, write_checkpoint
from ganrun.loop.monitor import LossMonitor
from ganrun.loop.signals import StopSignals, received_signal_name, stop_pending
from ganrun.loop.state import RunState
from ganrun.loop.tracking import Tracker, truncate_metrics
from ganrun.recipes.base import Stepper

# helpers


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by_signal: Optional[int] = None
    stopped_by_time: bool = False  # trainer.max_time ran out before max_steps


def _grid_rows(n: int) -> int:
    return max(1, int(math.sqrt(n)))


def budget_reach(*, start_step: int, step: int, stepping_seconds: float, remaining: float) -> int:
    """The step a session will likely reach by its deadline: `step` plus the rate since its first
    step (from `start_step`, `stepping_seconds` ago; side work included) times the `remaining`
    seconds. Start-up (imports, data, the first grids) is not in the rate: it does not recur, and
    over a first log window of a fraction of a second it made the estimate several times too low."""
    if stepping_seconds <= 0 or step <= start_step:
        return start_step
    return step + int((step - start_step) / stepping_seconds * max(0.0, remaining))


def end_summary(*, step: int, max_steps: int, images_seen: int, wall_seconds: float, run_dir: Path,
                latest: dict[str, float], best: Optional[tuple[str, float, int]], last_checkpoint: Optional[Path],
                last_grid: Optional[Path], sync_hint: Optional[str]) -> list[str]:
    """The lines that end a run: where it stopped, final losses, best metric, where the files are,
    and (offline W&B) how to upload. `best`: (metric, value, step) when eval ran."""
    lines = [f"done: step {step:,} of {max_steps:,}, {images_seen:,} images, {format_duration(wall_seconds)} wall clock"]
    losses = {key.removeprefix("loss/"): value for key, value in latest.items() if key.startswith("loss/")}
    if losses:
        lines.append("final losses (mean of the last log window): "
                     + "  ".join(f"{key} {value:.4g}" for key, value in losses.items()))
    if best is not None:
        metric, value, best_step = best
        lines.append(f"best {metric}: {value:.4g} at step {best_step:,} ({run_dir / 'checkpoints' / 'best.pt'})")
    lines.append(f"run dir: {run_dir}")
    if last_checkpoint is not None:
        lines.append(f"  last checkpoint: {last_checkpoint}")
    if last_grid is not None:
        lines.append(f"  last grid:       {last_grid}")
    if sync_hint:
        lines.append(sync_hint)
    return lines


# the loop


class Run:
    """A built run (ganrun.loop.setup.build_run): its state, data and devices, and the loop."""

    def __init__(self, *, cfg: DictConfig, state: RunState, data: Any, stepper: Stepper, run_dir: Path,
                 context: distributed.DistributedContext, device: torch.device, precision: PrecisionPolicy,
                 channels_last: bool, resumed: bool, resume_changes: Optional[dict[str, tuple[Any, Any]]] = None):
        self.cfg, self.trainer = cfg, cfg.trainer
        # key -> (checkpoint's value, this session's) of the settings a resume changed, said at start
        self.resume_changes = {key: change for key, change in (resume_changes or {}).items() if not key.endswith(".source")}
        self.state, self.data, self.stepper = state, data, stepper
        self.recipe, self.progress = state.recipe, state.progress
        self.run_dir, self.context, self.device, self.precision = run_dir, context, device, precision
        self.channels_last, self.resumed = channels_last, resumed
        self.checkpoint_dir, self.samples_dir = run_dir / "checkpoints", run_dir / "samples"
        self.monitor = LossMonitor(precision=precision.name)
        self.tracker: Optional[Tracker] = None
        # The newest checkpoint on disk, for the divergence message (a resumed run starts from one).
        self.last_saved_step: Optional[int] = state.progress.step if resumed else None
        self._written_step: Optional[int] = None  # the step this process last wrote a checkpoint of

    def train(self) -> TrainResult:
        """Train until trainer.max_steps, trainer.max_time or a stop signal, whichever comes first.

        trainer.max_time is a wall-clock budget for this session (a resumed run gets it afresh
        from its own start): side work (grids, eval, checkpoints) counts. The run stops at the
        first step boundary after it, with a checkpoint and a grid, and says how to continue.
        Schedules are not stretched to the budget: the LR decay still ends at optim.total_steps
        (= max_steps by default), so a budgeted run stops early on that schedule; the EMA ramp
        counts images and is the same either way. The step the budget will likely reach is
        printed once the first log window is measured.
        """
        self.session_start = time.monotonic()
        self.budget = parse_duration(self.trainer.get("max_time"))  # seconds or None
        self.deadline = None if self.budget is None else self.session_start + self.budget
        self.stopped_by_time, self.budget_announced = False, False
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun's processes on this machine
        threads_before = torch.get_num_threads()  # given back at the end (a sweep's next job chooses afresh)
        self.threads = set_threads(self.trainer.get("num_threads"), device=self.device, ranks=ranks_here)
        # Auto threads on CPU follow the load as it changes (another job starting or ending).
        auto_cpu = self.trainer.get("num_threads") is None and self.device.type == "cpu"
        self.thread_watch = ThreadWatch(choice=self.threads, ranks=ranks_here) if auto_cpu else None
        stopped_by: Optional[int] = None
        exit_code = 1
        try:
            self.tracker = self._start_tracker() if self.context.is_main else None
            with StopSignals() as signals:
                self._first_grids()
                stopped_by = self._loop(signals)
                if stopped_by is not None:
                    self.save_checkpoint()
            exit_code = 0
        finally:
            torch.set_num_threads(threads_before)
            if self.tracker is not None:
                self.tracker.finish(exit_code=exit_code)
        if self.tracker is not None:
            if stopped_by is not None:
                name = signal.Signals(stopped_by).name
                self.tracker.note(f"stopped by {name} at step {self.progress.step}; checkpoint saved. "
                                  f"Continue with: ganrun train resume={self.run_dir}")
            elif self.stopped_by_time:
                self.tracker.note(self._time_stop_message())
            for line in self._end_summary():
                self.tracker.note(line)
        return TrainResult(run_dir=self.run_dir, step=self.progress.step, stopped_by_signal=stopped_by,
                           stopped_by_time=self.stopped_by_time)

    def _loop(self, signals: StopSignals) -> Optional[int]:
        """Steps until max_steps, the time budget (sets `stopped_by_time`) or a stop signal
        (returned); side work at its intervals, and at the last step a log, a grid and a
        checkpoint. A time stop starts no evaluation (FID can take minutes): eval keeps its own
        interval and runs at max_steps."""
        trainer, progress, recipe = self.trainer, self.progress, self.recipe
        self.loop_start = time.monotonic()  # the budget estimate's rate counts from here
        window_start, window_images, side_time = time.perf_counter(), 0, 0.0
        while progress.step < trainer.max_steps:
            if signals.should_stop():
                return signals.received
            # A recipe with n_critic D steps per G step takes n_critic batches at once.
            parts = [next(self.state.batches) for _ in range(recipe.batches_per_step)]
            batch = parts[0] if len(parts) == 1 else {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
            self.stepper.step_index = progress.step
            terms = recipe.train_step(batch, self.stepper)
            terms.update({f"grad_norm/{name}": norm for name, norm in self.stepper.grad_norms.items()})
            for scheduler in recipe.schedulers.values():
                scheduler.step()
            step_images = trainer.batch_size * len(parts)
            progress.step += 1
            progress.images_seen += step_images
            window_images += step_images
            self.state.ema.update(recipe.generator, images_seen=progress.images_seen, batch_size=step_images)
            self.monitor.add(progress.step, terms)
            at_max_steps = progress.step == trainer.max_steps
            out_of_time = not at_max_steps and self._out_of_time()
            last_step = at_max_steps or out_of_time
            if progress.step % trainer.log_every == 0 or last_step:
                self.log_window(window_images, time.perf_counter() - window_start - side_time)
                window_start, window_images, side_time = time.perf_counter(), 0, 0.0
                self._update_budget_estimate()
                self._follow_the_load()
            side_start = time.perf_counter()
            if trainer.sample_every and (progress.step % trainer.sample_every == 0 or last_step):
                self.save_samples()
                self.log_diagnostics()
            if self.cfg.eval.every and (progress.step % self.cfg.eval.every == 0 or at_max_steps):
                self.evaluate()
            if progress.step % trainer.ckpt_every == 0 or last_step:
                self.save_checkpoint()
            side_time += time.perf_counter() - side_start
            if self.tracker is not None:
                self.tracker.advance(progress.step)
            if out_of_time:
                self.stopped_by_time = True
                return None
        return None

    def _out_of_time(self) -> bool:
        """Whether the time budget has run out; under DDP every rank stops at the same step (the
        first rank whose clock passed the deadline decides)."""
        if self.deadline is None:
            return False
        flag = torch.tensor([1 if time.monotonic() >= self.deadline else 0])
        if self.context.enabled:
            distributed.all_reduce(flag, op="max")
        return bool(flag.item())

    def _follow_the_load(self) -> None:
        """Auto threads: a new count when other processes' load changed (hardware.ThreadWatch), said once per change."""
        changed = None if self.thread_watch is None else self.thread_watch.poll()
        if changed is None:
            return
        before, self.threads = self.threads, changed
        if self.tracker is not None:
            self.tracker.note(f"threads: {before.threads} -> {changed.threads} at step {self.progress.step:,} "
                              f"({changed.busy:.1f} cores busy with other processes)")

    def _update_budget_estimate(self) -> None:
        """Under a time budget, after each log window: the step the budget will likely reach
        becomes the progress bar's total; the first time, one line says so."""
        if self.budget is None or self.tracker is None:
            return
        start_step = self.tracker.start_step
        now = time.monotonic()
        reach = budget_reach(start_step=start_step, step=self.progress.step, stepping_seconds=now - self.loop_start,
                             remaining=self.deadline - now)
        self.tracker.set_horizon(reach)
        if self.budget_announced or self.progress.step >= self.trainer.max_steps:
            return
        self.budget_announced = True
        budget, max_steps = format_duration(self.budget), self.trainer.max_steps
        if reach >= max_steps:
            self.tracker.note(f"time budget {budget}: at this rate max_steps={max_steps:,} comes first")
            return
        message = f"time budget {budget}: at this rate this session will likely end near step {reach:,} of {max_steps:,}"
        if self.cfg.optim.get("decay", "none") != "none":
            total = self.cfg.optim.get("total_steps", max_steps)
            message += (f"; the LR decay runs to optim.total_steps={total:,}, so it stops early on that schedule "
                        f"(set trainer.max_steps near {reach:,} to decay within the budget)")
        self.tracker.note(message)

    def _time_stop_message(self) -> str:
        budget = self.trainer.max_time
        return (f"time budget trainer.max_time={budget} reached at step {self.progress.step:,} of "
                f"{self.trainer.max_steps:,}; checkpoint and grid saved. Continue with: "
                f"ganrun train resume={self.run_dir} trainer.max_time={budget} (the budget applies to each session; "
                f"trainer.max_time=null runs on to max_steps)")

    def _end_summary(self) -> list[str]:
        evaluator, tracker = self.state.evaluator, self.tracker
        best = None
        if evaluator is not None and evaluator.best is not None:
            best = (self.cfg.eval.best_metric, evaluator.best, evaluator.best_step)
        last_checkpoint = self.checkpoint_dir / "last.pt"
        grids = sorted(self.samples_dir.glob("step_*.png"))
        return end_summary(
            step=self.progress.step, max_steps=self.trainer.max_steps, images_seen=self.progress.images_seen,
            wall_seconds=time.monotonic() - self.session_start, run_dir=self.run_dir, latest=tracker.latest,
            best=best, last_checkpoint=last_checkpoint if last_checkpoint.is_file() else None,
            last_grid=grids[-1] if grids else None, sync_hint=tracker.sync_hint(),
        )

    # side work

    def _start_tracker(self) -> Tracker:
        """Rank 0: the saved config, metrics.jsonl cut back to the checkpoint, W&B, the start line."""
        (self.run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, self.run_dir / ".hydra" / "config.yaml", resolve=True)
        if self.resumed:
            truncate_metrics(self.run_dir / "metrics.jsonl", after_step=self.progress.step)
        tracker = Tracker(run_dir=self.run_dir, config=self.state.config, logger_cfg=self.cfg.logger,
                          max_steps=self.trainer.max_steps, start_step=self.progress.step,
                          resume_run_id=self.state.run_id, alarms=self.state.alarms, deadline=self.deadline)
        self.state.run_id = tracker.run_id
        verb = "resuming at step" if self.resumed else "starting at step"
        end = f"{self.trainer.max_steps}"
        if self.budget is not None:
            end += f" or {format_duration(self.budget)} of wall clock, whichever ends first"
        tracker.note(f"run dir: {self.run_dir}")
        if self.resume_changes:
            changed = ", ".join(f"{key} {before} -> {after}" for key, (before, after) in self.resume_changes.items())
            tracker.note(f"changed on resume: {changed}")
        tracker.note(
            f"{verb} {self.progress.step} of {end} | data: {self.data.source} | "
            f"device: {describe(self.device, self.threads)} | precision: {self.precision.name} | "
            f"channels_last: {self.channels_last} | compile: {self.trainer.compile} | ranks: {self.context.world_size}"
        )
        return tracker

    def _first_grids(self) -> None:
        """Something to look at before the first sample point (rank 0): samples/real.png, a grid of
        the training data as the run's grids show it, and on a fresh run the step-0 grid of G_ema.
        Drawn without touching the training's random state."""
        if self.tracker is None or not self.trainer.sample_every:
            return
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            real_path = self.samples_dir / "real.png"
            if not real_path.is_file():
                try:
                    real = self._real_images(self.trainer.grid_size)
                except GanrunError as error:  # the data's own reading problems: a warning, never the run
                    self.tracker.note(f"[yellow]warning:[/yellow] no {real_path.name}: {str(error).splitlines()[0]}")
                else:
                    real_path.parent.mkdir(parents=True, exist_ok=True)
                    self.recipe.save_grid(real, real_path, nrow=_grid_rows(len(real)))
            if not self.resumed:
                self.save_samples()

    def _real_images(self, count: int) -> torch.Tensor:
        """`count` training examples as the recipe's grids draw them: images in [-1, 1]
        (ImageData.first_images; HR crops for super-resolution), or 2-D points as they are."""
        images = self.data.images
        if images is not None and images.is_floating_point():  # toy mixtures: (N, 2) points, a scatter
            return images[:count]
        return self.data.first_images(count)

    def log_window(self, window_images: int, elapsed: float) -> None:
        self.monitor.raise_if_nonfinite(last_checkpoint_step=self.last_saved_step)
        scalars = self.monitor.flush()
        scalars["img_per_s"] = window_images / max(elapsed, 1e-9)
        scalars["images_seen"] = self.progress.images_seen
        if self.tracker is not None:
            self.tracker.log(self.progress.step, scalars)

    def _render(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.recipe.render(self.state.ema.module, {k: v.to(self.device) for k, v in inputs.items()}).float()

    def save_samples(self) -> None:
        if self.tracker is None or stop_pending():  # stopping: the checkpoint matters, the picture can wait
            return
        images = self._render(self.state.grid)
        path = self.samples_dir / f"step_{self.progress.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.recipe.save_grid(images, path, nrow=_grid_rows(len(images)))
        self.tracker.log_image(self.progress.step, "samples", path)

    def log_diagnostics(self) -> None:
        """Scalars a dataset computes from G_ema samples, when it offers them (toy mixtures:
        modes/covered, modes/high_quality), on fixed inputs so the values compare across steps."""
        if self.tracker is None or not hasattr(self.data, "diagnostics"):
            return
        generator = torch.Generator().manual_seed(self.trainer.seed + 1)
        samples = self._render(self.recipe.grid_inputs(self.data.diagnostic_samples, generator=generator))
        self.tracker.log(self.progress.step, self.data.diagnostics(samples))

    def save_checkpoint(self) -> None:
        """last.pt (and step_N.pt) of this step. A stop signal during the interval's save leads to
        a second call at the same step on the way out: the file is already there, so it is not
        written twice (a SIGTERM's grace period is short)."""
        if self._written_step == self.progress.step:  # the same on every rank: no collective skipped on one
            return
        # never overwrite a good checkpoint with a diverged one (a collective: every rank checks)
        self.monitor.raise_if_nonfinite(last_checkpoint_step=self.last_saved_step)
        payload = self.state.state_dict()  # the RNG gather is a collective: every rank takes part
        self._written_step = self.progress.step
        if self.tracker is None:
            return
        write_checkpoint(payload, self.checkpoint_dir, step=self.progress.step, keep_last=self.trainer.keep_last)
        self.last_saved_step = self.progress.step

    def evaluate(self) -> None:
        """Rank 0 measures G_ema; best.pt keeps the best state by eval.best_metric. A failing
        evaluation is reported and training goes on: it never costs the run. A stop signal
        during it (SIGTERM from a scheduler that waits 30 s) ends it between two batches: the
        result is dropped and the loop checkpoints and stops at once."""
        self.monitor.raise_if_nonfinite(last_checkpoint_step=self.last_saved_step)  # every rank checks first
        evaluator, tracker, step = self.state.evaluator, self.tracker, self.progress.step
        if evaluator is not None and tracker is not None:
            try:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    scalars, improved = evaluator(self.recipe, self.state.ema.module, step=step,  # no training randomness
                                                  should_abort=stop_pending)
            except SideWorkInterrupted:
                tracker.note(f"eval at step {step} interrupted by {received_signal_name()}: result dropped; "
                             "checkpointing and stopping")
            except Exception as error:  # noqa: BLE001 - any failure of a side measurement, reported below
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                tracker.note(f"[yellow]warning:[/yellow] eval at step {step} failed ({reason}); training goes on")
                tracker.log(step, {"eval/failed": 1.0})
            else:
                tracker.log(step, scalars)
                key = self.cfg.eval.best_metric
                if improved:
                    # rank 0's RNG state only: resuming from best.pt under DDP reuses it for every rank
                    save_checkpoint_file(self.state.state_dict(collective=False), self.checkpoint_dir / "best.pt")
                    tracker.summary({f"eval/best_{key}": evaluator.best, "eval/best_step": step})
                tracker.note(f"eval at step {step}: {key} {scalars[f'eval/{key}']:.4g} "
                             f"(best {evaluator.best:.4g} at step {evaluator.best_step}; {scalars['eval/seconds']:.0f} s)")
        distributed.barrier()
