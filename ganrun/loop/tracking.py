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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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


def format_scalars(scalars: dict[str, float]) -> str:
    parts = []
    for key, value in scalars.items():
        short = key.removeprefix("loss/")
        parts.append(f"{short} {value:.4g}" if isinstance(value, float) else f"{short} {value}")
    return "  ".join(parts)


# classes


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
    ):
        self.run_dir = run_dir
        self.console = console or Console(stderr=False, soft_wrap=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.max_steps = max_steps
        self.wandb_run = None
        self.alarms = alarms  # every logged row passes through them
        self.run_id: Optional[str] = resume_run_id
        self._init_wandb(config, logger_cfg, resume_run_id)
        self.interactive = self.console.is_terminal
        self.progress: Optional[Progress] = None
        if self.interactive and show_progress:
            self.progress = Progress(
                TextColumn("step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[speed]}"),
                TextColumn("{task.fields[losses]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=max_steps, completed=start_step, speed="", losses="")
            self.progress.start()

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
            self.note(f"step {step}/{self.max_steps}  {speed}  {format_scalars(losses)}")

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
