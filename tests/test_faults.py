"""Run integrity (#15), the faults of side work: a stop signal during an evaluation or a long
`ganrun sample` is honoured between batches, not when the work ends (case 6); and the edges of
`sample`/`eval`: huge n, outputs that cannot be written, the wrong kind of checkpoint, missing
folders (case 9). The timed end-to-end checks run real processes (slow); the rest in-process."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import cli, run_train, tiny_overrides
from PIL import Image
from test_sr import sr_overrides, textures, write_images

from ganrun.data.paired_sr import Pair
from ganrun.errors import GanrunError, SideWorkInterrupted, check_abort
from ganrun.imaging import bicubic_upscale
from ganrun.loop.checkpoint import LAST, load_checkpoint
from ganrun.metrics.fidelity import FeatureExtractor, data_batches, generated_batches
from ganrun.recipes.gan import GANRecipe
from ganrun.tasks import generation
from ganrun.tasks.base import Evaluator
from ganrun.tasks.super_resolution import measure_pairs

# helpers


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _after(calls: int, action=None):
    """A should_abort that turns true from its `calls`-th call on (running `action` then)."""
    count = {"n": 0}

    def should_abort() -> bool:
        count["n"] += 1
        if count["n"] == calls and action is not None:
            action()
        return count["n"] >= calls

    return should_abort


def _eval_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if any(key.startswith("eval/") for key in row)]


class SlowEvaluator(Evaluator):
    """An evaluation of `batches` batches that sends this process `signum` during batch 3."""

    def __init__(self, *, settings, batches: int = 200, signum: int = signal.SIGTERM):
        super().__init__(settings=settings)
        self.batches, self.signum, self.done = batches, signum, 0

    def higher_is_better(self, key: str) -> bool:
        return False

    def measure(self, recipe, G, *, step: int, should_abort=None) -> dict[str, float]:
        for index in range(self.batches):
            check_abort(should_abort, "slow eval")
            if index == 2:
                os.kill(os.getpid(), self.signum)
            self.done += 1
        return {"fid": 1.0}


# case 6: stop signals during side work


def test_stop_signal_during_in_training_eval_drops_the_result_checkpoints_once_and_stops(mnist_root, tmp_path, monkeypatch,
                                                                                        capsys):
    import ganrun.loop.run as loop_run

    evaluators = []

    def slow_evaluator(self, *, settings, **_):
        evaluators.append(SlowEvaluator(settings=settings))
        return evaluators[-1]

    writes = []
    real_write = loop_run.write_checkpoint
    monkeypatch.setattr(loop_run, "write_checkpoint", lambda *a, **k: writes.append(k["step"]) or real_write(*a, **k))
    monkeypatch.setattr(generation.GenerationTask, "training_evaluator", slow_evaluator)
    run_dir = tmp_path / "run"
    result = run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 100, "eval.every": 2}), run_dir)

    assert result.stopped_by_signal == signal.SIGTERM and result.step == 2
    assert evaluators[0].done == 3  # stopped between batches 3 and 4 of 200
    assert evaluators[0].best is None and not (run_dir / "checkpoints" / "best.pt").exists()
    assert _eval_rows(run_dir) == []  # dropped: neither a value nor eval/failed
    assert writes == [2]  # the interval's save at step 2 is the stop's: not written twice
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == 2
    out = capsys.readouterr().out
    assert "eval at step 2 interrupted by SIGTERM: result dropped; checkpointing and stopping" in out
    assert f"stopped by SIGTERM at step 2; checkpoint saved. Continue with: ganrun train resume={run_dir}" in out


def test_an_evaluation_that_completes_keeps_its_result_when_a_signal_comes_after_it(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setattr(generation.GenerationTask, "training_evaluator",
                        lambda self, *, settings, **_: SlowEvaluator(settings=settings, batches=3))
    run_dir = tmp_path / "run"
    result = run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 100, "eval.every": 2}), run_dir)
    assert result.stopped_by_signal == signal.SIGTERM and result.step == 2
    assert [row["eval/fid"] for row in _eval_rows(run_dir)] == [1.0]  # complete: kept
    assert load_checkpoint(run_dir / "checkpoints" / "best.pt")["progress"]["step"] == 2


def test_evaluators_written_before_should_abort_still_work():
    class Old(Evaluator):
        def higher_is_better(self, key):
            return False

        def measure(self, recipe, G, *, step):
            return {"fid": float(step)}

    evaluator = Old(settings=SimpleNamespace(best_metric="fid"))
    scalars, improved = evaluator(None, None, step=3, should_abort=lambda: True)  # runs to its end, as before
    assert scalars["eval/fid"] == 3.0 and improved


def test_fid_batches_stop_between_batches():
    recipe = SimpleNamespace(grid_inputs=lambda n, generator: {"z": torch.randn(n, 2, generator=generator)},
                             render=lambda G, inputs: torch.zeros(len(inputs["z"]), 1, 4, 4))
    batches = generated_batches(recipe, None, count=100, batch_size=10, seed=0, device=torch.device("cpu"),
                                should_abort=_after(3))
    with pytest.raises(SideWorkInterrupted, match="generating samples interrupted"):
        assert len(list(batches)) == 2
    data = SimpleNamespace(images=torch.zeros(50, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(SideWorkInterrupted, match="reference images interrupted"):
        list(data_batches(data, count=50, batch_size=10, should_abort=_after(2)))

    extractor = object.__new__(FeatureExtractor)  # Inception's loop, with a stand-in network
    extractor.features, extractor.device, extractor.precision = ["2048"], torch.device("cpu"), "fp32"
    extractor.network = lambda batch: [batch.float().mean(dim=(2, 3))]
    seen = []
    with pytest.raises(SideWorkInterrupted, match="generated interrupted"):
        extractor((seen.append(i) or torch.zeros(2, 3, 4, 4) for i in range(100)), total=200, label="generated",
                  should_abort=_after(4))
    assert seen == [0, 1, 2, 3]  # the 4th batch was drawn, never measured, and no more were drawn
    assert extractor([torch.zeros(2, 3, 4, 4)], total=2, label="x")["2048"].shape == (2, 3)  # no check: as before


def test_validation_psnr_stops_between_pairs():
    recipe = SimpleNamespace(scale=4, super_resolve=lambda G, x: bicubic_upscale(x, 4).clamp(-1, 1))
    pairs = [Pair(name=f"p{i}", hr=torch.from_numpy(image).permute(2, 0, 1).contiguous())
             for i, image in enumerate(textures(6, size=(24, 24)))]
    assert len(measure_pairs(recipe, None, pairs, border=4, device=torch.device("cpu"), should_abort=lambda: False)) == 6
    with pytest.raises(SideWorkInterrupted, match="measuring image pairs interrupted"):
        measure_pairs(recipe, None, pairs, border=4, device=torch.device("cpu"), should_abort=_after(3))


SLOW_EVAL_PROCESS = """
import sys, time
from pathlib import Path

from ganrun.errors import check_abort
from ganrun.tasks import generation
from ganrun.tasks.base import Evaluator

marker, polls = Path(sys.argv[1]), sys.argv[2] == "polls"


class Slow(Evaluator):  # 2,000 batches of 50 ms: 100 s, as a real FID on a CPU takes minutes
    def higher_is_better(self, key):
        return False

    def batches(self, should_abort):
        marker.write_text("eval started")
        for _ in range(2000):
            check_abort(should_abort, "slow eval")
            time.sleep(0.05)
        return {"fid": 1.0}


class Polls(Slow):
    def measure(self, recipe, G, *, step, should_abort=None):
        return self.batches(should_abort)


class Old(Slow):  # written before should_abort: cannot be cut short
    def measure(self, recipe, G, *, step):
        return self.batches(None)


generation.GenerationTask.training_evaluator = lambda self, *, settings, **_: (Polls if polls else Old)(settings=settings)
from ganrun.cli import main

main(sys.argv[3:])
"""


def _start_with_slow_eval(tmp_path: Path, mnist_root: Path, *, polls: bool) -> tuple[subprocess.Popen, Path, Path]:
    script, marker, run_dir = tmp_path / "slow_eval.py", tmp_path / "eval_started", tmp_path / "run"
    script.write_text(SLOW_EVAL_PROCESS)
    args = tiny_overrides(mnist_root, **{"trainer.max_steps": 1000, "trainer.ckpt_every": 1000, "trainer.sample_every": 0,
                                         "eval.every": 2})
    process = subprocess.Popen([sys.executable, str(script), str(marker), "polls" if polls else "old", "train", *args,
                                f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the evaluation never started"
        time.sleep(0.1)
    return process, run_dir, marker


@pytest.mark.slow
def test_sigterm_during_a_long_in_training_eval_exits_within_seconds_with_a_checkpoint(tmp_path, mnist_root):
    process, run_dir, _ = _start_with_slow_eval(tmp_path, mnist_root, polls=True)
    try:
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        sent = time.time()
        out, err = process.communicate(timeout=60)
        elapsed = time.time() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert elapsed < 10, f"{elapsed:.1f} s after SIGTERM"  # schedulers wait 30 s; the eval had ~99 s left
    assert "Traceback" not in err
    assert "eval at step 2 interrupted by SIGTERM: result dropped" in out and "stopped by SIGTERM at step 2" in out
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == 2  # verified (SHA-256)
    assert _eval_rows(run_dir) == []


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path, mnist_root):
    process, run_dir, _ = _start_with_slow_eval(tmp_path, mnist_root, polls=False)
    try:
        process.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert process.poll() is None  # an evaluator that cannot be cut short runs on after the first
        process.send_signal(signal.SIGINT)
        sent = time.time()
        out, err = process.communicate(timeout=60)
        elapsed = time.time() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 128 + signal.SIGINT and elapsed < 5
    assert _one_error_line(err) == ("second Ctrl-C: stopped at once, without saving; files already written are whole, "
                                    "and a run resumes from its last checkpoint")


# case 9: sample and eval edges


@pytest.fixture
def trained_run(mnist_root, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2}), run_dir)
    return run_dir


def test_a_huge_grid_is_refused_before_anything_is_drawn(capsys, trained_run, tmp_path, monkeypatch):
    drawn = []
    real_inputs = GANRecipe.grid_inputs
    monkeypatch.setattr(GANRecipe, "grid_inputs", lambda self, n, **kw: drawn.append(n) or real_inputs(self, n, **kw))
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=200000000", f"out={tmp_path / 'grid.png'}")
    assert code == 2 and drawn == []
    assert _one_error_line(err) == ("error: n=200,000,000 images are too many for one picture (at most 65,536); pass "
                                    "save_individual=true to write one PNG per image, in batches (or lower n)")
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=3000", "nrow=1", f"out={tmp_path / 'tall.jpg'}")
    assert code == 2
    assert "make a grid of 32 x 90,002 pixels, and JPEG allows 65,500 per side" in _one_error_line(err)
    monkeypatch.setattr(generation, "GRID_MAX_SIDE", 100)  # MNIST's 28 px: 65,536 of them fit 8,192 x 8,192
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=16", f"out={tmp_path / 'big.png'}")
    assert code == 2
    assert _one_error_line(err) == ("error: n=16 images of 28x28 make a grid of 122 x 122 pixels, more than one picture "
                                    "should hold (100 x 100 at most); pass save_individual=true to write one PNG per "
                                    "image (or lower n)")
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.jpg"))


def test_single_images_stream_in_bounded_batches(capsys, trained_run, tmp_path, monkeypatch):
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=20", "save_individual=true", f"out={tmp_path / 'whole'}")
    assert code == 0, err
    monkeypatch.setattr(generation, "INPUT_CHUNK", 8)
    monkeypatch.setattr(generation, "RENDER_BATCH", 3)
    drawn, rendered = [], []
    real_inputs, real_render = GANRecipe.grid_inputs, GANRecipe.render
    monkeypatch.setattr(GANRecipe, "grid_inputs", lambda self, n, **kw: drawn.append(n) or real_inputs(self, n, **kw))
    monkeypatch.setattr(GANRecipe, "render", lambda self, G, inputs: rendered.append(len(inputs["z"])) or real_render(self, G, inputs))
    folder = tmp_path / "chunked"
    code, out, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=20", "save_individual=true", f"out={folder}")
    assert code == 0, err
    assert drawn == [8, 8, 4] and max(rendered) == 3  # never more than a chunk of inputs, a batch of images
    assert sorted(path.name for path in folder.iterdir()) == [f"{i:06d}.png" for i in range(20)]
    assert "wrote 20 images to" in out
    for i in range(8):  # the first chunk is drawn exactly as one draw of all 20
        assert np.array_equal(np.asarray(Image.open(folder / f"{i:06d}.png")),
                              np.asarray(Image.open(tmp_path / "whole" / f"{i:06d}.png")))


def _statvfs(*, free_blocks: int, free_files: int):
    return lambda path: SimpleNamespace(f_frsize=4096, f_bsize=4096, f_bavail=free_blocks, f_files=10**9, f_favail=free_files)


@pytest.mark.parametrize("free_blocks, free_files, fragment", [
    (100, 10**6, "n=10,000 single images need about 39.1 MiB (10,000 PNGs of about 4.0 KiB on disk) but the disk of {folder} "
                 "has 400.0 KiB free; lower n or pass out= on a disk with room"),
    (10**6, 50, "n=10,000 single images need 10,000 files but the filesystem of {folder} has room for 50 more"),
])
def test_single_images_that_cannot_fit_are_refused_before_the_first_file(capsys, trained_run, tmp_path, monkeypatch,
                                                                          free_blocks, free_files, fragment):
    monkeypatch.setattr(generation.os, "statvfs", _statvfs(free_blocks=free_blocks, free_files=free_files))
    folder = tmp_path / "many"
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=10000", "save_individual=true", f"out={folder}")
    assert code == 2
    assert fragment.format(folder=folder) in _one_error_line(err)
    assert not folder.exists()  # a refused command leaves nothing


def test_a_disk_that_fills_while_writing_is_one_line(capsys, trained_run, tmp_path, monkeypatch):
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name == "000005.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    folder = tmp_path / "singles"
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=20", "save_individual=true", f"out={folder}")
    assert code == 2
    assert _one_error_line(err) == (f"error: cannot write {folder / '000005.png'} (No space left on device); 5 of 20 images "
                                    f"were written to {folder}; free space or pass another out=")


def test_outputs_that_cannot_be_written_are_one_line(capsys, trained_run, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=4", "save_individual=true", f"out={a_file}")
    assert code == 2
    assert _one_error_line(err) == (f"error: out={a_file} is a file, but save_individual=true writes one PNG per image "
                                    "into a folder; pass a folder path (new or existing)")
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=4", f"out={a_file / 'grid.png'}")
    assert code == 2
    assert _one_error_line(err) == (f"error: out={a_file / 'grid.png'}: {a_file} is a file, not a folder; "
                                    "pick an out= path inside a folder")
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=4", f"out={tmp_path}/")
    assert code == 2 and "must end in .png or .jpg" in _one_error_line(err)
    (tmp_path / "folder.png").mkdir()
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=4", f"out={tmp_path / 'folder.png'}")
    assert code == 2 and f"out={tmp_path / 'folder.png'} is a folder; pass a file name such as" in _one_error_line(err)


def test_a_stop_signal_ends_sampling_between_batches_with_one_line(capsys, trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "RENDER_BATCH", 8)
    calls = {"n": 0}
    real_render = GANRecipe.render

    def render(self, G, inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the third batch is drawn
        return real_render(self, G, inputs)

    monkeypatch.setattr(GANRecipe, "render", render)
    folder = tmp_path / "singles"
    code, _, err = cli(capsys, "sample", f"ckpt={trained_run}", "n=600", "save_individual=true", f"out={folder}")
    assert code == 128 + signal.SIGINT
    assert _one_error_line(err) == f"stopped by SIGINT: sampling interrupted: 24 of 600 images written to {folder}"
    assert len(list(folder.iterdir())) == 24  # the batch being drawn was finished, no more


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_names_the_commands_own_key(capsys, trained_run):
    for command in ("sample", "eval"):
        code, _, err = cli(capsys, command, f"ckpt={trained_run}", "device=cuda", "download=false" if command == "eval" else "n=4")
        assert code == 2
        assert _one_error_line(err) == "error: device=cuda but no CUDA GPU is visible; use device=auto or cpu"


def test_sampling_a_super_resolution_checkpoint_without_input_dir(capsys, tmp_path):
    run_dir = tmp_path / "sr_run"
    run_train(sr_overrides(write_images(tmp_path / "HR", textures(6)), **{"trainer.max_steps": 2}), run_dir)
    code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", "n=4")
    assert code == 2
    assert _one_error_line(err) == (
        f"error: {run_dir} is a super-resolution checkpoint: it super-resolves a folder of images, and input_dir and "
        f"out_dir are missing; run ganrun sample ckpt={run_dir} input_dir=LR_FOLDER out_dir=SR_FOLDER (n=, out= and "
        "interpolate= are for generation checkpoints)"
    )
    code, _, err = cli(capsys, "sample", f"ckpt={run_dir}", f"input_dir={tmp_path / 'HR'}")
    assert code == 2 and "and out_dir is missing; run ganrun sample" in _one_error_line(err)


def test_comparing_missing_folders_names_them_before_asking_for_resolution(tmp_path):
    from omegaconf import OmegaConf

    from ganrun.config import EvalConfig
    from ganrun.evaluation import evaluate_folders

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"real": "/missing", "fake": str(a_file)})
    with pytest.raises(GanrunError) as caught:
        evaluate_folders(cfg)
    assert str(caught.value) == f"real=/missing does not exist and fake={a_file} is not a folder; pass existing folders of images"
    cfg = OmegaConf.merge(cfg, {"fake": str(tmp_path)})
    with pytest.raises(GanrunError, match="^real=/missing does not exist; pass existing folders of images$"):
        evaluate_folders(cfg)
    cfg = OmegaConf.merge(cfg, {"real": str(tmp_path)})
    with pytest.raises(GanrunError, match="needs resolution=N"):
        evaluate_folders(cfg)
