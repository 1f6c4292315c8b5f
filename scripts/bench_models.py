"""Benchmark: one training step of every model family at 64x64, batch 64, on this machine.

    python scripts/bench_models.py [--steps 3] [--batch-size 64] [--models dcgan,sngan,...]

Each step is what the loop runs per step with default settings (recipe.train_step with its
own n_critic, EMA update, loss monitor), built from the real config tree with `model=NAME` on
64x64 RGB; a step counts one generator update, so WGAN's row includes its 5 critic steps.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_ganrun_step  # noqa: E402

# model -> the overrides its row uses (the model's own loss and optimizer defaults otherwise)
MODELS = {
    "mlp": [],
    "dcgan": [],
    "dcgan conditional": ["conditional=true", "dataset.num_classes=10"],
    "wgan": [],
    "dcgan + wgan_gp": ["loss=wgan_gp"],
    "sngan": ["loss=hinge"],
    "sagan": [],
    "bigan": [],
    "vae": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after 1 warm-up step)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated rows of the table")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    images = torch.randint(0, 256, (1024, 3, 64, 64), dtype=torch.uint8)
    labels_needed = torch.randint(0, 10, (1024,))
    print(f"{'model':<20}{'s/step':>9}{'img/s':>9}{'G params':>11}{'D/E params':>12}  settings")
    for row in args.models.split(","):
        name = row.split()[0]
        overrides = (f"model={name}", *MODELS[row])
        step, settings = make_ganrun_step(images, args.batch_size, precision=args.precision, extra_overrides=overrides,
                                          labels=labels_needed if "conditional=true" in overrides else None)
        step()  # warm-up: allocator and oneDNN primitive caches
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        networks = step.recipe.networks
        counts = {key: sum(p.numel() for p in net.parameters()) for key, net in networks.items()}
        generator_params = counts.pop(step.recipe.generator_name)
        print(f"{row:<20}{seconds:9.2f}{args.batch_size / seconds:9.1f}{generator_params / 1e6:10.2f}M"
              f"{sum(counts.values()) / 1e6:11.2f}M  {settings}, n_critic {step.recipe.batches_per_step}")


if __name__ == "__main__":
    main()
