"""The loop end to end: training, bit-identical resume, checkpoints, divergence, samples."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_image_folder, make_mnist, run_train, tiny_overrides
from fixtures_data import make_cifar
from PIL import Image

from ganrun.errors import GanrunError, TrainingDiverged
from ganrun.loop.checkpoint import FORMAT, LAST, atomic_save, load_checkpoint, numbered_checkpoints, write_checkpoint


def _tensors_equal(a, b, path="") -> None:
    """Recursively assert two checkpoint trees are identical, value for value."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (max abs diff {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for key in a:
            _tensors_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for index, (x, y) in enumerate(zip(a, b)):
            _tensors_equal(x, y, f"{path}[{index}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


# training on each dataset kind


@pytest.mark.parametrize("kind", ["mnist", "fashion_mnist", "cifar10", "image_folder", "celeba"])
def test_two_steps_on_each_dataset_kind(kind, tmp_path):
    data_root = tmp_path / "data"
    extra: dict = {"trainer.max_steps": 2, "trainer.sample_every": 2, "trainer.ckpt_every": 2}
    if kind == "mnist":
        make_mnist(data_root)
    elif kind == "fashion_mnist":
        make_mnist(data_root, folder="FashionMNIST")
    elif kind == "cifar10":
        make_cifar(data_root)
    elif kind == "image_folder":
        make_image_folder(data_root / "nested" / "deeper", count=12)
        extra["dataset.resolution"] = 32
    else:
        make_image_folder(data_root / "celeba" / "img_align_celeba", count=12, size=(89, 109))
        extra["dataset.resolution"] = 32
    overrides = [f"dataset={kind}", *tiny_overrides(data_root, **extra)]
    if kind != "mnist":  # only MNIST has an offline fallback; folders download nothing
        overrides = [o for o in overrides if not o.startswith("dataset.fallback")]
    if kind in ("image_folder", "celeba"):
        overrides = [o for o in overrides if not o.startswith("dataset.download")]
    run_dir = tmp_path / "run"
    result = run_train(overrides, run_dir)

    assert result.step == 2
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert checkpoint["progress"] == {"step": 2, "images_seen": 16}
    assert checkpoint["config"]["dataset"]["name"] == kind
    assert str(data_root) in checkpoint["config"]["dataset"]["source"]
    grid = Image.open(run_dir / "samples" / "step_0000002.png")
    resolution = 28 if "mnist" in kind else 32  # cifar10's default, and the folders' override
    assert grid.size == (2 * resolution + 6, 2 * resolution + 6)  # 2x2 grid, 2-pixel padding
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [2]
    assert {"loss/D/real", "loss/D/fake", "loss/G/adv", "img_per_s"} <= set(rows[0])
    assert all(np.isfinite(rows[0][key]) for key in ("loss/D/real", "loss/D/fake", "loss/G/adv"))
    saved_config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "source:" in saved_config and "${" not in saved_config  # resolved, with the data source


# resume


def test_resume_is_bit_identical_to_an_uninterrupted_run(mnist_root, tmp_path):
    full = tmp_path / "full"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 8, "trainer.sample_every": 4, "trainer.ckpt_every": 4}), full)

    halves = tmp_path / "halves"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 4, "trainer.sample_every": 4, "trainer.ckpt_every": 4}), halves)
    resume_overrides = [f"resume={halves}", "trainer.max_steps=8"]
    run_train([*tiny_overrides(mnist_root, **{"trainer.sample_every": 4, "trainer.ckpt_every": 4}), *resume_overrides], halves)

    a = load_checkpoint(full / "checkpoints" / LAST)
    b = load_checkpoint(halves / "checkpoints" / LAST)
    assert a["progress"] == b["progress"] == {"step": 8, "images_seen": 64}
    for key in ("recipe", "G_ema", "scalers", "data", "rng", "grid"):
        _tensors_equal(a[key], b[key], key)
    grid_a = np.asarray(Image.open(full / "samples" / "step_0000008.png"))
    grid_b = np.asarray(Image.open(halves / "samples" / "step_0000008.png"))
    assert np.array_equal(grid_a, grid_b)
    # metrics rows: one per log point, none duplicated by the resume
    steps = [json.loads(line)["step"] for line in (halves / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_resume_applies_overrides_and_keeps_the_rest(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"optim.lr": 1e-3}), run_dir)
    run_train([f"resume={run_dir / 'checkpoints' / 'step_0000004.pt'}", "trainer.max_steps=6"], run_dir)
    config = load_checkpoint(run_dir / "checkpoints" / LAST)["config"]
    assert config["trainer"]["max_steps"] == 6
    assert config["optim"]["lr"] == 1e-3 and config["model"]["G"]["width"] == 8  # from the checkpoint, not defaults


def test_resume_of_a_different_model_is_refused(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root), run_dir)
    with pytest.raises(GanrunError, match=r"different model \(model\.G differs"):
        run_train([f"resume={run_dir}", "model.G.width=16"], run_dir)


# checkpoint files


def test_checkpoint_holds_everything_a_resume_needs(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.keep_last": 1}), run_dir)
    checkpoint = torch.load(run_dir / "checkpoints" / LAST, weights_only=True)  # loads with the safe unpickler
    assert checkpoint["format"] == FORMAT
    assert set(checkpoint["recipe"]["networks"]) == {"G", "D"}
    assert set(checkpoint["recipe"]["optimizers"]) == {"G", "D"}
    assert checkpoint["recipe"]["optimizers"]["G"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert set(checkpoint["rng"][0]) >= {"python", "numpy", "torch"}
    assert checkpoint["data"] == {"epoch": 0, "position": 4}
    assert "run_id" in checkpoint["tracker"] and "ganrun_version" in checkpoint
    assert [p.name for p in numbered_checkpoints(run_dir / "checkpoints")] == ["step_0000004.pt"]  # keep_last=1


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"format": FORMAT, "value": torch.ones(3)}, target)

    def broken_save(payload, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": FORMAT, "value": torch.zeros(3)}, target)
    assert torch.equal(load_checkpoint(target)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_write_checkpoint_prunes_to_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint({"format": FORMAT, "step": step}, tmp_path, step=step, keep_last=2)
    assert [p.name for p in numbered_checkpoints(tmp_path)] == ["step_0000003.pt", "step_0000004.pt"]
    assert load_checkpoint(tmp_path / LAST)["step"] == 4


def test_truncated_and_foreign_checkpoints_get_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    atomic_save({"format": FORMAT, "weights": torch.randn(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(GanrunError, match="truncated or corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(GanrunError, match="not a ganrun checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(GanrunError, match="not a ganrun checkpoint"):
        load_checkpoint(text)


# divergence


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(mnist_root, tmp_path, monkeypatch):
    from ganrun import losses

    original = losses.NonSaturatingLoss.g_loss
    calls = {"n": 0}

    def poisoned(self, D, fake, **options):
        calls["n"] += 1
        terms = original(self, D, fake, **options)
        if calls["n"] >= 3:
            terms["adv"] = terms["adv"] * float("nan")
        return terms

    monkeypatch.setattr(losses.NonSaturatingLoss, "g_loss", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss/G/adv became non-finite at step 3"):
        run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 6, "trainer.log_every": 10}), run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert checkpoint["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["recipe"]["networks"]["G"].values() if v.is_floating_point())
