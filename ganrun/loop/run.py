"""The one training loop. It knows steps, precision, EMA, logging, sampling, checkpoints,
resume and signals; it never knows which GAN family (the recipe's job) or kind of job (the
task's) it trains. `ganrun.loop.setup.build_run` builds a `Run`; `Run.train()` runs it.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from ganrun.errors import SideWorkInterrupted
from ganrun.hardware import PrecisionPolicy, describe
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


def _grid_rows(n: int) -> int:
    return max(1, int(math.sqrt(n)))


# the loop


class Run:
    """A built run (ganrun.loop.setup.build_run): its state, data and devices, and the loop."""

    def __init__(self, *, cfg: DictConfig, state: RunState, data: Any, stepper: Stepper, run_dir: Path,
                 context: distributed.DistributedContext, device: torch.device, precision: PrecisionPolicy,
                 channels_last: bool, resumed: bool):
        self.cfg, self.trainer = cfg, cfg.trainer
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
        self.tracker = self._start_tracker() if self.context.is_main else None
        stopped_by: Optional[int] = None
        exit_code = 1
        try:
            with StopSignals() as signals:
                stopped_by = self._loop(signals)
                if stopped_by is not None:
                    self.save_checkpoint()
            exit_code = 0
        finally:
            if self.tracker is not None:
                self.tracker.finish(exit_code=exit_code)
        if self.tracker is not None:
            if stopped_by is not None:
                name = signal.Signals(stopped_by).name
                self.tracker.note(f"stopped by {name} at step {self.progress.step}; checkpoint saved. "
                                  f"Continue with: ganrun train resume={self.run_dir}")
            self.tracker.note(f"done: step {self.progress.step}, {self.progress.images_seen:,} images; run dir: {self.run_dir}")
        return TrainResult(run_dir=self.run_dir, step=self.progress.step, stopped_by_signal=stopped_by)

    def _loop(self, signals: StopSignals) -> Optional[int]:
        """Steps until max_steps or a stop signal (returned); side work at its intervals."""
        trainer, progress, recipe = self.trainer, self.progress, self.recipe
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
            last_step = progress.step == trainer.max_steps
            if progress.step % trainer.log_every == 0 or last_step:
                self.log_window(window_images, time.perf_counter() - window_start - side_time)
                window_start, window_images, side_time = time.perf_counter(), 0, 0.0
            side_start = time.perf_counter()
            if trainer.sample_every and (progress.step % trainer.sample_every == 0 or last_step):
                self.save_samples()
                self.log_diagnostics()
            if self.cfg.eval.every and (progress.step % self.cfg.eval.every == 0 or last_step):
                self.evaluate()
            if progress.step % trainer.ckpt_every == 0 or last_step:
                self.save_checkpoint()
            side_time += time.perf_counter() - side_start
            if self.tracker is not None:
                self.tracker.advance(progress.step)
        return None

    # side work

    def _start_tracker(self) -> Tracker:
        """Rank 0: the saved config, metrics.jsonl cut back to the checkpoint, W&B, the start line."""
        (self.run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.cfg, self.run_dir / ".hydra" / "config.yaml", resolve=True)
        if self.resumed:
            truncate_metrics(self.run_dir / "metrics.jsonl", after_step=self.progress.step)
        tracker = Tracker(run_dir=self.run_dir, config=self.state.config, logger_cfg=self.cfg.logger,
                          max_steps=self.trainer.max_steps, start_step=self.progress.step,
                          resume_run_id=self.state.run_id, alarms=self.state.alarms)
        self.state.run_id = tracker.run_id
        verb = "resuming at step" if self.resumed else "starting at step"
        tracker.note(f"run dir: {self.run_dir}")
        tracker.note(
            f"{verb} {self.progress.step} of {self.trainer.max_steps} | data: {self.data.source} | "
            f"device: {describe(self.device)} | precision: {self.precision.name} | channels_last: {self.channels_last} | "
            f"compile: {self.trainer.compile} | ranks: {self.context.world_size}"
        )
        return tracker

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
