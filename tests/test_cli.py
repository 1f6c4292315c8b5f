"""The command line: help, bad input (one line, non-zero exit, nothing created), sampling,
sweeps, W&B, signals, kill -9 and DDP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, run_train, tiny_overrides
from PIL import Image

from ganrun.loop.checkpoint import LAST, load_checkpoint


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# help and config


def test_help_lists_the_three_commands(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in ("train", "sample", "eval"):
        assert f"\n  {command} " in out


def test_help_piped_into_a_reader_that_leaves_early_prints_no_traceback():
    reader = subprocess.run(f"{sys.executable} -m ganrun.cli eval --help | head -1", shell=True, capture_output=True,
                            text=True, timeout=120)
    assert reader.stdout.startswith("ganrun eval: FID, KID, IS")
    assert "Traceback" not in reader.stderr and "BrokenPipeError" not in reader.stderr, reader.stderr


def test_train_help_is_hydras_with_our_groups(capsys):
    code, out, _ = cli(capsys, "train", "--help")
    assert code == 0
    assert "== Configuration groups ==" in out
    assert "dataset: celeba, cifar10, fashion_mnist, grid25, image_folder, mnist, paired, paired_sr, ring8, unpaired" in out
    assert "model: bigan, cyclegan, dcgan, inpaint, mlp, pix2pix, sagan, sngan, srgan, srresnet, vae, wgan" in out
    assert "task: generation, inpainting, super_resolution, translation" in out
    assert "loss: bce, hinge, lsgan, minimax, wgan, wgan_gp" in out


def test_cfg_job_prints_the_composed_config(capsys):
    code, out, _ = cli(capsys, "train", "--cfg", "job", "optim.lr=0.001")
    assert code == 0
    assert "lr: 0.001" in out and "_target_: ganrun.models.dcgan.Generator" in out


# bad input: one line naming the value and the fix, exit 2, no run dir


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["model=stylegan9"], ["unknown model 'stylegan9'", "choose one of: bigan, cyclegan, dcgan, inpaint, mlp, pix2pix, sagan"]),
        (["dataset=imagenet"], ["unknown dataset 'imagenet'", "mnist"]),
        (["optim.lr=-0.1"], ["optim.lr must be > 0, got -0.1"]),
        (["optim.D.lr=0"], ["optim.D.lr must be > 0, got 0"]),
        (["trainer.batch_size=0"], ["trainer.batch_size must be >= 1, got 0"]),
        (["trainer.max_step=10"], ["unknown config key 'trainer.max_step'", "did you mean 'trainer.max_steps'"]),
        (["trainer.max_steps=ten"], ["bad value for 'trainer.max_steps'", "ten"]),
        (["trainer.precision=fp8"], ["trainer.precision", "fp8"]),
        (["resume=nowhere/run"], ["nowhere/run' does not exist", "pass a run dir"]),
    ],
)
def test_bad_input_gets_a_one_line_error(capsys, tmp_path, args, fragments):
    code, _, err = cli(capsys, "train", *args)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "outputs").exists()


def test_bad_checkpoints_for_resume(capsys, tmp_path, mnist_root):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    code, _, err = cli(capsys, "train", f"resume={text}")
    assert_one_line_error(code, err, "not a ganrun checkpoint")

    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root), run_dir)
    last = run_dir / "checkpoints" / LAST
    truncated = tmp_path / "cut" / "checkpoints" / LAST
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    code, _, err = cli(capsys, "train", f"resume={truncated.parent.parent}")
    assert_one_line_error(code, err, "truncated or corrupt", "earlier step_")

    code, _, err = cli(capsys, "train", f"resume={run_dir}", "model.D.width=32")
    assert_one_line_error(code, err, "different model", "model.D")


def test_unwritable_output_dir_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = cli(capsys, "train", f"hydra.run.dir={blocker}/run")
    assert_one_line_error(code, err, "cannot write outputs", "a_file is not a folder", "hydra.run.dir=")


def test_missing_dataset_error_from_inside_training(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "dataset=image_folder", f"dataset.root={tmp_path / 'no_photos'}", "logger.mode=disabled")
    assert_one_line_error(code, err, "no_photos", "is not a folder")


def test_unknown_command_and_eval(capsys):
    code, _, err = cli(capsys, "trian")
    assert_one_line_error(code, err, "unknown command 'trian'", "train, sample, eval")
    code, _, err = cli(capsys, "eval")
    assert_one_line_error(code, err, "eval needs what to measure", "ckpt=")
    code, _, err = cli(capsys, "eval", "ckpt=nowhere.pt")
    assert_one_line_error(code, err, "nowhere.pt", "does not exist")
    code, _, err = cli(capsys, "eval", "real=a", "fake=b", "metrics=[fid,fdi]")
    assert_one_line_error(code, err, "unknown names ['fdi']", "metrics=[fid,kid]")


# sampling


@pytest.fixture
def trained_run(mnist_root, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root), run_dir)
    return run_dir


def test_sample_grid_needs_only_the_checkpoint(capsys, trained_run, tmp_path):
    (trained_run / ".hydra").rename(trained_run / "hydra_moved")  # no config files around
    out = tmp_path / "grid.png"
    code, stdout, err = cli(capsys, "sample", f"ckpt={trained_run / 'checkpoints' / LAST}", "n=9", f"out={out}", "seed=3")
    assert code == 0, err
    assert Image.open(out).size == (3 * 28 + 8, 3 * 28 + 8)  # 3x3 grid with 2-pixel padding
    again = tmp_path / "again.png"
    cli(capsys, "sample", f"ckpt={trained_run}", "n=9", f"out={again}", "seed=3")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))  # seed= repeats
    other = tmp_path / "other.png"
    cli(capsys, "sample", f"ckpt={trained_run}", "n=9", f"out={other}", "seed=4")
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(other)))


def test_sample_individual_and_interpolation(capsys, trained_run, tmp_path):
    folder = tmp_path / "singles"
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=5", "save_individual=true", f"out={folder}")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(folder / "000000.png").size == (28, 28)

    walk = tmp_path / "walk.png"
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "interpolate=true", "n=16", "interpolation_steps=8", f"out={walk}")
    assert code == 0, err
    assert Image.open(walk).size == (8 * 28 + 18, 2 * 28 + 6)  # 2 walks of 8 steps


def test_slerp_endpoints_and_norms():
    from ganrun.tasks.generation import slerp

    a, b = torch.randn(3, 16), torch.randn(3, 16)
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert torch.allclose(path[:, 0], a, atol=1e-5) and torch.allclose(path[:, -1], b, atol=1e-5)
    middle_norm = path[:, 2].norm(dim=1)
    assert (middle_norm > 0.8 * torch.minimum(a.norm(dim=1), b.norm(dim=1))).all()  # no dip toward 0


def test_sample_without_ckpt_is_a_clear_error(capsys):
    code, _, err = cli(capsys, "sample", "n=4")
    assert_one_line_error(code, err, "ckpt=")


# sweeps and W&B


def test_multirun_gives_one_run_dir_and_one_wandb_run_per_job(capsys, mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    args = [o for o in tiny_overrides(mnist_root, **{"trainer.max_steps": 2}) if not o.startswith("logger.mode")]
    code, out, err = cli(capsys, "train", "-m", "optim.lr=1e-4,2e-4", "logger.mode=offline", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args)
    assert code == 0, err
    run_ids = []
    for job, lr in (("0", 1e-4), ("1", 2e-4)):
        checkpoint = load_checkpoint(tmp_path / "sweep" / job / "checkpoints" / LAST)
        assert checkpoint["config"]["optim"]["lr"] == lr
        run_ids.append(checkpoint["tracker"]["run_id"])
        assert list((tmp_path / "sweep" / job / "wandb").glob(f"offline-run-*-{run_ids[-1]}"))
    assert run_ids[0] and run_ids[0] != run_ids[1]


def test_resume_continues_the_same_wandb_run(mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"logger.mode": "offline"}), run_dir)
    first_id = load_checkpoint(run_dir / "checkpoints" / LAST)["tracker"]["run_id"]
    run_train([f"resume={run_dir}", "trainer.max_steps=6"], run_dir)
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["tracker"]["run_id"] == first_id


def test_unreachable_wandb_server_never_stops_training(mnist_root, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    run_dir = tmp_path / "run"
    result = run_train(tiny_overrides(mnist_root, **{"logger.mode": "online", "logger.init_timeout": 5}), run_dir)
    assert result.step == 4 and (run_dir / "checkpoints" / LAST).is_file()


# signals and kill -9 (real processes)


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _start_training(tmp_path: Path, mnist_root: Path, **extra) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / "run"
    args = tiny_overrides(mnist_root, **{"trainer.max_steps": 100000, "trainer.log_every": 1, **extra})
    process = subprocess.Popen(
        [sys.executable, "-m", "ganrun", "train", *args, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return process, run_dir


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path, mnist_root):
    process, run_dir = _start_training(tmp_path, mnist_root, **{"trainer.ckpt_every": 100000, "trainer.sample_every": 0})
    _wait_for(lambda: (run_dir / "metrics.jsonl").is_file() and (run_dir / "metrics.jsonl").stat().st_size > 0, 120)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "stopped by SIGTERM at step" in out and f"resume={run_dir}" in out
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert checkpoint["progress"]["step"] >= 1  # written at the step boundary after the signal


def test_kill_9_leaves_last_checkpoint_loadable(tmp_path, mnist_root):
    process, run_dir = _start_training(tmp_path, mnist_root, **{"trainer.ckpt_every": 1, "trainer.keep_last": 2})
    last = run_dir / "checkpoints" / LAST
    _wait_for(last.is_file, 120)
    time.sleep(1.5)  # let it be in the middle of more checkpoint writes
    process.kill()
    process.communicate(timeout=60)
    checkpoint = load_checkpoint(last)  # whole: the old file or the new one, never half
    assert checkpoint["progress"]["step"] >= 1
    for numbered in last.parent.glob("step_*.pt"):
        load_checkpoint(numbered)


# DDP


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, mnist_root):
    run_dir = tmp_path / "ddp"
    args = tiny_overrides(mnist_root, **{"trainer.max_steps": 4, "trainer.device": "cpu"})
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganrun", "train",
         *args, f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert checkpoint["progress"] == {"step": 4, "images_seen": 32}  # global batch 8 = 2 ranks x 4
    assert len(checkpoint["rng"]) == 2  # one RNG state per rank
    assert result.stdout.count("run dir:") == 2  # rank 0 alone reports (start and end)


@pytest.mark.slow
def test_ddp_shares_rank0_run_dir(tmp_path, mnist_root):
    args = tiny_overrides(mnist_root, **{"trainer.max_steps": 2, "trainer.device": "cpu"})
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganrun", "train", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1 and (run_dirs[0] / "checkpoints" / LAST).is_file()
