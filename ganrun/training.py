"""The one training loop. It knows steps, precision, EMA, logging, sampling, checkpoints,
resume and signals; it never knows which GAN family it trains (that is the recipe's job).
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ganrun import __version__
from ganrun.config import AlarmSettings
from ganrun.loop.alarms import Alarms
from ganrun.loop.checkpoint import (  # run integrity (#15): save_checkpoint_file, write_errors_as_one_line
    FORMAT,
    capture_rng,
    load_checkpoint,
    resolve_checkpoint_path,
    restore_rng,
    save_checkpoint_file,
    write_checkpoint,
    write_errors_as_one_line,
)
from ganrun.config import TrainConfig, build, choice, to_plain, validate_train_config
from ganrun.data import ImageData
from ganrun.loop import distributed
from ganrun.loop.ema import EMA
from ganrun.loop.lock import RunLock, describe_sweep, sweep_stale_temp_files  # run integrity (#15)
from ganrun.errors import GanrunError, TrainingDiverged
from ganrun.evaluation import TrainingEvaluator
from ganrun.hardware import choose_device, choose_precision, cpu_supports_bf16, describe, use_channels_last
from ganrun.recipes.base import Recipe, Stepper
from ganrun.loop.tracking import Tracker, truncate_metrics

# helpers


@dataclass
class Progress:
    """Loop counters, checkpointed as they are."""

    step: int = 0
    images_seen: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.images_seen = int(state["step"]), int(state["images_seen"])


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    stopped_by_signal: Optional[int] = None


class LossMonitor:
    """Averages loss terms between log points and remembers the first non-finite one.

    Everything stays on the device; the host syncs only at log and checkpoint boundaries.
    """

    NEVER = 2**62

    def __init__(self) -> None:
        self.names: list[str] = []
        self.sums: Optional[torch.Tensor] = None
        self.first_bad: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        values = torch.stack([value.float() for value in terms.values()])
        if self.sums is None:
            self.names = list(terms)
            self.sums = torch.zeros_like(values)
            self.first_bad = torch.full(values.shape, self.NEVER, dtype=torch.long, device=values.device)
        finite = torch.isfinite(values)
        self.sums += torch.where(finite, values, torch.zeros_like(values))
        self.first_bad = torch.where(finite, self.first_bad, self.first_bad.clamp(max=step))
        self.count += 1

    def raise_if_nonfinite(self) -> None:
        if self.first_bad is None:
            return
        first_bad = distributed.all_reduce(self.first_bad.clone(), op="min")
        step = int(first_bad.min())
        if step < self.NEVER:
            term = self.names[int(first_bad.argmin())]
            raise TrainingDiverged(
                f"loss/{term} became non-finite at step {step}; training stopped, the last good "
                "checkpoint is kept. Lower optim.lr, or try trainer.precision=fp32"
            )

    def flush(self) -> dict[str, float]:
        if self.sums is None or self.count == 0:
            return {}
        means = distributed.all_reduce(self.sums.clone()) / (self.count * _world_size())
        self.sums.zero_()
        self.count = 0
        return {_scalar_key(name): float(value) for name, value in zip(self.names, means.tolist())}


def _scalar_key(name: str) -> str:
    """Loss terms are logged as loss/NET/term; statistics and gradient norms under their own names."""
    return name if name.startswith(("stat/", "grad_norm/")) else f"loss/{name}"


def _world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


class StopSignals:
    """SIGINT/SIGTERM ask for a checkpoint and a clean exit at the next step boundary; a second
    SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handlers
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self) -> bool:
        flag = torch.tensor([1 if self.received is not None else 0])
        if torch.distributed.is_initialized():  # every rank must stop at the same step
            distributed.all_reduce(flag, op="max")
            if flag.item() and self.received is None:
                self.received = signal.SIGTERM
        return bool(flag.item())


def merge_resume_config(saved: dict, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's config with the command line's overrides applied on top.

    Values come from the freshly composed config, so they are typed and validated by the
    schema; group overrides (`dataset=celeba`) replace the whole group node.
    """
    config = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key == "resume":
            continue
        if key.split("/")[0] in ("experiment", "debug"):
            raise GanrunError(f"resume takes value overrides such as trainer.max_steps=N, not {key}=...; start a new run for {key}")
        key = key.replace("/", ".")
        if override.is_delete():
            raise GanrunError(f"cannot delete '{key}' when resuming; start a new run instead")
        OmegaConf.update(config, key, OmegaConf.select(composed, key), merge=False, force_add=True)
    config.resume = composed.resume
    return config


def check_same_model(saved: dict, config: DictConfig, path: Path) -> None:
    saved_model, model = saved.get("model", {}), to_plain(config)["model"]
    if saved_model != model:
        differences = [
            key for key in sorted(set(saved_model) | set(model)) if saved_model.get(key) != model.get(key)
        ]
        raise GanrunError(
            f"{path} is a checkpoint of a different model (model.{differences[0]} differs: "
            f"{_short(saved_model.get(differences[0]))} in the checkpoint, {_short(model.get(differences[0]))} asked); "
            "drop the model overrides to resume, or start a new run"
        )


def _short(value: object) -> str:
    if isinstance(value, dict) and "_target_" in value:
        return str(value["_target_"])
    return repr(value)


def initialize_generator(recipe: Recipe, init_from: str) -> None:
    """`init_from=`: a new run whose generator starts from another checkpoint's G_ema (e.g. SRGAN
    from its SRResNet warm-up); optimizers, step and everything else start fresh."""
    path = resolve_checkpoint_path(init_from)
    try:
        recipe.generator.load_state_dict(load_checkpoint(path)["G_ema"])
    except (RuntimeError, KeyError) as error:
        raise GanrunError(
            f"init_from={init_from}: its generator does not fit model.{recipe.generator_name} "
            f"({str(error).splitlines()[0]}); use a checkpoint of the same generator settings"
        ) from None


def _grid_rows(n: int) -> int:
    return max(1, int(math.sqrt(n)))


# the loop


def train(cfg: DictConfig, *, run_dir: Path, overrides: list[str] = ()) -> TrainResult:
    # run integrity (#15): rank 0 holds RUN/.lock for the whole run (a second process on this
    # run dir stops at once, exit 2), sweeps temp files that crashed saves left, and a failed
    # write into the run (disk full, read-only) becomes one line with the resume command (exit 1).
    if not distributed.DistributedContext.from_env().is_main:
        return _train(cfg, run_dir=run_dir, overrides=overrides)
    with RunLock(run_dir), write_errors_as_one_line(run_dir):
        removed, freed = sweep_stale_temp_files(run_dir)
        if removed:
            print(describe_sweep(run_dir, removed, freed))
        return _train(cfg, run_dir=run_dir, overrides=overrides)


def _train(cfg: DictConfig, *, run_dir: Path, overrides: list[str] = ()) -> TrainResult:  # run integrity (#15): was `train`
    context = distributed.DistributedContext.from_env()
    checkpoint = None
    if cfg.resume:
        checkpoint_path = resolve_checkpoint_path(cfg.resume)
        checkpoint = load_checkpoint(checkpoint_path)
        cfg = merge_resume_config(checkpoint["config"], cfg, list(overrides))
        check_same_model(checkpoint["config"], cfg, checkpoint_path)
    validate_train_config(cfg)
    trainer = cfg.trainer
    if trainer.batch_size % context.world_size:
        raise GanrunError(
            f"trainer.batch_size={trainer.batch_size} does not split over {context.world_size} ranks; "
            f"use a multiple of {context.world_size}"
        )

    device = choose_device(choice(trainer.device), cuda_available=torch.cuda.is_available(), local_rank=context.local_rank)
    precision = choose_precision(
        choice(trainer.precision),
        device_type=device.type,
        cuda_capability=torch.cuda.get_device_capability(device) if device.type == "cuda" else None,
        cpu_bf16=cpu_supports_bf16(),
    )
    torch.manual_seed(trainer.seed)

    # `source` is what the loader reports back (recorded below), not one of its arguments.
    data: ImageData = build(OmegaConf.masked_copy(cfg.dataset, [k for k in cfg.dataset if k != "source"]))
    with open_dict(cfg):
        cfg.dataset.source = data.source
    recipe: Recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    # What the real data looks like in plots of 2-D outputs (toy mixtures: their mode centres).
    recipe.scatter_reference = getattr(data, "scatter_reference", None)
    channels_last = use_channels_last(trainer.channels_last, *recipe.networks.values())
    if cfg.init_from and checkpoint is None:  # before the EMA copy: G_ema starts from these weights too
        initialize_generator(recipe, cfg.init_from)
    recipe.to(device, channels_last=channels_last)
    ema = EMA(
        source=recipe.generator,
        half_life_kimg=trainer.ema.half_life_kimg,
        rampup=trainer.ema.rampup,
        enabled=trainer.ema.enabled,
    )
    scalers = {name: torch.amp.GradScaler(device.type, enabled=precision.grad_scaler) for name in recipe.optimizers}
    per_rank_batch = trainer.batch_size // context.world_size
    batches = data.batches(  # the dataset's own stream (ImageData.batches: ganrun.data.Batches)
        batch_size=per_rank_batch,
        seed=trainer.seed,
        device=device,
        channels_last=channels_last,
        rank=context.rank,
        world_size=context.world_size,
        num_workers=trainer.num_workers,
    )
    grid_generator = torch.Generator().manual_seed(trainer.seed)
    if recipe.grid_shows_reconstructions:  # fixed originals: the dataset's first grid_size images
        grid = recipe.grid_inputs(trainer.grid_size, generator=grid_generator, real=data.first_images(trainer.grid_size))
    else:
        grid = recipe.grid_inputs(trainer.grid_size, generator=grid_generator)
    progress = Progress()
    alarms = Alarms(settings=AlarmSettings(**OmegaConf.to_container(trainer.alarms)))
    run_id = None
    if checkpoint is not None:
        try:
            recipe.load_state_dict(checkpoint["recipe"])
            ema.load_state_dict(checkpoint["G_ema"])
        except (RuntimeError, KeyError) as error:
            raise GanrunError(
                f"{cfg.resume} does not fit this model ({str(error).splitlines()[0]}); "
                "resume with the model config it was trained with"
            ) from None
        for name, scaler in scalers.items():
            scaler.load_state_dict(checkpoint["scalers"].get(name, {}))
        progress.load_state_dict(checkpoint["progress"])
        batches.load_state_dict(checkpoint["data"])
        rng_states = checkpoint["rng"]
        restore_rng(rng_states[context.rank] if context.rank < len(rng_states) else rng_states[0])
        run_id = checkpoint["tracker"].get("run_id")
        alarms.load_state_dict(checkpoint["tracker"].get("alarms", {}))
    elif context.enabled:
        # Same init on every rank (DDP also broadcasts it), different latents per rank.
        torch.manual_seed(trainer.seed + 1_000_003 * context.rank)

    def wrap(name: str, network: nn.Module) -> nn.Module:
        if context.enabled:
            network = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None
            )
        if trainer.compile:
            network = torch.compile(network)
        return network

    recipe.wrap(wrap)
    recipe.train()
    stepper = Stepper(
        device_type=device.type,
        autocast_dtype=precision.autocast_dtype,
        optimizers=recipe.optimizers,
        scalers=scalers,
    )
    plain_config = to_plain(cfg)
    checkpoint_dir = run_dir / "checkpoints"
    samples_dir = run_dir / "samples"

    tracker: Optional[Tracker] = None
    if context.is_main:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
        if checkpoint is not None:
            truncate_metrics(run_dir / "metrics.jsonl", after_step=progress.step)
        tracker = Tracker(
            run_dir=run_dir,
            config=plain_config,
            logger_cfg=cfg.logger,
            max_steps=trainer.max_steps,
            start_step=progress.step,
            resume_run_id=run_id,
            alarms=alarms,
        )
        verb = "resuming at step" if checkpoint is not None else "starting at step"
        tracker.note(f"run dir: {run_dir}")
        tracker.note(
            f"{verb} {progress.step} of {trainer.max_steps} | data: {data.source} | device: {describe(device)} | "
            f"precision: {precision.name} | channels_last: {channels_last} | compile: {trainer.compile} | "
            f"ranks: {context.world_size}"
        )

    def save_samples() -> None:
        if tracker is None:
            return
        with torch.no_grad():
            images = recipe.render(ema.module, {k: v.to(device) for k, v in grid.items()}).float()
        path = samples_dir / f"step_{progress.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        recipe.save_grid(images, path, nrow=_grid_rows(len(images)))
        tracker.log_image(progress.step, "samples", path)

    def log_diagnostics() -> None:
        """Scalars a dataset computes from G_ema samples, when it offers them (toy mixtures:
        modes/covered, modes/high_quality), on fixed inputs so the values compare across steps."""
        if tracker is None or not hasattr(data, "diagnostics"):
            return
        inputs = recipe.grid_inputs(data.diagnostic_samples, generator=torch.Generator().manual_seed(trainer.seed + 1))
        with torch.no_grad():
            samples = recipe.render(ema.module, {k: v.to(device) for k, v in inputs.items()}).float()
        tracker.log(progress.step, data.diagnostics(samples))

    evaluator: Optional[TrainingEvaluator] = None
    if cfg.eval.every and context.is_main:
        evaluator = data.training_evaluator(settings=cfg.eval, dataset_cfg=plain_config["dataset"], device=device)
        if checkpoint is not None:
            evaluator.load_state_dict(checkpoint.get("eval", {}))

    def checkpoint_payload(rng_states: list) -> dict:
        return {
            "format": FORMAT,
            "ganrun_version": __version__,
            "config": plain_config,
            "recipe": recipe.state_dict(),
            "G_ema": ema.state_dict(),
            "scalers": {name: scaler.state_dict() for name, scaler in scalers.items()},
            "progress": progress.state_dict(),
            "data": batches.state_dict(),
            "grid": grid,
            "rng": rng_states,
            "tracker": {"run_id": tracker.run_id, "alarms": alarms.state_dict()},
            "eval": evaluator.state_dict() if evaluator is not None else {},
        }

    def save_checkpoint() -> None:
        monitor.raise_if_nonfinite()  # never overwrite a good checkpoint with a diverged one
        rng_states = distributed.gather_objects(capture_rng())  # a collective: every rank takes part
        if tracker is None:
            return
        write_checkpoint(checkpoint_payload(rng_states), checkpoint_dir, step=progress.step, keep_last=trainer.keep_last)

    def evaluate() -> None:
        """Rank 0 measures G_ema; best.pt keeps the best state by eval.best_metric."""
        monitor.raise_if_nonfinite()  # a collective too: every rank checks before rank 0 measures
        if evaluator is not None and tracker is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # eval draws no training randomness
                scalars, improved = evaluator(recipe, ema.module, step=progress.step)
            tracker.log(progress.step, scalars)
            key = cfg.eval.best_metric
            if improved:
                # rank 0's RNG state only: resuming from best.pt under DDP reuses it for every rank
                # run integrity (#15): save_checkpoint_file, so best.pt carries a checksum too
                save_checkpoint_file(checkpoint_payload([capture_rng()]), checkpoint_dir / "best.pt")
                tracker.summary({f"eval/best_{key}": evaluator.best, "eval/best_step": progress.step})
            tracker.note(f"eval at step {progress.step}: {key} {scalars[f'eval/{key}']:.4g} "
                         f"(best {evaluator.best:.4g} at step {evaluator.best_step}; {scalars['eval/seconds']:.0f} s)")
        distributed.barrier()

    monitor = LossMonitor()
    stopped_by: Optional[int] = None
    exit_code = 1
    window_start, window_images, side_time = time.perf_counter(), 0, 0.0
    try:
        with StopSignals() as signals:
            while progress.step < trainer.max_steps:
                if signals.should_stop():
                    stopped_by = signals.received
                    break
                # A recipe with n_critic D steps per G step takes n_critic batches at once.
                parts = [next(batches) for _ in range(recipe.batches_per_step)]
                batch = parts[0] if len(parts) == 1 else {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
                stepper.step_index = progress.step
                terms = recipe.train_step(batch, stepper)
                terms.update({f"grad_norm/{name}": norm for name, norm in stepper.grad_norms.items()})
                for scheduler in recipe.schedulers.values():
                    scheduler.step()
                step_images = trainer.batch_size * len(parts)
                progress.step += 1
                progress.images_seen += step_images
                window_images += step_images
                ema.update(recipe.generator, images_seen=progress.images_seen, batch_size=step_images)
                monitor.add(progress.step, terms)
                last_step = progress.step == trainer.max_steps
                if progress.step % trainer.log_every == 0 or last_step:
                    monitor.raise_if_nonfinite()
                    scalars = monitor.flush()
                    elapsed = time.perf_counter() - window_start - side_time
                    scalars["img_per_s"] = window_images / max(elapsed, 1e-9)
                    scalars["images_seen"] = progress.images_seen
                    if tracker is not None:
                        tracker.log(progress.step, scalars)
                    window_start, window_images, side_time = time.perf_counter(), 0, 0.0
                side_start = time.perf_counter()
                if trainer.sample_every and (progress.step % trainer.sample_every == 0 or last_step):
                    save_samples()
                    log_diagnostics()
                if cfg.eval.every and (progress.step % cfg.eval.every == 0 or last_step):
                    evaluate()
                if progress.step % trainer.ckpt_every == 0 or last_step:
                    save_checkpoint()
                side_time += time.perf_counter() - side_start
                if tracker is not None:
                    tracker.advance(progress.step)
            if stopped_by is not None:
                save_checkpoint()
        exit_code = 0
    finally:
        if tracker is not None:
            tracker.finish(exit_code=exit_code)
    if tracker is not None:
        if stopped_by is not None:
            name = signal.Signals(stopped_by).name
            tracker.note(
                f"stopped by {name} at step {progress.step}; checkpoint saved. "
                f"Continue with: ganrun train resume={run_dir}"
            )
        tracker.note(f"done: step {progress.step}, {progress.images_seen:,} images; run dir: {run_dir}")
    return TrainResult(run_dir=run_dir, step=progress.step, stopped_by_signal=stopped_by)
