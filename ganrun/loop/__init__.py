"""The training loop and its parts: setup (build a run from config or checkpoint), the loop
(run.py), the run's state, checkpoints, EMA, tracking, alarms, signals, distributed helpers."""
