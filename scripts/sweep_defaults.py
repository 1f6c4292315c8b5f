"""The sweep behind the MNIST defaults (#16 item 2): quality per CPU-minute of one change at a time.

    python scripts/sweep_defaults.py                       # 2.5 minutes each, the README's table
    python scripts/sweep_defaults.py --minutes 0.2 --samples 200 --only base   # smoke

Each setting trains `ganrun train dataset.root=ROOT` with one change from the defaults, on a
wall-clock budget (`trainer.max_time`; `trainer.max_steps` out of reach), one after the other with
nothing else running, then `ganrun eval ckpt=RUN num_samples=N` (G_ema vs the first N test digits).
Quality per CPU-minute is what a budget buys, so the comparison is at equal wall clock, not at equal
steps: a cheaper network takes more steps. FID from fewer than 2,048 samples reads high and compares
only within one table. Prints a table with the CPU (model, flags) it ran on; asserts nothing.

Settings are relative to the current defaults, so after a change of default the "base" row is the
new default. `--set NAME=OVERRIDES` (overrides separated by spaces) adds or replaces a row.
Hydra's multirun (`ganrun train -m`) sweeps a grid; this is a list of single changes, the form a
defaults study takes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_quality import hydra_quoted  # noqa: E402
from bench_train import cpu_description  # noqa: E402

# The rows of the README's table, relative to today's defaults (width 16 at 28 px for time budgets of up
# to 5 minutes, 64 beyond: ganrun/config.py dcgan_width): the first four rows there were measured when the
# default was width 64, as "width 64 ..." here, the rest at width 32. At --minutes over 5, "base" is width 64.
WIDTH_64 = ["model.G.width=64", "model.D.width=64"]
SETTINGS = {
    "base": [],
    "width 64": WIDTH_64,
    "width 64, lr 5e-4": [*WIDTH_64, "optim.lr=5e-4"],
    "width 64, batch 128, lr 4e-4": [*WIDTH_64, "trainer.batch_size=128", "optim.lr=4e-4"],
    "D lr 1e-4": ["optim.D.lr=1e-4"],
    "G lr 4e-4": ["optim.G.lr=4e-4"],
    "R1 0.2 every 4": ["loss.r1_gamma=0.2", "loss.r1_every=4"],
}
# The README's second table (`--minutes 5 --only base "G lr 4e-4" ...`): changes stacked on G at 4e-4,
# the best single change above, then on G 4e-4 with a 50-kimg EMA.
G4 = ["optim.G.lr=4e-4"]
G4_EMA50 = [*G4, "trainer.ema.half_life_kimg=50"]
SETTINGS |= {
    "G4 ema50": G4_EMA50,
    "G4 ema100": [*G4, "trainer.ema.half_life_kimg=100"],
    "G4 hinge": [*G4, "loss=hinge"],
    "G4 batch 32": [*G4, "trainer.batch_size=32"],
    "G4 ema50 width 64": [*G4_EMA50, *WIDTH_64],
    # total_steps near the step 5 minutes reach on the CPU measured (README): the decay ends with the budget
    "G4 ema50 decay": [*G4_EMA50, "optim.decay=linear", "optim.decay_start=0.5", "optim.total_steps=11200"],
    "G4 ema50 compile": [*G4_EMA50, "trainer.compile=true"],
    # The README's fourth table (--minutes 10 --samples 10000): the decay ends near the step 10 minutes reach
    "G4 ema50 decay20k": [*G4_EMA50, "optim.decay=linear", "optim.decay_start=0.5", "optim.total_steps=20000"],
}
# The README's fifth table (--minutes 10 --samples 10000): InfoGAN's 1024-unit fully connected layers, measured
# when the 28-px default had none (first row, with `+optim.G.fused=true +optim.D.fused=true`, before Adam was
# fused by default), then the 28-px default (ganrun/config.py dcgan_hidden); "no fc" is the network before it.
FC1024 = ["model.G.hidden=1024", "model.D.hidden=1024"]
NO_FC = ["model.G.hidden=0", "model.D.hidden=0"]
SETTINGS |= {
    "G4 ema50 fc1024": [*G4_EMA50, *FC1024],
    "no fc": NO_FC,
    "no fc G4 ema50": [*G4_EMA50, *NO_FC],
}
# The README's sixth table (--minutes 3 --samples 1000; an AVX2 EPYC, fp32), in today's terms: G at 4e-4 (the
# "G lr 4e-4" rows above now change nothing) and, for 5 minutes or less, width 16 ("base" at --minutes 3). Its
# rows were measured from width 32 with G and D at 2e-4, before both became the default.
WIDTH_32 = ["model.G.width=32", "model.D.width=32"]
G2 = ["optim.G.lr=2e-4"]
SETTINGS |= {
    "width 32 G2": [*WIDTH_32, *G2],
    "width 32": WIDTH_32,
    "width 32 no fc G2": [*WIDTH_32, *NO_FC, *G2],
    "width 32 no fc": [*WIDTH_32, *NO_FC],
}


def run(name: str, overrides: list[str], *, root: Path, out: Path, seconds: float, samples: int, threads: int) -> dict:
    run_dir = out / name.replace(" ", "_").replace(",", "")
    ganrun = [sys.executable, "-m", "ganrun"]
    train = [*ganrun, "train", f"dataset.root={hydra_quoted(root)}", f"trainer.max_time={seconds:g}", "trainer.max_steps=100000000",
             "logger.mode=disabled", f"trainer.num_threads={threads}", f"hydra.run.dir={hydra_quoted(run_dir)}", *overrides]
    print(f"{name}: {shlex.join(train[2:])}", file=sys.stderr, flush=True)
    for command in (train, [*ganrun, "eval", f"ckpt={hydra_quoted(run_dir)}", f"num_samples={samples}"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{name}: `{shlex.join(command[2:])}` exited with {result.returncode}:\n{result.stderr[-2000:]}")
    measured = json.loads((run_dir / "checkpoints" / "eval.json").read_text())["last.pt"]
    return {"name": name, "overrides": overrides, "step": measured["step"], **measured["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.5, help="wall-clock budget of each setting (default 2.5)")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding MNIST/raw")
    parser.add_argument("--samples", type=int, default=2000, help="generated and reference images for FID/KID (default 2,000)")
    parser.add_argument("--threads", type=int, default=2, help="trainer.num_threads of every run (default 2)")
    parser.add_argument("--only", nargs="*", help="these settings only (names as in the table)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=OVERRIDES", help="add or replace a setting")
    parser.add_argument("--out", type=Path, default=Path("sweep_defaults"), help="run dirs go here (default ./sweep_defaults)")
    args = parser.parse_args()
    settings = dict(SETTINGS)
    for item in args.set:
        name, separator, overrides = item.partition("=")
        if not separator:
            parser.error(f"--set {item!r}: write NAME=OVERRIDES, e.g. --set 'lr 1e-4=optim.lr=1e-4'")
        settings[name] = overrides.split()
    if args.only:
        unknown = [name for name in args.only if name not in settings]
        if unknown:
            parser.error(f"--only {unknown}: not a setting; the settings are {list(settings)}")
        settings = {name: settings[name] for name in args.only}
    rows = [run(name, overrides, root=args.root.resolve(), out=args.out.resolve(), seconds=args.minutes * 60,
                samples=args.samples, threads=args.threads) for name, overrides in settings.items()]
    print(f"CPU: {cpu_description()}; {args.threads} threads; {args.minutes:g} min each; "
          f"FID/KID: {args.samples:,} G_ema samples vs {args.samples:,} MNIST test digits")
    print("| setting | overrides | steps | FID | KID |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['name']} | {' '.join(row['overrides']) or '(defaults)'} | {row['step']:,} | {row['fid']:.2f} | "
              f"{row['kid_mean']:.4f} |")


if __name__ == "__main__":
    main()
