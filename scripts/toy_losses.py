"""Compare GAN losses on the ring of 8 Gaussians: the same MLP, data, optimizer and number of
G steps for each loss; prints modes covered (of 8), high-quality samples and wall time.

    python scripts/toy_losses.py                         # every loss, 2,000 G steps each
    python scripts/toy_losses.py --steps 500 --losses hinge wgan_gp
    python scripts/toy_losses.py -- dataset=grid25       # extra overrides go to every run

Each run goes through the real loop (`ganrun.training.train`), so the numbers are what
`ganrun train model=mlp dataset=ring8 loss=LOSS` logs as modes/covered and modes/high_quality
(from 2,500 G_ema samples at the last step). The settings below (MLP 3x64, z 4, Adam lr 1e-3,
betas (0.5, 0.9), batch 256) are those of the wgan_gp acceptance test in tests/test_toy.py,
for every loss; wgan and wgan_gp take their 5 critic steps per G step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from ganrun.config import register_schemas
from ganrun.training import train

MODES = {"ring8": 8, "grid25": 25}
LOSSES = ["minimax", "bce", "lsgan", "hinge", "wgan", "wgan_gp"]
SETTINGS = {
    "model": "mlp",
    "dataset": "ring8",
    "model.z_dim": 4,
    "model.G.hidden": 64,
    "model.D.hidden": 64,
    "optim.lr": 1e-3,
    "optim.G.betas": "[0.5,0.9]",
    "optim.D.betas": "[0.5,0.9]",
    "trainer.batch_size": 256,
    "trainer.precision": "fp32",
    "trainer.num_workers": 0,
    "trainer.grid_size": 512,
    "logger.mode": "disabled",
}


def run_one(loss: str, *, steps: int, seed: int, extra: list[str], out: Path) -> dict:
    overrides = [f"{key}={value}" for key, value in SETTINGS.items()] + [
        f"loss={loss}",
        f"trainer.max_steps={steps}",
        f"trainer.seed={seed}",
        f"trainer.log_every={max(1, steps // 10)}",
        f"trainer.sample_every={steps}",
        f"trainer.ckpt_every={steps}",
        *extra,
    ]
    with initialize_config_module("ganrun.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    run_dir = out / loss
    started = time.perf_counter()
    train(cfg, run_dir=run_dir, overrides=overrides)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [row for row in rows if "modes/covered" in row][-1]
    return {"loss": loss, "covered": int(final["modes/covered"]), "high_quality": final["modes/high_quality"], "seconds": seconds,
            "plot": run_dir / "samples" / f"step_{steps:07d}.png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="G steps per loss (default 2000)")
    parser.add_argument("--losses", nargs="+", default=LOSSES, choices=LOSSES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny MLPs run fastest on 1)")
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run, after --")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    register_schemas()
    out = args.out or Path(tempfile.mkdtemp(prefix="toy_losses_"))
    results = []
    for loss in args.losses:
        print(f"training loss={loss} for {args.steps} G steps ...", file=sys.stderr, flush=True)
        results.append(run_one(loss, steps=args.steps, seed=args.seed, extra=args.overrides, out=out))
    dataset = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("dataset=")), SETTINGS["dataset"])
    print(f"\ndataset={dataset}, model=mlp, {args.steps} G steps, batch {SETTINGS['trainer.batch_size']}, seed {args.seed} (runs in {out})\n")
    print(f"| loss | modes covered (of {MODES.get(dataset, '?')}) | high-quality % | seconds |")
    print("|---|---|---|---|")
    for result in results:
        print(f"| {result['loss']} | {result['covered']} | {100 * result['high_quality']:.1f} | {result['seconds']:.0f} |")
    print("\nscatter plots: " + ", ".join(str(result["plot"]) for result in results))


if __name__ == "__main__":
    main()
