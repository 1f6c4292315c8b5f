"""Benchmark: one training step of every model family at 64x64, batch 64, on this machine; and
the image-to-image translation recipes (pix2pix, CycleGAN) at 64 and 128 px with their peak RSS.

    python scripts/bench_models.py [--steps 3] [--batch-size 64] [--models dcgan,sngan,...]
    python scripts/bench_models.py --translation [--steps 3]      # pix2pix / CycleGAN rows only

Each step is what the loop runs per step with default settings (recipe.train_step with its
own n_critic, EMA update, loss monitor), built from the real config tree with `model=NAME` on
64x64 RGB; a step counts one generator update, so WGAN's row includes its 5 critic steps.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import cpu_description, make_ganrun_step  # noqa: E402

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


# Translation rows: (experiment, crop size, batch size). Batch 1 is both papers' setting (instance
# norm, and BatchNorm that acts as instance norm at batch 1); 16 is what the 64-px demos use.
TRANSLATION_ROWS = [
    ("pix2pix", 64, 1), ("pix2pix", 64, 16), ("pix2pix", 128, 1), ("pix2pix", 128, 16),
    ("cyclegan", 64, 1), ("cyclegan", 64, 4), ("cyclegan", 128, 1), ("cyclegan", 128, 4),
]


def translation_step(experiment: str, size: int, batch_size: int, *, precision: str, steps: int) -> dict:
    """One row, measured in this (fresh) process: median s/step of recipe.train_step + EMA update
    on random {"A", "B"} batches, and the process's peak RSS (ru_maxrss) after the steps."""
    from hydra import compose, initialize_config_module

    from ganrun.config import build, choice, register_schemas
    from ganrun.hardware import choose_precision, cpu_supports_bf16, use_channels_last
    from ganrun.loop.ema import EMA
    from ganrun.recipes.base import Stepper

    register_schemas()
    overrides = [f"experiment={experiment}", f"dataset.crop_size={size}", f"dataset.load_size={size}",
                 f"trainer.batch_size={batch_size}", f"trainer.precision={precision}"]
    with initialize_config_module("ganrun.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    policy = choose_precision(choice(cfg.trainer.precision), device_type="cpu", cpu_bf16=cpu_supports_bf16())
    torch.manual_seed(0)
    recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    channels_last = use_channels_last(cfg.trainer.channels_last, *recipe.networks.values())
    recipe.to(torch.device("cpu"), channels_last=channels_last)
    recipe.train()
    ema = EMA(source=recipe.generator, half_life_kimg=cfg.trainer.ema.half_life_kimg, rampup=cfg.trainer.ema.rampup)
    stepper = Stepper(device_type="cpu", autocast_dtype=policy.autocast_dtype, optimizers=recipe.optimizers,
                      scalers={name: torch.amp.GradScaler("cpu", enabled=False) for name in recipe.optimizers})
    memory = torch.channels_last if channels_last else torch.contiguous_format
    batch = {key: (torch.rand(batch_size, 3, size, size) * 2 - 1).contiguous(memory_format=memory) for key in ("A", "B")}
    times = []
    for index in range(steps + 1):  # the first is a warm-up (allocator, oneDNN primitive caches)
        start = time.perf_counter()
        stepper.step_index = index
        recipe.train_step(batch, stepper)
        ema.update(recipe.generator, images_seen=(index + 1) * batch_size, batch_size=batch_size)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    counts = {name: sum(p.numel() for p in net.parameters()) for name, net in recipe.networks.items()}
    return {"seconds": seconds, "img_per_s": batch_size / seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "G_params": counts["G"], "D_params": counts["D"], "precision": policy.name}


def translation_table(*, precision: str, steps: int) -> None:
    """Each row in a process of its own, so its peak RSS is its own."""
    print(f"{'recipe':<10}{'px':>5}{'batch':>7}{'s/step':>9}{'img/s':>8}{'peak RSS':>10}{'G params':>10}{'D params':>10}  precision")
    for experiment, size, batch_size in TRANSLATION_ROWS:
        command = [sys.executable, __file__, "--translation-row", f"{experiment},{size},{batch_size}",
                   "--precision", precision, "--steps", str(steps)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            print(f"{experiment:<10}{size:>5}{batch_size:>7}  failed: {result.stderr.strip().splitlines()[-1]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"{experiment:<10}{size:>5}{batch_size:>7}{row['seconds']:9.3f}{row['img_per_s']:8.1f}{row['peak_rss_mb']:8.0f} MB"
              f"{row['G_params'] / 1e6:9.2f}M{row['D_params'] / 1e6:9.2f}M  {row['precision']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after 1 warm-up step)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated rows of the table")
    parser.add_argument("--translation", action="store_true", help="the pix2pix / CycleGAN table (64 and 128 px, peak RSS)")
    parser.add_argument("--translation-row", help=argparse.SUPPRESS)  # worker: one row, JSON out
    args = parser.parse_args()
    if args.translation_row:
        experiment, size, batch_size = args.translation_row.split(",")
        print(json.dumps(translation_step(experiment, int(size), int(batch_size), precision=args.precision, steps=args.steps)))
        return
    print(cpu_description())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    if args.translation:
        translation_table(precision=args.precision, steps=args.steps)
        return
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
