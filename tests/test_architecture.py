"""The house: layered packages checked by import-linter, no hidden function-local imports, every
RNG seeded, resume equal to an uninterrupted run in every tensor, tasks dispatched by config."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, compose_train, make_image_folder, run_train, tiny_overrides

from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint, upgrade_config
from ganrun.loop.rebuild import task_of

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# helpers


def _plain(value):
    """A checkpoint tree with Python's random state (nested tuples) as lists, for comparison."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _assert_every_tensor_equal(a, b, path="") -> int:
    """Recursively compare two checkpoints value for value; returns the number of tensors seen."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs"
        return 1
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        return sum(_assert_every_tensor_equal(a[key], b[key], f"{path}.{key}") for key in a)
    if isinstance(a, list):
        assert len(a) == len(b), path
        return sum(_assert_every_tensor_equal(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, f"{path}: {a!r} != {b!r}"
    return 0


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


# layers


def test_the_layer_contract_holds_and_catches_an_upward_import(tmp_path):
    kept = _lint_imports(REPO)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "broken" in kept.stdout and "0 broken" in kept.stdout

    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(REPO / "ganrun", copy / "ganrun", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    images = copy / "ganrun" / "data" / "images.py"
    images.write_text(images.read_text() + "\nfrom ganrun.loop import checkpoint  # upward: data -> loop\n")
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    assert "ganrun.data.images -> ganrun.loop.checkpoint" in broken.stdout


def test_no_function_local_import_of_ganrun_without_a_reason():
    unexplained = []
    for path in sorted((REPO / "ganrun").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").split(".")[0] == "ganrun":
                    if "#" not in lines[inner.lineno - 1]:
                        unexplained.append(f"{path.relative_to(REPO)}:{inner.lineno}")
    assert unexplained == []


# seeding and resume


def test_two_runs_with_one_seed_and_a_split_run_equal_in_every_tensor(mnist_root, tmp_path):
    settings = {"trainer.max_steps": 10, "trainer.ckpt_every": 5, "trainer.sample_every": 0}
    first, second = tmp_path / "first", tmp_path / "second"
    run_train(tiny_overrides(mnist_root, **settings), first)
    run_train(tiny_overrides(mnist_root, **settings), second)
    a = _plain(load_checkpoint(first / "checkpoints" / LAST))
    b = _plain(load_checkpoint(second / "checkpoints" / LAST))
    assert _assert_every_tensor_equal(a, b) > 20  # weights, optimizer moments, EMA, grid, RNG states
    # numpy's and Python's generators are seeded too: the same state in both runs, not a fresh one
    assert a["rng"][0]["numpy"]["keys"].tolist() == b["rng"][0]["numpy"]["keys"].tolist()
    assert a["rng"][0]["python"] == b["rng"][0]["python"]

    straight, split = tmp_path / "straight", tmp_path / "split"
    long = {"trainer.max_steps": 12, "trainer.ckpt_every": 6, "trainer.sample_every": 0, "trainer.log_every": 3}
    run_train(tiny_overrides(mnist_root, **long), straight)
    run_train(tiny_overrides(mnist_root, **{**long, "trainer.max_steps": 6}), split)
    run_train([*tiny_overrides(mnist_root, **long), f"resume={split}", "trainer.max_steps=12"], split)
    a = _plain(load_checkpoint(straight / "checkpoints" / LAST))
    b = _plain(load_checkpoint(split / "checkpoints" / LAST))
    # no tensors: the resumed config records resume=, and the checksum covers the config too
    for key in ("config", "checksum"):
        del a[key], b[key]
    assert _assert_every_tensor_equal(a, b) > 20


def test_seed_sets_numpy_and_python_random(mnist_root, tmp_path):
    import random

    from ganrun.loop.state import seed_everything

    seed_everything(123)
    first = (torch.rand(1).item(), np.random.rand(), random.random())
    seed_everything(123)
    assert (torch.rand(1).item(), np.random.rand(), random.random()) == first


# tasks


def test_the_task_comes_from_the_config_and_datasets_select_theirs():
    assert compose_train([]).task.name == "generation"
    sr = compose_train(["dataset=paired_sr", "model=srresnet", "dataset.hr_dir=x"])
    assert sr.task.name == "super_resolution"
    assert type(task_of(sr)).__name__ == "SuperResolutionTask"
    toy = compose_train(["dataset=ring8"])
    assert toy.model.G._target_ == "ganrun.models.mlp.Generator"  # toy points select an MLP
    assert compose_train(["dataset=ring8", "model=dcgan"]).model.G._target_ == "ganrun.models.dcgan.Generator"


def test_data_of_another_task_is_refused_in_one_line(tmp_path):
    with pytest.raises(GanrunError, match=r"this dataset holds 2-D points, not images; use model=mlp"):
        run_train(["dataset=ring8", "model=dcgan", "trainer.max_steps=1", "logger.mode=disabled"], tmp_path / "toy")
    photos = make_image_folder(tmp_path / "photos", count=2, size=(48, 48))
    sr_data_for_generation = ["task=generation", "dataset=paired_sr", f"dataset.hr_dir={photos}", "dataset.hr_patch=24",
                              "model=srresnet", "model.G.blocks=1", "model.G.width=8", "trainer.max_steps=1", "logger.mode=disabled"]
    with pytest.raises(GanrunError, match=r"^dataset=paired_sr is paired_sr data, which task=generation does not train on"):
        run_train(sr_data_for_generation, tmp_path / "sr")
    assert [path.name for path in (tmp_path / "sr").iterdir()] == [".lock"]  # refused before any output


def test_checkpoints_saved_before_tasks_existed_still_name_their_task():
    old_toy = {"dataset": {"_target_": "ganrun.toy.load_ring"}, "model": {"_target_": "ganrun.recipes.gan.GANRecipe"}}
    upgraded = upgrade_config(old_toy)
    assert upgraded["dataset"]["_target_"] == "ganrun.data.load_ring"
    assert upgraded["task"]["name"] == "generation"
    old_sr = {"dataset": {"_target_": "ganrun.sr.load_paired_sr"}, "model": {"_target_": "ganrun.recipes.sr.SRRecipe"}}
    assert upgrade_config(old_sr)["task"]["name"] == "super_resolution"
    assert upgrade_config(old_sr)["dataset"]["_target_"] == "ganrun.data.load_paired_sr"
