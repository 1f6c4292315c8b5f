"""Where numbers and images go: metrics.jsonl, Weights & Biases, and the terminal (rich).

Only rank 0 builds a Tracker. W&B is optional at every step: no credentials means offline
logging (sync later), an unreachable server means offline too, and `wandb.finish()` runs in
`Tracker.finish`, which the loop calls from a `finally`, so multirun jobs never share a run;
it also waits until W&B has written the run's files (`Tracker.finish`).
"""

from __future__ import annotations

import json
import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from ganrun.config import choice
from ganrun.files import atomic_write_text
from ganrun.loop.alarms import Alarms

# helpers


def has_wandb_credentials(env: Optional[dict] = None, netrc_path: Optional[Path] = None) -> bool:
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = netrc_path or Path(env.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_wandb_mode(requested: str, *, has_credentials: bool, env_mode: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(mode for wandb.init, a note for the user). `auto`: online with credentials, else offline;
    a WANDB_MODE set in the environment wins over auto."""
    if requested != "auto":
        return requested, None
    if env_mode in ("online", "offline", "disabled"):
        return env_mode, None
    if has_credentials:
        return "online", None
    return "offline", "no W&B credentials: logging offline; upload later with `wandb sync {run_dir}/wandb/offline-run-*`"


def estimate_eta(*, step: int, max_steps: int, steps_per_second: Optional[float],
                 seconds_left: Optional[float]) -> Optional[float]:
    """Seconds until the run ends: at max_steps at the measured rate, or at the time budget
    (`seconds_left`, None without one), whichever comes first; None while neither is known."""
    candidates = []
    if steps_per_second:
        candidates.append(max(0, max_steps - step) / steps_per_second)
    if seconds_left is not None:
        candidates.append(max(0.0, seconds_left))
    return min(candidates) if candidates else None


def _clock(seconds: float) -> str:
    """H:MM:SS, as rich's elapsed column shows it."""
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def sync_command(run_dir: Path) -> str:
    return f"wandb sync {run_dir}/wandb/offline-run-*"


def format_scalars(scalars: dict[str, float]) -> str:
    parts = []
    for key, value in scalars.items():
        short = key.removeprefix("loss/")
        parts.append(f"{short} {value:.4g}" if isinstance(value, float) else f"{short} {value}")
    return "  ".join(parts)


# classes


class RemainingColumn(ProgressColumn):
    """`ETA 0:04:12`: until max_steps or the time budget, whichever ends first (Tracker.eta)."""

    def __init__(self, tracker: "Tracker"):
        super().__init__(table_column=Column(no_wrap=True))
        self.tracker = tracker

    def render(self, task: Task) -> Text:
        seconds = self.tracker.eta(int(task.completed))
        return Text("ETA " + ("-:--:--" if seconds is None else _clock(seconds)), style="progress.remaining")


class LossesColumn(ProgressColumn):
    """The losses, on one line: the only column that narrows when the terminal is (an ellipsis)."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=False))  # wrapable: the table takes width from here first

    def render(self, task: Task) -> Text:
        return Text(task.fields["losses"], no_wrap=True, overflow="ellipsis")


class Tracker:
    def __init__(
        self,
        *,
        run_dir: Path,
        config: dict,
        logger_cfg: Any,
        max_steps: int,
        start_step: int,
        resume_run_id: Optional[str] = None,
        console: Optional[Console] = None,
        show_progress: bool = True,
        alarms: Optional[Alarms] = None,
        deadline: Optional[float] = None,
    ):
        """`deadline`: the time budget's end on time.monotonic()'s clock (trainer.max_time), or None."""
        self.run_dir = run_dir
        self.console = console or Console(stderr=False, soft_wrap=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.max_steps = max_steps
        self.deadline = deadline
        self.horizon = max_steps  # the step the run will likely end at (fewer under a time budget)
        self.start_step, self.started = start_step, time.monotonic()
        self.latest: dict[str, float] = {}  # the last logged value of every scalar (the end summary)
        self.wandb_run = None
        self.wandb_offline = False  # W&B logs to disk only: the end of the run says how to upload
        self.alarms = alarms  # every logged row passes through them
        self.run_id: Optional[str] = resume_run_id
        self._init_wandb(config, logger_cfg, resume_run_id)
        self.interactive = self.console.is_terminal
        self.progress: Optional[Progress] = None
        if self.interactive and show_progress:
            # Fits 80 columns with the ETA visible: the losses come last and are cut first (an ellipsis).
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.fields[horizon]}", table_column=Column(no_wrap=True)),
                BarColumn(bar_width=12, table_column=Column(no_wrap=True)),
                TimeElapsedColumn(table_column=Column(no_wrap=True)),
                RemainingColumn(self),
                TextColumn("{task.fields[speed]}", table_column=Column(no_wrap=True)),
                LossesColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step, speed="", losses="",
                                               horizon=str(max_steps))
            self.progress.start()

    def eta(self, step: int) -> Optional[float]:
        """Seconds left: to max_steps at this session's rate (side work included), or to the
        time budget, whichever comes first; None before the first step."""
        now = time.monotonic()
        done, elapsed = step - self.start_step, now - self.started
        rate = done / elapsed if done > 0 and elapsed > 0 else None
        left = None if self.deadline is None else self.deadline - now
        return estimate_eta(step=step, max_steps=self.max_steps, steps_per_second=rate, seconds_left=left)

    def set_horizon(self, steps: int) -> None:
        """The step the run will likely end at (a time budget's estimate): the bar's total, shown `~N`."""
        self.horizon = min(steps, self.max_steps)
        if self.progress is not None:
            estimated = self.horizon < self.max_steps
            self.progress.update(self.task, total=self.horizon,
                                 horizon=f"~{self.horizon}" if estimated else str(self.max_steps))

    # W&B

    def _init_wandb(self, config: dict, logger_cfg: Any, resume_run_id: Optional[str]) -> None:
        mode, note = choose_wandb_mode(
            choice(logger_cfg.mode), has_credentials=has_wandb_credentials(), env_mode=os.environ.get("WANDB_MODE")
        )
        if mode == "disabled":
            return
        import wandb

        def start(run_mode: str):
            return wandb.init(
                project=logger_cfg.project,
                entity=logger_cfg.entity,
                name=logger_cfg.name,
                tags=list(logger_cfg.tags),
                config=config,
                dir=str(self.run_dir),
                id=resume_run_id,
                resume="allow" if resume_run_id else None,
                mode=run_mode,
                settings=wandb.Settings(init_timeout=logger_cfg.init_timeout, silent=True, console="off"),
            )

        try:
            self.wandb_run = start(mode)
            self.wandb_offline = mode == "offline"
        except Exception as error:  # an unreachable or failing W&B server must never stop training
            if mode != "online":
                self.note(f"[yellow]warning:[/yellow] W&B disabled for this run: {str(error).splitlines()[0]}")
                return
            self.note(
                f"[yellow]warning:[/yellow] W&B server unreachable ({str(error).splitlines()[0]}); "
                "logging offline instead, upload later with `wandb sync`"
            )
            try:
                self.wandb_run = start("offline")
                self.wandb_offline = True
            except Exception as offline_error:
                self.note(f"[yellow]warning:[/yellow] W&B disabled for this run: {str(offline_error).splitlines()[0]}")
                return
        self.run_id = self.wandb_run.id
        if note:
            self.note(note.format(run_dir=self.run_dir))
        elif mode == "online":
            self.note(f"W&B run: {self.wandb_run.url}")

    def update_config(self, values: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.config.update(values, allow_val_change=True)

    # reporting

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def advance(self, step: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.latest.update(scalars)
        row = {"step": step, **scalars, "time": round(time.time(), 3)}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.wandb_run is not None:
            try:
                self.wandb_run.log(scalars, step=step)
            except Exception as error:  # keep training whatever the tracker does
                self.note(f"[yellow]warning:[/yellow] W&B log failed: {error}")
        if self.alarms is not None:
            for message in self.alarms.observe(step, scalars):
                self.alert(message)
        losses = {k: v for k, v in scalars.items() if k.startswith("loss/")}
        speed = f"{scalars['img_per_s']:.0f} img/s" if "img_per_s" in scalars else ""
        if self.progress is not None:
            self.progress.update(self.task, completed=step, speed=speed, losses=format_scalars(losses))
        else:
            horizon = f"~{self.horizon}" if self.horizon < self.max_steps else str(self.max_steps)
            eta = self.eta(step)
            eta_text = f"ETA {_clock(eta)}  " if eta is not None else ""
            self.note(f"step {step}/{horizon}  {eta_text}{speed}  {format_scalars(losses)}")

    def alert(self, message: str) -> None:
        """A training alarm: one console line and a W&B alert (e-mail/Slack where the user set them up)."""
        self.note(f"[yellow]alarm:[/yellow] {message}")
        if self.wandb_run is not None:
            import wandb

            try:
                self.wandb_run.alert(title="ganrun training alarm", text=message, level=wandb.AlertLevel.WARN,
                                     wait_duration=0)
            except Exception as error:  # offline runs and old servers have no alerts; the console line stands
                self.note(f"[yellow]warning:[/yellow] W&B alert not sent: {str(error).splitlines()[0]}")

    def log_image(self, step: int, key: str, path: Path) -> None:
        if self.wandb_run is not None:
            import wandb

            try:
                self.wandb_run.log({key: wandb.Image(str(path))}, step=step)
            except Exception as error:
                self.note(f"[yellow]warning:[/yellow] W&B image upload failed: {error}")

    def sync_hint(self) -> Optional[str]:
        """How to upload an offline W&B run (printed at the end), or None when it was online or off."""
        return f"W&B logged offline; upload with: {sync_command(self.run_dir)}" if self.wandb_offline else None

    def summary(self, values: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def finish(self, *, exit_code: int = 0) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.wandb_run is not None:
            import wandb

            try:
                self.wandb_run.finish(exit_code=exit_code)
                # finish() returns once W&B's service process has the run's last records; the
                # service writes and closes the run's files (the offline run-ID.wandb log with the
                # summary) after that, in its own time. Read at once (a test, `ganrun eval` called
                # from Python, the next multirun job), the summary could be missing; under load it
                # was. teardown() waits for the service to exit, so every file is complete when
                # finish returns; the next wandb.init starts a new service (about a second).
                wandb.teardown()
            except (Exception, SystemExit) as error:  # teardown exits when the service failed: warn, go on
                print(f"warning: W&B finish failed: {error}", file=sys.stderr)
            self.wandb_run = None


def truncate_metrics(path: Path, *, after_step: int) -> None:
    """On resume, drop rows logged after the checkpoint: they are about to be logged again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a half-written last line from a killed run
    # atomic: a kill or a full disk mid-rewrite must not lose the rows before the checkpoint
    atomic_write_text(path, "".join(line + "\n" for line in kept))
