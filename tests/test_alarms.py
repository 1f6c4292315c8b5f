"""Collapse and divergence alarms: each fires once, after its window, on the scalars the loop logs."""

from __future__ import annotations

from ganrun.loop.alarms import Alarms, AlarmSettings


def feed(alarms: Alarms, rows: list[dict]) -> list[tuple[int, str]]:
    return [(step, message) for step, row in enumerate(rows, 1) for message in alarms.observe(step, row)]


def test_saturated_discriminator_fires_once_after_the_window_and_rearms():
    alarms = Alarms(settings=AlarmSettings(window=3, d_saturation=0.99))
    rows = [{"stat/D_acc_fake": 0.6}] * 2 + [{"stat/D_acc_fake": 1.0}] * 5 + [{"stat/D_acc_fake": 0.5}] + [{"stat/D_acc_fake": 0.995}] * 3
    fired = feed(alarms, rows)
    assert [step for step, _ in fired] == [5, 11]
    assert "D rejects 100.0% of fakes" in fired[0][1] and "loss=hinge" in fired[0][1]


def test_exploding_generator_loss_needs_both_the_factor_and_the_floor():
    alarms = Alarms(settings=AlarmSettings(window=1, g_loss_factor=10, g_loss_floor=5))
    rows = [{"loss/G/adv": 0.7}] * 5 + [{"loss/G/adv": 4.0}] + [{"loss/G/adv": 3.0, "loss/G/r1": 5.0}]
    fired = feed(alarms, rows)
    assert [step for step, _ in fired] == [7]  # 4.0 is under the floor; 3 + 5 = 8 > 10 x 0.7 and > 5
    assert "G loss 8" in fired[0][1]


def test_vanishing_gradients_are_judged_against_each_networks_own_peak():
    alarms = Alarms(settings=AlarmSettings(window=2, vanishing_ratio=1e-3))
    rows = [{"grad_norm/G": 2.0, "grad_norm/D": 0.01}] + [{"grad_norm/G": 1e-4, "grad_norm/D": 0.005}] * 3
    fired = feed(alarms, rows)
    assert len(fired) == 1 and fired[0][0] == 3 and fired[0][1].startswith("step 3: G's gradient norm")


def test_a_drop_in_modes_covered_fires_at_once():
    alarms = Alarms(settings=AlarmSettings(modes_drop=2))
    fired = feed(alarms, [{"modes/covered": 3.0}, {"modes/covered": 8.0}, {"modes/covered": 7.0}, {"modes/covered": 5.0}])
    assert [step for step, _ in fired] == [4] and "from a best of 8" in fired[0][1]


def test_state_survives_a_resume_and_disabled_alarms_stay_quiet():
    rows = [{"stat/D_acc_fake": 1.0}] * 2
    alarms = Alarms(settings=AlarmSettings(window=3))
    assert feed(alarms, rows) == []
    resumed = Alarms(settings=AlarmSettings(window=3))
    resumed.load_state_dict(alarms.state_dict())
    assert len(resumed.observe(3, {"stat/D_acc_fake": 1.0})) == 1
    assert feed(Alarms(settings=AlarmSettings(enabled=False, window=1)), rows) == []


def test_the_loop_reports_an_alarm_on_the_console(capsys, mnist_root):
    """Wiring: the loop logs D's accuracy on fakes and gradient norms, and an alarm reaches the console."""
    import json
    from pathlib import Path

    from conftest import run_train, tiny_overrides

    run_dir = Path("run")
    run_train(tiny_overrides(mnist_root, **{"trainer.alarms.d_saturation": 0.0, "trainer.alarms.window": 1}), run_dir)
    out = capsys.readouterr().out
    assert out.count("alarm:") == 1 and "D rejects" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [row for row in rows if "img_per_s" in row]
    assert all(0.0 <= row["stat/D_acc_fake"] <= 1.0 and row["grad_norm/G"] > 0 and row["grad_norm/D"] > 0 for row in logged)
