"""Setup: a run's state built from its config, or from its checkpoint on resume, checked before
anything is written. `build_run` returns the `Run` whose `train()` is the loop."""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationKeyError
from torch import nn

from ganrun.config import AlarmSettings, TrainConfig, build, choice, to_plain, validate_train_config
from ganrun.data import ImageData
from ganrun.errors import GanrunError
from ganrun.hardware import PrecisionPolicy, choose_device, choose_precision, cpu_supports_bf16, use_channels_last
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
    _check_model_reads_the_dataset(cfg)
    task_of(cfg).check_config(cfg)


def _check_model_reads_the_dataset(cfg: DictConfig) -> None:
    """A model option interpolates dataset keys (`${dataset.crop_size}`); a dataset of another
    kind lacks them. One line naming the key and the fix, before any data is read."""
    try:
        OmegaConf.to_container(cfg.model, resolve=True)
    except InterpolationKeyError as error:
        missing = str(error).split("'")[1] if "'" in str(error) else "a dataset key"
        raise GanrunError(
            f"model {cfg.model.get('_target_', '?')} reads {missing}, which dataset={cfg.dataset.get('name')} "
            "does not set: pick a dataset of this model's kind (pix2pix: dataset=paired, cyclegan: dataset=unpaired, "
            "SR models: dataset=paired_sr), or an experiment= that pairs them"
        ) from None


def merge_resume_config(saved: dict, composed: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's config with the command line's overrides applied on top, or a
    GanrunError naming an override that cannot take effect on resume (`RESUME_RULES`).

    Values come from the freshly composed config, so they are typed and validated by the
    schema; group overrides (`dataset=celeba`) replace the whole group node. A key the run's
    config does not have (`optim.lr` of an optim=adam_ttur run) is refused, unless added with
    `+key=` or a constructor argument of the same class as the one the command line composed.

    Keys whose saved value followed another key get to follow it again: the checkpoint stores
    its config resolved, so without this `optim.lr=1e-3` would leave optim.G.lr at its old
    value, `trainer.n_critic=5` loss.n_critic, `trainer.max_steps=N` optim.total_steps
    (`_follow_interpolations`). How the LR decay continues onto a new horizon:
    ganrun.recipes.base.continue_schedule; how the rest takes effect: `apply_resume_overrides`.
    """
    saved_config = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)  # probed in place, restored
    config = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    given: dict[str, str] = {}  # key -> the override as typed
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        if key.startswith("hydra") or key == "resume":
            continue
        if key.split("/")[0] in ("experiment", "debug"):
            raise GanrunError(f"resume takes value overrides such as trainer.max_steps=N, not {key}=...; start a new run for {key}")
        key = key.replace("/", ".")
        if override.is_delete():
            raise GanrunError(f"cannot delete '{key}' when resuming; start a new run instead")
        if not (override.is_add() or override.is_force_add()):
            _check_known_key(config, composed, key)
        OmegaConf.update(config, key, OmegaConf.select(composed, key), merge=False, force_add=True)
        given[key] = override.input_line
    _follow_interpolations(config, saved_config, composed, skip=set(given))
    config.resume = composed.resume
    changes = changed_settings(saved, config)
    _refuse_fixed_settings(changes, given)
    _refuse_sources_nothing_follows(config, composed, [key for key in given if key in changes], given=set(given))
    _check_optimizer_state_carries_over(saved_config, config)
    return config


def check_same_model(saved: dict, config: DictConfig, path: Path) -> None:
    saved_model, model = saved.get("model", {}), to_plain(config)["model"]
    if saved_model != model:
        before, after = _leaves(saved_model), _leaves(model)
        # the shallowest differing key: model.z_dim=4 is named as such, not as the model.G.z_dim that follows it
        leaf = min((key for key in before.keys() | after.keys() if _differs(before.get(key), after.get(key))),
                   key=lambda key: (key.count("."), key))
        top = leaf.split(".")[0]
        values = f"{_short(before.get(leaf))} in the checkpoint, {_short(after.get(leaf))} asked"
        detail = values if leaf == top else f"model.{leaf} is {values}"
        raise GanrunError(
            f"{path} is a checkpoint of a different model (model.{top} differs: {detail}); "
            "drop the model overrides to resume, or start a new run"
        )


def _short(value: object) -> str:
    """A config value as one would type it on the command line (a node with a target: the target)."""
    if isinstance(value, dict) and "_target_" in value:
        return str(value["_target_"])
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(item) for item in value) + "]"
    return str(value) if isinstance(value, str) else repr(value)


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


def _build_data(cfg: DictConfig, task: Any) -> ImageData:
    """The dataset's loader, then the task's own preparation of it (`Task.prepare_data`: e.g.
    inpainting adds masks), from the `dataset.*` keys the task owns (`Task.dataset_keys`)."""
    # `source` is what the loader reports back (recorded in the config), not one of its arguments.
    owned = set(task.dataset_keys) | {"source"}
    data: ImageData = build(OmegaConf.masked_copy(cfg.dataset, [k for k in cfg.dataset if k not in owned]))
    settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg.dataset, [k for k in task.dataset_keys if k in cfg.dataset]),
                                      resolve=True)
    data = task.prepare_data(data, settings=settings)
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


# resume: what each override does to a continued run


@dataclass(frozen=True)
class ResumeRule:
    """What `resume=RUN KEY=VALUE` does with a KEY whose value differs from the checkpoint's:
    `applied` (`how` says where the new value takes effect) or refused (`how` says why)."""

    pattern: str  # fnmatch on the dotted key ('*' spans dots too); the first matching rule decides
    applied: bool
    how: str


RESUME_RULES: tuple[ResumeRule, ...] = (
    ResumeRule("resume", True, "the checkpoint the run continues from"),
    # trainer
    ResumeRule("trainer.max_steps", True, "the loop runs to it; optim.total_steps follows it unless set apart"),
    ResumeRule("trainer.batch_size", True,
               "the data stream continues at the first batch of the new size that repeats no image of the current "
               "epoch; images_seen and the EMA's half-life (in images) count on; learning rates are not rescaled"),
    ResumeRule("trainer.seed", False,
               "the data order, the sample grid and the RNG states come from the checkpoint's seed"),
    ResumeRule("trainer.device", True, "the run is built on it at every start"),
    ResumeRule("trainer.precision", True,
               "autocast and gradient scaling are set up from it at every start (a scaler the checkpoint lacks starts fresh)"),
    ResumeRule("trainer.channels_last", True, "the networks' memory layout is set from it at every start"),
    ResumeRule("trainer.compile", True, "the networks are compiled (or not) at every start"),
    ResumeRule("trainer.num_workers", True, "the data stream is built with it at every start"),
    ResumeRule("trainer.log_every", True, "the loop reads it"),
    ResumeRule("trainer.max_time", True, "a budget for this session, counted from its own start (Run.train reads it)"),
    ResumeRule("trainer.num_threads", True, "threads are chosen at every start (Run.train reads it)"),
    ResumeRule("trainer.sample_every", True, "the loop reads it"),
    ResumeRule("trainer.ckpt_every", True, "the loop reads it"),
    ResumeRule("trainer.keep_last", True, "the loop reads it when it prunes checkpoints"),
    ResumeRule("trainer.grid_size", True, "the sample grid is drawn from trainer.seed at the new size"),
    ResumeRule("trainer.n_critic", True, "the loss is rebuilt with it (through loss.n_critic): D steps per G step"),
    ResumeRule("trainer.ema.*", True, "the EMA is built from it; only the averaged weights come from the checkpoint"),
    ResumeRule("trainer.alarms.*", True, "the alarms are built from it; only their history comes from the checkpoint"),
    # logger
    ResumeRule("logger.project", False, "the run's W&B history stays in the project it started in"),
    ResumeRule("logger.entity", False, "the run's W&B history stays with the entity it started under"),
    ResumeRule("logger.*", True, "the tracker starts with it (the W&B run, resumed by its id, takes a new name and tags)"),
    # eval
    ResumeRule("eval.every", True, "the loop reads it; the evaluator is built when it is > 0"),
    ResumeRule("eval.metrics", True, "the evaluator is built from it"),
    ResumeRule("eval.batch_size", True, "the evaluator is built from it"),
    ResumeRule("eval.best_metric", True,
               "the evaluator is built from it; the best-so-far restarts (it was measured another way)"),
    ResumeRule("eval.num_samples", True,
               "the evaluator is built from it; the best-so-far restarts (it was measured another way)"),
    ResumeRule("eval.split", True,
               "the evaluator is built from it; the best-so-far restarts (it was measured another way)"),
    ResumeRule("eval.precision", True,
               "the evaluator is built from it; the best-so-far restarts (it was measured another way)"),
    # the config groups
    ResumeRule("task.*", False, "the task decides the run's data kind, evaluation and sampling"),
    ResumeRule("model.*", False, "the checkpoint's networks were built with it"),
    ResumeRule("conditional", False, "it changes the model (model.num_classes)"),
    ResumeRule("init_from", False, "it only starts new runs; a resumed run continues from its own checkpoint"),
    ResumeRule("dataset.resolution", False, "the model's networks were built for the checkpoint's value"),
    ResumeRule("dataset.channels", False, "the model's networks were built for the checkpoint's value"),
    ResumeRule("dataset.source", False, "it is what the loader reports, not a setting"),
    ResumeRule("dataset.*", True, "the data is rebuilt from it; the stream continues at its epoch and batch number"),
    ResumeRule("loss.*", True, "the loss is rebuilt from it (the checkpoint holds no loss state)"),
    ResumeRule("optim.decay", True,
               "the LR schedule is rebuilt from it: a new decay begins at the checkpoint's step (from the full rate "
               "if decay_start has passed); none = the constant optim rate"),
    ResumeRule("optim.decay_start", True,
               "the LR schedule is rebuilt from it; a decay that has begun continues from its current rate to 0 at "
               "optim.total_steps (ganrun.recipes.base.continue_schedule)"),
    ResumeRule("optim.total_steps", True,
               "the LR schedule's end; a decay that has begun continues from its current rate to 0 there"),
    ResumeRule("optim.*._partial_", False, "it is how the optimizer is bound to its network, not a setting"),
    ResumeRule("optim.*._target_", True,
               "the optimizer is rebuilt as this class and keeps its state, if the class keeps the same state "
               "(Adam -> AdamW); otherwise refused"),
    ResumeRule("optim.*", True,
               "set on the optimizers' parameter groups after their state (moment buffers) is loaded; a learning "
               "rate becomes the LR schedule's base rate, under the schedule's current factor"),
)


# Keys no code reads: they reach a run only through the keys that interpolate them.
SOURCES_ONLY = ("optim.lr", "trainer.n_critic", "loss.adam_betas")


def resume_rule(key: str) -> Optional[ResumeRule]:
    """The rule for changing `key` on resume; None: no rule, so a change is refused."""
    return next((rule for rule in RESUME_RULES if fnmatch.fnmatchcase(key, rule.pattern)), None)


def changed_settings(saved: dict, config: DictConfig) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (checkpoint's value, this run's value) for every resolved leaf that differs
    (lists are leaves; a missing key reads as None). `resume` itself is left out."""
    before = {**_schema_defaults(), **_leaves(saved)}  # as OmegaConf.merge(TrainConfig, saved), faster
    after = _leaves(to_plain(config))
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(before.keys() | after.keys())
        if key != "resume" and not key.startswith("hydra") and _differs(before.get(key, _ABSENT), after.get(key, _ABSENT))
    }


def apply_resume_overrides(state: RunState, changes: dict[str, tuple[Any, Any]]) -> None:
    """After `state.load_state_dict`: the overrides whose effect is on what the checkpoint
    restored. Everything else a config sets was built from it and kept through the load
    (optimizer hyperparameters: ganrun.recipes.base.Recipe.load_state_dict)."""
    if "trainer.batch_size" in changes:
        old_size, new_size = changes["trainer.batch_size"]
        state.batches.rebatch(old_batch_size=old_size, new_batch_size=new_size)
    if state.evaluator is not None and changes.keys() & {"eval.best_metric", "eval.num_samples", "eval.split", "eval.precision"}:
        state.evaluator.load_state_dict({})


# helpers of resume

_ABSENT = object()


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value for every leaf of a plain config (lists and empty dicts are leaves)."""
    if isinstance(node, dict) and node:
        leaves: dict[str, Any] = {}
        for key, value in node.items():
            leaves.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return leaves
    return {prefix: node}


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    """The typed schema's default leaves (older checkpoints lack keys added since)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig), enum_to_str=True)
    return {key: value for key, value in _leaves(defaults).items() if value != "???"}


def _differs(a: Any, b: Any) -> bool:
    """Config values compared as values: a list equals a tuple of the same items; True is not 1."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) != isinstance(b, bool):
        return True
    return a != b


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _check_known_key(config: DictConfig, composed: DictConfig, key: str) -> None:
    """A key the run's config lacks would be recorded and never read (optim.lr of a run with
    per-network rates only). Allowed: a constructor argument of the same class as composed
    (a loss option added after the checkpoint was written)."""
    if OmegaConf.select(config, key, default=_ABSENT) is not _ABSENT:
        return
    parent_key = key.rpartition(".")[0]
    parent = OmegaConf.select(config, parent_key, default=None) if parent_key else config
    composed_parent = OmegaConf.select(composed, parent_key, default=None) if parent_key else composed
    if (isinstance(parent, DictConfig) and isinstance(composed_parent, DictConfig) and "_target_" in parent
            and parent.get("_target_") == composed_parent.get("_target_")):
        return
    has = f" ({parent_key} has {', '.join(str(k) for k in parent)})" if isinstance(parent, DictConfig) and parent_key else ""
    raise GanrunError(f"{key} is not a setting of the run being resumed{has}; override a key it has, or start a new run")


def _follow_interpolations(config: DictConfig, saved_config: DictConfig, composed: DictConfig, *, skip: set[str]) -> None:
    """Every key that is an interpolation in the composed config (`optim.G.lr: ${optim.lr}`),
    not set on the command line, and whose checkpoint value is what that interpolation gives
    on the checkpoint's config, follows its source again: set back to the interpolation.
    (A value set apart from its source, `optim.total_steps=25` beside max_steps 20, stays.)"""
    raw = OmegaConf.to_container(composed, resolve=False)
    raw.pop("hydra", None)
    probe = saved_config  # each probe is undone right after
    for key, expression in _leaves(raw).items():
        if not (isinstance(expression, str) and "${" in expression):
            continue
        if any(key == given or key.startswith(f"{given}.") for given in skip):
            continue
        if key.startswith("model."):
            # The networks are fixed on resume (check_same_model): a model key keeps the checkpoint's
            # value even where it follows a key the resume changes (the 28-px width follows max_time).
            continue
        saved_value = OmegaConf.select(saved_config, key, default=_ABSENT)
        if saved_value is _ABSENT:
            continue
        try:
            OmegaConf.update(probe, key, expression, merge=False)
            follows = not _differs(_plain(OmegaConf.select(probe, key)), _plain(saved_value))
        except Exception:  # noqa: BLE001 - an interpolation this run's config cannot resolve: not a source it had
            follows = False
        finally:
            OmegaConf.update(probe, key, saved_value, merge=False)
        if follows:
            OmegaConf.update(config, key, expression, merge=False)


def _refuse_sources_nothing_follows(config: DictConfig, composed: DictConfig, changed_keys: list[str], *,
                                    given: set[str]) -> None:
    """A changed key that no code reads (SOURCES_ONLY) reaches a run only through the keys that
    follow it; when none does in the run being resumed (optim.G.lr and optim.D.lr set apart when
    it started) and none is set beside it, it would be recorded and set nothing."""
    for key in changed_keys:
        if key not in SOURCES_ONLY:
            continue
        if any(_references(value, key) for value in _leaves(OmegaConf.to_container(config, resolve=False)).values()):
            continue
        raw = OmegaConf.to_container(composed, resolve=False)
        raw.pop("hydra", None)
        followers = [leaf for leaf, value in _leaves(raw).items() if _references(value, key)]
        if given & set(followers):
            continue  # as in a new run with `optim.lr=... optim.G.lr=...`: the explicit key wins
        raise GanrunError(
            f"{key}={_short(OmegaConf.select(config, key))} would set nothing in the run being resumed: "
            f"{', '.join(followers) or 'what would follow it'} were set apart from it when the run started; "
            "set those instead, or start a new run"
        )


def _references(value: Any, key: str) -> bool:
    """Whether an interpolation string reads `key` (`${optim.lr}`, `${oc.select:loss.adam_betas,...}`)."""
    return isinstance(value, str) and re.search(r"[{:,]\s*" + re.escape(key) + r"\s*[},]", value) is not None


def _refuse_fixed_settings(changes: dict[str, tuple[Any, Any]], given: dict[str, str]) -> None:
    """GanrunError for the first change a resume cannot make: the command line's keys in its
    order, then what they change through interpolations (`conditional=true` -> model.num_classes).
    model.* given directly is left to `check_same_model` (its message names the checkpoint)."""
    def under(leaf: str, key: str) -> bool:
        return leaf == key or leaf.startswith(f"{key}.")

    causes = [typed for key, typed in given.items() if any(under(leaf, key) for leaf in changes)]
    model_given = any(under(key, "model") for key in given)
    for key, typed in given.items():
        if under(key, "model"):
            continue
        for leaf, (old, new) in changes.items():
            if under(leaf, key) and (leaf != "dataset.source" or key == leaf):
                _refuse_if_fixed(leaf, old, new, cause=None if leaf == key else typed)
    for leaf, (old, new) in changes.items():
        if any(under(leaf, key) for key in given) or leaf == "dataset.source" or (model_given and under(leaf, "model")):
            continue  # dataset.source: the loader's report, rewritten at every start
        _refuse_if_fixed(leaf, old, new, cause=" ".join(causes))


def _refuse_if_fixed(key: str, old: Any, new: Any, *, cause: Optional[str]) -> None:
    rule = resume_rule(key)
    if rule is not None and rule.applied:
        return
    why = rule.how if rule is not None else "ganrun has no rule for changing it on resume (RESUME_RULES in ganrun/loop/setup.py)"
    through = f" (through {cause})" if cause else ""
    raise GanrunError(
        f"{key}={_short(new)}{through} cannot change on resume ({_short(old)} in the checkpoint): {why}; "
        "drop it to resume, or start a new run"
    )


def _check_optimizer_state_carries_over(saved_config: DictConfig, config: DictConfig) -> None:
    """An optimizer whose class or flags changed (optim.G._target_, amsgrad) must find in the
    checkpoint every state buffer it keeps, or its first step would fail (or start one from 0).
    Compared on a one-element stand-in parameter after one step, so any torch optimizer works."""
    for name, node in config.optim.items():
        saved_node = saved_config.optim.get(name)
        if not (isinstance(node, DictConfig) and "_target_" in node and isinstance(saved_node, DictConfig)):
            continue
        old, new = _leaves(to_plain(saved_node)), _leaves(to_plain(node))
        changed = [f"optim.{name}.{key}={_short(value)}" for key, value in new.items()
                   if key not in ("lr", "betas") and _differs(old.get(key, _ABSENT), value)]
        if not changed:
            continue  # rates and betas change no state
        before, after = _optimizer_state_keys(to_plain(saved_node)), _optimizer_state_keys(to_plain(node))
        if before is None or after is None or after <= before:
            continue  # one that does not build is reported by the build itself, with its key
        raise GanrunError(
            f"{', '.join(changed)} cannot change on resume: the optimizer it makes ({new['_target_']}) keeps state "
            f"({', '.join(sorted(after - before))}) that the checkpoint's ({old['_target_']}) does not have; "
            "drop it to resume, or start a new run"
        )


def _optimizer_state_keys(node: dict) -> Optional[frozenset[str]]:
    parameter = nn.Parameter(torch.zeros(1))
    try:
        optimizer = build(node)([parameter])
        parameter.grad = torch.zeros(1)
        optimizer.step()
    except Exception:  # noqa: BLE001 - a bad value: the real build reports it with its key
        return None
    return frozenset(optimizer.state[parameter])


def _hardware(trainer: DictConfig, context: distributed.DistributedContext) -> tuple[torch.device, PrecisionPolicy]:
    """The device this rank trains on and the precision policy for it (trainer.device/precision)."""
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
    return device, precision


def _grid(recipe: Recipe, data: ImageData, *, size: int, seed: int) -> dict[str, torch.Tensor]:
    """The fixed inputs of every sample grid: latents from `seed`, and for recipes whose grids
    show data (encoders, super-resolution, translation) the dataset's fixed examples
    (`ImageData.grid_examples`: its first `size` images, or pairs)."""
    generator = torch.Generator().manual_seed(seed)
    if recipe.grid_shows_reconstructions:
        return recipe.grid_inputs(size, generator=generator, **data.grid_examples(size))
    return recipe.grid_inputs(size, generator=generator)


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
        changes = changed_settings(checkpoint["config"], cfg)
    validate_run_config(cfg)
    trainer = cfg.trainer
    device, precision = _hardware(trainer, context)
    seed_everything(trainer.seed)

    task = task_of(cfg)
    data = _build_data(cfg, task)
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
        grid=_grid(recipe, data, size=trainer.grid_size, seed=trainer.seed),
        alarms=Alarms(settings=AlarmSettings(**OmegaConf.to_container(trainer.alarms))),
        evaluator=evaluator,
        rng=RandomStates(rank=context.rank),
    )
    if checkpoint is not None:
        state.load_state_dict(checkpoint, source=str(cfg.resume))
        apply_resume_overrides(state, changes)
    elif context.enabled:
        # Same init on every rank (DDP also broadcasts it), different latents per rank.
        torch.manual_seed(trainer.seed + 1_000_003 * context.rank)
    recipe.wrap(_wrapper(context, device, trainer.compile))
    recipe.train()
    stepper = Stepper(device_type=device.type, autocast_dtype=precision.autocast_dtype, optimizers=recipe.optimizers,
                      scalers=state.scalers)
    return Run(cfg=cfg, state=state, data=data, stepper=stepper, run_dir=run_dir, context=context, device=device,
               precision=precision, channels_last=channels_last, resumed=checkpoint is not None,
               resume_changes=changes if checkpoint is not None else {})
