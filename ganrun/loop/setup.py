"""Setup: a run's state built from its config, or from its checkpoint on resume, checked before
anything is written. `build_run` returns the `Run` whose `train()` is the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ganrun.config import AlarmSettings, TrainConfig, build, choice, to_plain, validate_train_config
from ganrun.data import ImageData
from ganrun.errors import GanrunError
from ganrun.hardware import choose_device, choose_precision, cpu_supports_bf16, use_channels_last
from ganrun.loop import distributed
from ganrun.loop.alarms import Alarms
from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path
from ganrun.loop.ema import EMA
from ganrun.loop.rebuild import task_of
from ganrun.loop.run import Run
from ganrun.loop.state import Progress, RandomStates, RunState, seed_everything
from ganrun.recipes.base import Recipe, Stepper

# helpers


def validate_run_config(cfg: DictConfig) -> None:
    """Every check that needs no data or network: the loop's values, then the task's own
    (eval metrics it can measure). Raises GanrunError with the key and the fix."""
    validate_train_config(cfg)
    task_of(cfg).check_config(cfg)


def merge_resume_config(saved: dict, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's config with the command line's overrides applied on top.

    Values come from the freshly composed config, so they are typed and validated by the
    schema; group overrides (`dataset=celeba`) replace the whole group node.

    The LR schedule's horizon follows trainer.max_steps: a checkpoint whose optim.total_steps
    was trainer.max_steps (the default `${trainer.max_steps}`, stored resolved) gets the new
    max_steps as total_steps too, unless the command line sets optim.total_steps (or optim=).
    How the decay continues onto the new horizon: ganrun.recipes.base.continue_schedule.
    """
    config = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    overridden = set()
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
        overridden.add(key)
    saved_total = (saved.get("optim") or {}).get("total_steps")
    follows_max_steps = saved_total is not None and saved_total == (saved.get("trainer") or {}).get("max_steps")
    if follows_max_steps and not overridden & {"optim", "optim.total_steps"}:
        config.optim.total_steps = config.trainer.max_steps
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


def _build_data(cfg: DictConfig) -> ImageData:
    # `source` is what the loader reports back (recorded in the config), not one of its arguments.
    data: ImageData = build(OmegaConf.masked_copy(cfg.dataset, [k for k in cfg.dataset if k != "source"]))
    with open_dict(cfg):
        cfg.dataset.source = data.source
    return data


def _wrapper(context: distributed.DistributedContext, device: torch.device, compile_networks: bool):
    """What the recipe's train_step calls instead of each network: DDP and/or torch.compile."""

    def wrap(name: str, network: nn.Module) -> nn.Module:
        if context.enabled:
            network = torch.nn.parallel.DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None
            )
        if compile_networks:
            network = torch.compile(network)
        return network

    return wrap


# setup


def build_run(cfg: DictConfig, *, run_dir: Path, overrides: list[str] = ()) -> Run:
    """The run described by `cfg` (a new one, or `cfg.resume`'s continued), ready to train.
    Raises GanrunError for anything that does not fit, before the run dir gets any output."""
    context = distributed.DistributedContext.from_env()
    checkpoint: Optional[dict] = None
    if cfg.resume:
        checkpoint_path = resolve_checkpoint_path(cfg.resume)
        checkpoint = load_checkpoint(checkpoint_path)
        cfg = merge_resume_config(checkpoint["config"], cfg, list(overrides))
        check_same_model(checkpoint["config"], cfg, checkpoint_path)
    validate_run_config(cfg)
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
    seed_everything(trainer.seed)

    task = task_of(cfg)
    data = _build_data(cfg)
    recipe: Recipe = build(cfg.model, loss=build(cfg.loss), optim=build(cfg.optim))
    task.check_run(data=data, recipe=recipe, dataset_name=str(cfg.dataset.get("name")), model_target=str(cfg.model._target_))
    # What the real data looks like in plots of 2-D outputs (toy mixtures: their mode centres).
    recipe.scatter_reference = getattr(data, "scatter_reference", None)
    channels_last = use_channels_last(trainer.channels_last, *recipe.networks.values())
    if cfg.init_from and checkpoint is None:  # before the EMA copy: G_ema starts from these weights too
        initialize_generator(recipe, cfg.init_from)
    recipe.to(device, channels_last=channels_last)
    ema = EMA(source=recipe.generator, half_life_kimg=trainer.ema.half_life_kimg, rampup=trainer.ema.rampup,
              enabled=trainer.ema.enabled)
    batches = data.batches(  # the dataset's own stream (ImageData.batches: ganrun.data.Batches)
        batch_size=trainer.batch_size // context.world_size,
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
    plain_config = to_plain(cfg)
    evaluator: Any = None
    if cfg.eval.every and context.is_main:
        evaluator = task.training_evaluator(settings=cfg.eval, data=data, dataset_cfg=plain_config["dataset"], device=device)
    state = RunState(
        config=plain_config,
        recipe=recipe,
        ema=ema,
        scalers={name: torch.amp.GradScaler(device.type, enabled=precision.grad_scaler) for name in recipe.optimizers},
        progress=Progress(),
        batches=batches,
        grid=grid,
        alarms=Alarms(settings=AlarmSettings(**OmegaConf.to_container(trainer.alarms))),
        evaluator=evaluator,
        rng=RandomStates(rank=context.rank),
    )
    if checkpoint is not None:
        state.load_state_dict(checkpoint, source=str(cfg.resume))
    elif context.enabled:
        # Same init on every rank (DDP also broadcasts it), different latents per rank.
        torch.manual_seed(trainer.seed + 1_000_003 * context.rank)
    recipe.wrap(_wrapper(context, device, trainer.compile))
    recipe.train()
    stepper = Stepper(device_type=device.type, autocast_dtype=precision.autocast_dtype, optimizers=recipe.optimizers,
                      scalers=state.scalers)
    return Run(cfg=cfg, state=state, data=data, stepper=stepper, run_dir=run_dir, context=context, device=device,
               precision=precision, channels_last=channels_last, resumed=checkpoint is not None)
