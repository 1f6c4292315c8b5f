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

from ganrun.errors import GanrunError, RunInUse
from ganrun.files import atomic_save
from ganrun.loop.checkpoint import (
    CHECKSUM,
    FORMAT,
    LAST,
    load_checkpoint,
    step_name,
    write_checkpoint,
)
from ganrun.loop.lock import LOCK_NAME, RunLock, sweep_stale_temp_files
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


# case 3: two processes on one run


def test_second_process_on_a_run_dir_exits_at_once_naming_the_holder(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    args = _train_cli(mnist_root, run_dir, **{"trainer.max_steps": 100000, "trainer.log_every": 1,
                                              "trainer.ckpt_every": 2, "trainer.sample_every": 0})
    first = subprocess.Popen([sys.executable, "-m", "ganrun", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(lambda: (run_dir / LOCK_NAME).is_file() and (run_dir / "checkpoints" / LAST).is_file(), 120)
        holder = json.loads((run_dir / LOCK_NAME).read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()

        for second_args in (["train", f"resume={run_dir}"], args):  # a resume, and a fresh run into the same dir
            started = time.time()
            second = subprocess.run([sys.executable, "-m", "ganrun", *second_args], capture_output=True, text=True,
                                    timeout=120)
            assert second.returncode == 2, second.stderr
            line = _one_error_line(second.stderr)
            assert f"run dir {run_dir} is in use by PID {first.pid} on host {socket.gethostname()} (started " in line
            assert line.endswith("wait for it to end or stop it")
            assert "starting at step" not in second.stdout and "resuming at step" not in second.stdout
            assert time.time() - started < 60
            assert first.poll() is None  # the two really overlapped

        first.send_signal(signal.SIGTERM)  # the first ends the way a user ends a run
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in out and "Traceback" not in err
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, len(steps) + 1))  # one writer: every step once, in order
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == steps[-1]


def test_lock_in_one_process_refuses_a_second_holder(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(RunInUse, match=rf"in use by PID {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path / "run").acquire()
    with RunLock(tmp_path / "run"):  # released on exit
        pass


def test_lock_dies_with_a_killed_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from ganrun.loop.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
         "print('locked', flush=True); time.sleep(600)", str(run_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUse, match=f"PID {holder.pid} "):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()  # SIGKILL: no handler, no cleanup
        holder.wait()
    with RunLock(run_dir):  # the kernel dropped the lock with the process
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_dies_with_its_holder_even_when_a_forked_child_lives_on(tmp_path):
    """DataLoader workers are forked: they must not keep the run locked after the trainer dies."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time; from ganrun.loop.lock import RunLock; RunLock(sys.argv[1]).acquire(); "
         "child = os.fork()\nif child == 0: time.sleep(600)\nprint(child, flush=True); time.sleep(600)", str(run_dir)],
        stdout=subprocess.PIPE, text=True,
    )
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunInUse):
            RunLock(run_dir).acquire()
        holder.kill()
        holder.wait()
        assert os.path.exists(f"/proc/{child}")  # the forked child lives on
        with RunLock(run_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_check_free_before_writing_anything(tmp_path):
    from ganrun.loop.lock import check_free

    run_dir = tmp_path / "run"
    check_free(run_dir)  # never locked: no lock file, nothing created
    assert not run_dir.exists()
    with RunLock(run_dir):
        record = (run_dir / LOCK_NAME).read_text()
        with pytest.raises(RunInUse, match=f"PID {os.getpid()} "):
            check_free(run_dir)
        assert (run_dir / LOCK_NAME).read_text() == record
    check_free(run_dir)


# case 4: leftovers of a crash mid-save


def test_stale_temp_files_are_swept_and_live_ones_kept(mnist_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (checkpoints / f".step_0000010.pt.tmp-{dead}").write_bytes(b"\0" * 2**20)
        (checkpoints / f".last.pt.tmp-{os.getpid()}").write_bytes(b"\0" * 1000)  # our PID, from a dead process
        (run_dir / f".metrics.jsonl.tmp-{dead}").write_text("{}\n")
        (checkpoints / f".step_0000012.pt.tmp-{live.pid}").write_bytes(b"\0" * 10)  # a live writer's: kept
        run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2}), run_dir)
        out = capsys.readouterr().out
        assert f"removed 3 temp files of interrupted saves from {run_dir} (1.0 MiB freed)" in out
        assert _temp_files(run_dir) == [f".step_0000012.pt.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()
    assert sweep_stale_temp_files(run_dir) == (1, 10)  # its writer is gone now


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


# case 7: faults as one line


def _failing_torch_save(monkeypatch, *, succeed: int, error_number: int) -> None:
    """torch.save that works `succeed` times, then fails the way torch reports a full disk:
    half a file written, RuntimeError('[enforce fail ...]') with the OSError as its context."""
    real_save = torch.save
    calls = {"n": 0}

    def save(payload, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= succeed:
            return real_save(payload, handle, *args, **kwargs)
        handle.write(b"PK\x03\x04 half a checkpoint")
        try:
            raise OSError(error_number, os.strerror(error_number))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("error_number, fix", [(errno.ENOSPC, "free space on that disk"),
                                               (errno.EROFS, "make {run_dir} writable again")])
def test_failed_checkpoint_write_is_one_line_with_the_way_back(mnist_root, tmp_path, monkeypatch, capsys,
                                                               error_number, fix):
    run_dir = tmp_path / "run"
    _failing_torch_save(monkeypatch, succeed=1, error_number=error_number)  # step 2 saved, step 4 fails
    code, _, err = cli(capsys, *_train_cli(mnist_root, run_dir, **{"trainer.max_steps": 6, "trainer.sample_every": 0}))
    assert code == 1, err
    line = _one_error_line(err)
    checkpoints = run_dir / "checkpoints"
    assert line == (f"error: cannot write {checkpoints / step_name(4)} ({os.strerror(error_number)}); the last good "
                    f"checkpoint is step 2 ({checkpoints / LAST}); {fix.format(run_dir=run_dir)}, then continue with: "
                    f"ganrun train resume={run_dir}")
    assert _temp_files(run_dir) == []
    assert load_checkpoint(checkpoints / LAST)["progress"]["step"] == 2  # the good one, untouched


def test_a_full_disk_before_any_checkpoint_says_start_again(mnist_root, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _failing_torch_save(monkeypatch, succeed=0, error_number=errno.ENOSPC)
    code, _, err = cli(capsys, *_train_cli(mnist_root, run_dir))
    assert code == 1
    assert "no checkpoint of this run was saved yet; free space on that disk and start the run again" in _one_error_line(err)


def test_a_really_full_disk(mnist_root, tmp_path, capsys):
    probe = tmp_path / "probe"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2, "trainer.sample_every": 0}), probe)
    size = (probe / "checkpoints" / LAST).stat().st_size
    with _tmpfs(tmp_path / "small_disk", f"{int(2.5 * size) // 1024 + 64}k") as disk:  # room for two checkpoints
        run_dir = disk / "run"
        code, _, err = cli(capsys, *_train_cli(mnist_root, run_dir, **{"trainer.max_steps": 40, "trainer.keep_last": 5,
                                                                        "trainer.sample_every": 0}))
        assert code == 1, err
        line = _one_error_line(err)
        assert "(No space left on device); the last good checkpoint is step " in line
        assert line.endswith(f"free space on that disk, then continue with: ganrun train resume={run_dir}")
        assert _temp_files(run_dir) == []
        step = int(line.split("the last good checkpoint is step ")[1].split()[0])
        assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == step


def test_run_dir_made_read_only_mid_run(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    args = _train_cli(mnist_root, run_dir, **{"trainer.max_steps": 100000, "trainer.log_every": 1,
                                              "trainer.ckpt_every": 5, "trainer.sample_every": 0})
    process = subprocess.Popen([sys.executable, "-m", "ganrun", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        _wait_for((run_dir / "checkpoints" / LAST).is_file, 120)
        with _read_only(run_dir):
            _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1, err
    line = _one_error_line(err)
    # metrics.jsonl, a checkpoint, or (a write on a file opened before) the run dir as a whole
    assert line.startswith((f"error: cannot write {run_dir}/", f"error: cannot write to {run_dir} "))
    assert "(Operation not permitted)" in line or "(Permission denied)" in line
    assert f"make {run_dir} writable again, then continue with: ganrun train resume={run_dir}" in line
    step = int(line.split("the last good checkpoint is step ")[1].split()[0])
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == step >= 5
    # A write cut off by the change may leave its temp file (a read-only dir cannot lose it either);
    # its writer is dead, so the next start sweeps it.
    sweep_stale_temp_files(run_dir)
    assert _temp_files(run_dir) == []


def test_read_errors_outside_the_run_are_not_reported_as_failed_writes(tmp_path):
    from ganrun.loop.checkpoint import write_errors_as_one_line

    with pytest.raises(PermissionError):
        with write_errors_as_one_line(tmp_path / "run"):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "data" / "train.bin"))


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
