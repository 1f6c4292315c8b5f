"""Messages that state what is true and the fix that applies (#14 case 8), and side work that
never costs a run (#14 case 5: a failing evaluation is reported, training goes on)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_train, tiny_overrides

from ganrun.errors import TrainingDiverged
from ganrun.loop.checkpoint import LAST, load_checkpoint
from ganrun.loop.monitor import LossMonitor


def _poison_g_loss(monkeypatch, *, from_call: int) -> None:
    from ganrun import losses

    original = losses.NonSaturatingLoss.g_loss
    calls = {"n": 0}

    def poisoned(self, D, fake, **options):
        calls["n"] += 1
        terms = original(self, D, fake, **options)
        if calls["n"] >= from_call:
            terms["adv"] = terms["adv"] * float("nan")
        return terms

    monkeypatch.setattr(losses.NonSaturatingLoss, "g_loss", poisoned)


def test_divergence_before_the_first_checkpoint_says_there_is_none(mnist_root, tmp_path, monkeypatch):
    _poison_g_loss(monkeypatch, from_call=1)
    settings = {"trainer.max_steps": 6, "trainer.log_every": 2, "trainer.ckpt_every": 4, "trainer.precision": "fp32"}
    with pytest.raises(TrainingDiverged) as error:
        run_train(tiny_overrides(mnist_root, **settings), tmp_path / "run")
    message = str(error.value)
    assert message == "loss/G/adv became non-finite at step 1; training stopped, no checkpoint was written yet. Lower optim.lr"
    assert not (tmp_path / "run" / "checkpoints" / LAST).exists()


def test_divergence_after_a_checkpoint_names_its_step(mnist_root, tmp_path, monkeypatch):
    _poison_g_loss(monkeypatch, from_call=3)
    settings = {"trainer.max_steps": 6, "trainer.log_every": 10, "trainer.ckpt_every": 2, "trainer.precision": "fp32"}
    with pytest.raises(TrainingDiverged, match=r"at step 3; training stopped, the checkpoint of step 2 is kept\. Lower optim\.lr$"):
        run_train(tiny_overrides(mnist_root, **settings), tmp_path / "run")


def test_fp32_advice_only_for_runs_that_were_not_fp32():
    for precision, advice in (("bf16", True), ("fp16", True), ("fp32", False)):
        monitor = LossMonitor(precision=precision)
        monitor.add(1, {"G/adv": torch.tensor(float("inf"))})
        with pytest.raises(TrainingDiverged) as error:
            monitor.raise_if_nonfinite(last_checkpoint_step=None)
        assert ("try trainer.precision=fp32" in str(error.value)) is advice
        if advice:
            assert f"(this run used {precision})" in str(error.value)


def test_a_failing_evaluation_is_reported_and_training_goes_on(mnist_root, tmp_path, monkeypatch, capsys):
    from ganrun.tasks import generation

    def broken(self, recipe, G, *, step):
        raise OSError("image file is truncated (6 bytes not processed)")

    monkeypatch.setattr(generation.FIDEvaluator, "measure", broken)
    run_dir = tmp_path / "run"
    result = run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 4, "eval.every": 2, "eval.num_samples": 8}), run_dir)
    assert result.step == 4
    assert load_checkpoint(run_dir / "checkpoints" / LAST)["progress"]["step"] == 4
    out = capsys.readouterr().out
    assert "eval at step 2 failed (image file is truncated (6 bytes not processed)); training goes on" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row.get("eval/failed") == 1.0] == [2, 4]


def test_sample_and_eval_typos_and_training_groups_are_one_line(capsys):
    from conftest import cli

    for args, expected in (
        (("sample", "ckpt=/nowhere", "nn=4"), "error: unknown config key 'nn'; see `ganrun sample --help` for every key"),
        (("eval", "ckpt=/nowhere", "num_sample=500"),
         "error: unknown config key 'num_sample' (did you mean 'num_samples'?); see `ganrun eval --help` for every key"),
        (("sample", "ckpt=/nowhere", "model=vae"),
         "error: model= is a training option; ganrun sample takes the model, data and losses from the checkpoint"),
    ):
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.startswith(expected) and len(err.strip().splitlines()) == 1, (args, err)


def test_a_resume_says_what_it_changed(mnist_root, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_train(tiny_overrides(mnist_root, **{"trainer.max_steps": 2}), run_dir)
    capsys.readouterr()
    run_train([*tiny_overrides(mnist_root), f"resume={run_dir}", "trainer.max_steps=3", "optim.lr=1e-4"], run_dir)
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("changed on resume: "))
    assert "optim.lr 0.0002 -> 0.0001" in line and "trainer.max_steps 2 -> 3" in line


def test_eval_names_both_missing_folders_at_once(capsys, tmp_path):
    from conftest import cli

    code, _, err = cli(capsys, "eval", f"real={tmp_path / 'a'}", f"fake={tmp_path / 'b'}")
    assert code == 2
    assert err.strip() == (f"error: real={tmp_path / 'a'} is not a folder (does not exist); "
                           f"fake={tmp_path / 'b'} is not a folder (does not exist); pass existing folders")
