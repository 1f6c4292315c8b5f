"""Run integrity (#15): one process per run dir, no leftovers of crashed saves, checksummed
checkpoints, and disk faults as one line with the way back."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import cli, run_train, tiny_overrides
from ganrun.errors import GanrunError
from ganrun.files import atomic_save
from ganrun.loop.checkpoint import (
    CHECKSUM,
    FORMAT,
    LAST,
    load_checkpoint,
    step_name,
    write_checkpoint,
)
from ganrun.loop.tracking import truncate_metrics

# helpers


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp-*"))


def _train_cli(mnist_root: Path, run_dir: Path, **extra) -> list[str]:
    return ["train", *tiny_overrides(mnist_root, **extra), f"hydra.run.dir={run_dir}"]


@contextlib.contextmanager
def _tmpfs(mount_point: Path, size: str):
    """A small tmpfs (root only): a real full disk."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` and everything in it unwritable, for root too: chattr +i (immutable) as root,
    whom chmod does not stop; chmod a-w otherwise. A read-only remount would be closer, but the
    kernel refuses it while the run holds its lock file open for writing."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)
            pytest.skip(f"cannot make {folder} immutable here: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        return
    paths = [folder, *folder.rglob("*")]
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(modes[path] & ~0o222)
    try:
        yield
    finally:
        for path in paths:
            path.chmod(modes[path])


@pytest.fixture
def checkpoint_folder(mnist_root, tmp_path) -> Path:
    """A trained run's checkpoints/: step 2, 4 and 6, last.pt a hard link to step 6."""
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 6, "trainer.keep_last": 3, "trainer.sample_every": 0}),
              run_dir)
    return run_dir / "checkpoints"


def _flip_tensor_bytes(path: Path, count: int = 4096) -> None:
    """Invert `count` bytes inside the largest tensor's data (not the zip's bookkeeping)."""
    with zipfile.ZipFile(path) as archive:
        largest = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda info: info.file_size)
    assert largest.file_size >= count
    with open(path, "r+b") as handle:
        handle.seek(largest.header_offset + 26)
        name_length, extra_length = struct.unpack("<HH", handle.read(4))
        start = largest.header_offset + 30 + name_length + extra_length + (largest.file_size - count) // 2
        handle.seek(start)
        original = handle.read(count)
        handle.seek(start)
        handle.write(bytes(byte ^ 0xFF for byte in original))


# case 4: leftovers of a crash mid-save


def test_truncate_metrics_rewrites_atomically(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": step}) + "\n" for step in (2, 4, 6)) + '{"step": 8, "lo')
    truncate_metrics(path, after_step=4)
    assert path.read_text() == '{"step": 2}\n{"step": 4}\n'

    import ganrun.files as files

    real_open = open

    def open_that_fills_the_disk(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return handle

    monkeypatch.setattr(files, "open", open_that_fills_the_disk, raising=False)
    with pytest.raises(OSError, match="No space left on device"):
        truncate_metrics(path, after_step=2)
    assert path.read_text() == '{"step": 2}\n{"step": 4}\n'  # untouched, not half-rewritten
    assert _temp_files(tmp_path) == []


# case 5: silent corruption


def test_flipped_bytes_are_caught_and_the_newest_good_step_file_named(checkpoint_folder, capsys):
    last = checkpoint_folder / LAST
    assert torch.load(last, weights_only=True)[CHECKSUM]["sha256"]  # the safe unpickler still reads it
    _flip_tensor_bytes(last)
    torch.load(last, weights_only=True)  # torch itself does not notice
    good = checkpoint_folder / step_name(4)
    with pytest.raises(GanrunError) as caught:
        load_checkpoint(last)
    message = str(caught.value)
    assert f"checkpoint '{last}' is corrupt" in message
    assert "step_0000006.pt is the same file (last.pt is a hard link to the newest step file)" in message
    assert f"the newest step file that verifies is {good}" in message and f"resume={good}" in message
    with pytest.raises(GanrunError, match=r"last\.pt is the same file"):
        load_checkpoint(checkpoint_folder / step_name(6))

    code, _, err = cli(capsys, "train", f"resume={checkpoint_folder.parent}")
    assert code == 2
    line = _one_error_line(err)
    assert str(last) in line and str(good) in line and "weights_only" not in line
    load_checkpoint(good)


def test_truncated_last_checkpoint_names_the_newest_good_step_file(checkpoint_folder):
    last = checkpoint_folder / LAST
    os.truncate(last, last.stat().st_size // 2)  # in place: step_0000006.pt is this very file
    with pytest.raises(GanrunError) as caught:
        load_checkpoint(last)
    message = str(caught.value)
    assert f"cannot read checkpoint '{last}': it is truncated or corrupt" in message
    assert "step_0000006.pt is the same file" in message
    assert f"the newest step file that verifies is {checkpoint_folder / step_name(4)}" in message


def test_an_empty_checkpoint_counts_as_truncated(checkpoint_folder):
    empty = checkpoint_folder / step_name(8)
    empty.write_bytes(b"")  # what a crash can leave before the data reached the disk
    with pytest.raises(GanrunError, match=r"truncated or corrupt.*the newest step file that verifies is .*step_0000006\.pt"):
        load_checkpoint(empty)


def test_no_good_step_file_left_says_so(checkpoint_folder):
    for step in (2, 4):
        (checkpoint_folder / step_name(step)).unlink()
    _flip_tensor_bytes(checkpoint_folder / LAST)
    with pytest.raises(GanrunError, match=rf"no earlier step_\*\.pt in {checkpoint_folder} verifies"):
        load_checkpoint(checkpoint_folder / LAST)


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    path = write_checkpoint({"format": FORMAT, "weights": torch.randn(10), "progress": {"step": 1}}, tmp_path,
                            step=1, keep_last=1)
    payload = torch.load(path, weights_only=True)
    del payload[CHECKSUM]
    old = tmp_path / "old.pt"
    atomic_save(payload, old)  # as ganrun wrote them before checksums
    assert torch.equal(load_checkpoint(old)["weights"], payload["weights"])


def test_checksum_survives_save_and_load_for_every_kind_of_tensor(tmp_path):
    from ganrun.loop.checkpoint import payload_digest, save_checkpoint_file

    payload = {"format": FORMAT, "bf16": torch.randn(4, 3).bfloat16(), "strided": torch.randn(4, 6)[:, ::2],
               "int": torch.arange(5), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
               "empty": torch.zeros(0, 3), "betas": (0.5, 0.999), "none": None, 3: "int key"}
    save_checkpoint_file(payload, tmp_path / "best.pt")
    loaded = load_checkpoint(tmp_path / "best.pt")
    assert loaded[CHECKSUM]["sha256"] == payload_digest(payload) == payload_digest(loaded)


def test_checksum_covers_values_too(tmp_path):
    path = write_checkpoint({"format": FORMAT, "progress": {"step": 7}, "w": torch.ones(2)}, tmp_path, step=7, keep_last=0)
    payload = torch.load(path, weights_only=True)
    payload["progress"]["step"] = 8  # a changed number, not a tensor byte
    atomic_save(payload, path)
    with pytest.raises(GanrunError, match="do not match the SHA-256 stored in it"):
        load_checkpoint(path)


class NotAllowed:
    pass


def test_refused_pickles_never_suggest_weights_only_false(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"format": FORMAT, "thing": NotAllowed()}, path)
    with pytest.raises(GanrunError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "not a ganrun checkpoint" in message and "NotAllowed" in message
    assert "weights_only" not in message and "\n" not in message


# read-only metrics cache


class CountingExtractor:
    tag, features = "fake-extractor", ["2048"]

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, batches, *, total: int, label: str) -> dict:
        self.calls += 1
        return {"2048": torch.cat([batch.float().mean(dim=(2, 3)) for batch in batches])}


@pytest.fixture(params=["not a folder", "read-only"])
def unwritable_cache(request, tmp_path) -> Path:
    if request.param == "not a folder":  # fails for root too
        (tmp_path / "blocker").write_text("")
        yield tmp_path / "blocker" / "cache"
        return
    with _read_only(tmp_path / "cache"):
        yield tmp_path / "cache"


def test_unwritable_cache_warns_and_computes_anyway(unwritable_cache, capsys):
    from ganrun.data.images import ImageData
    from ganrun.metrics.fidelity import reference_features

    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    data = ImageData(source="ten images", images=images, resolution=32, channels=3)
    extractor = CountingExtractor()
    options = dict(dataset="toy", split="test", count=8, batch_size=4, cache_dir=unwritable_cache)
    features, status = reference_features(extractor, data, **options)
    assert status == "miss" and extractor.calls == 1 and features["2048"].shape == (8, 3)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: not caching {unwritable_cache / 'fid_refs'}")
    assert "computing without the cache" in lines[0] and "GANRUN_CACHE" in lines[0]
    reference_features(extractor, data, **options)  # still no cache: computed again, never a crash
    assert extractor.calls == 2


def test_unwritable_cache_still_gives_converted_inception_weights(unwritable_cache, tmp_path, monkeypatch, capsys):
    from ganrun.metrics import inception

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no torch-fidelity file
    monkeypatch.setattr(inception, "fid_helper_torchscript", lambda: tmp_path / "default_1.pt")
    monkeypatch.setattr(inception, "convert_fid_helper_weights", lambda path: {"conv.weight": torch.ones(3)})
    monkeypatch.setattr(inception.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    weights = inception.find_inception_weights(cache_dir=unwritable_cache, allow_download=False)
    assert weights.path.parent == tmp_path / "tmp" and not weights.has_logits
    assert torch.equal(torch.load(weights.path, weights_only=True)["conv.weight"], torch.ones(3))
    assert "warning: not caching" in capsys.readouterr().err
