"""`ganrun train|sample|eval`: each command is a Hydra app, so -m, --cfg and --help work.

Before Hydra runs, `preflight` composes the config once to turn bad input (unknown group
option, typo'd key, wrong type, bad value, unwritable output dir, bad resume path) into one
line that names the value and the fix, with exit code 2 and nothing created on disk. It also
pins the run dir where Hydra alone would choose wrongly: on resume (the original run dir) and
under torchrun (rank 0's choice, shared with every rank).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ganrun import __version__
from ganrun.config import register_schemas, validate_train_config
from ganrun.errors import GanrunError, OutputWriteError, TrainingDiverged

register_schemas()

USAGE = f"""ganrun {__version__}: config-driven GAN experiments

usage: ganrun COMMAND [overrides...]

commands:
  train    train a model            ganrun train model=dcgan dataset=celeba dataset.root=DIR
  sample   images from a checkpoint ganrun sample ckpt=RUN/checkpoints/last.pt n=64
  eval     metrics of a checkpoint  ganrun eval ckpt=RUN/checkpoints/last.pt metrics=[fid,kid]

Each command is a Hydra app: `ganrun train --help` lists the config groups,
`ganrun train --cfg job` prints the composed config, `ganrun train -m a=1,2` sweeps.
"""

GROUPS = ("dataset", "model", "loss", "optim", "logger", "trainer", "experiment", "debug")
PASSTHROUGH_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc",
                     "--resolve", "--package", "-p", "--version"}


def fail(message: str, *, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Our errors become one line on stderr and a non-zero exit, not a Hydra-trimmed traceback."""
    try:
        yield
    except TrainingDiverged as error:
        fail(str(error), code=1)
    except OutputWriteError as error:  # run integrity (#15): the run stopped, the input was fine
        fail(str(error), code=1)
    except GanrunError as error:
        fail(str(error))


# the Hydra apps


@hydra.main(version_base="1.3", config_path="pkg://ganrun.conf", config_name="train")
def train_app(cfg: DictConfig) -> None:
    from ganrun.training import train

    hydra_cfg = HydraConfig.get()
    with user_errors():
        result = train(cfg, run_dir=Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task))
    if result.stopped_by_signal is not None:
        raise SystemExit(128 + int(result.stopped_by_signal))


@hydra.main(version_base="1.3", config_path="pkg://ganrun.conf", config_name="sample")
def sample_app(cfg: DictConfig) -> None:
    from ganrun.sampling import sample

    with user_errors():
        sample(cfg)


@hydra.main(version_base="1.3", config_path="pkg://ganrun.conf", config_name="eval")
def eval_app(cfg: DictConfig) -> None:
    from ganrun.evaluation import evaluate

    with user_errors():
        evaluate(cfg)


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app}

# preflight


def group_options(group: str) -> list[str]:
    folder = resources.files("ganrun.conf") / group
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _first_values(overrides: list[str]) -> list:
    """Parsed overrides, with each sweep (a=1,2) reduced to its first value for checking."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise GanrunError(f"cannot parse the overrides: {str(error).splitlines()[0]}") from None
    checked = []
    for override in parsed:
        value = (
            next(iter(override.sweep_string_iterator()))
            if override.is_sweep_override()
            else override.get_value_element_as_str()
        )
        checked.append((override, value))
    return checked


def _known_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items_ex(resolve=False):
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys += _known_keys(value, f"{full}.")
    return keys


def _explain_compose_error(error: Exception, known_keys: list[str]) -> str:
    """Hydra's multi-line composition errors (message + cause), as one actionable line."""
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    first = text.splitlines()[0] if text else type(error).__name__
    key = text.split("full_key:", 1)[1].split()[0] if "full_key:" in text else None
    if key is None and "Could not override '" in text:
        key = text.split("Could not override '", 1)[1].split("'", 1)[0]
    if key and ("not in struct" in text or "not in '" in text or "Could not override" in text):
        matches = difflib.get_close_matches(key, known_keys, n=1, cutoff=0.75)
        suggestion = f" (did you mean '{matches[0]}'?)" if matches else ""
        return f"unknown config key '{key}'{suggestion}; see `ganrun train --cfg job` for every key"
    for marker in ("could not be converted", "Invalid value"):
        reason = next((line.strip() for line in text.splitlines() if marker in line), None)
        if key and reason:
            return f"bad value for '{key}': {reason}"
    return first


def _check_writable(directory: Path) -> None:
    """The nearest existing ancestor of `directory` must be a folder we can create files in."""
    target = directory.expanduser().absolute()
    existing = target
    while not existing.exists():
        existing = existing.parent
    problem = None
    if not existing.is_dir():
        problem = f"{existing} is not a folder"
    else:
        try:
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as error:
            problem = error.strerror or str(error)
    if problem:
        raise GanrunError(
            f"cannot write outputs to {target} ({problem}); run from a writable folder or pass hydra.run.dir=/writable/path"
        )


def preflight_train(args: list[str]) -> list[str]:
    """Check a `ganrun train` command line; returns it with pinned run-dir overrides added."""
    from hydra import compose, initialize_config_module

    multirun = any(arg in ("-m", "--multirun") for arg in args)
    overrides = [arg for arg in args if not arg.startswith("-")]
    checked = _first_values(overrides)
    for override, value in checked:
        group = override.key_or_group
        if group in GROUPS and override.value_type is not None and isinstance(value, str) and value != "null":
            options = group_options(group)
            if value not in options:
                raise GanrunError(f"unknown {group} '{value}'; choose one of: {', '.join(options)}")
    first_values = [f"{override.get_key_element()}={value}" for override, value in checked]
    user_set_run_dir = any(override.key_or_group == "hydra.run.dir" for override, _ in checked)
    resume = next((value for override, value in checked if override.key_or_group == "resume"), None)
    try:
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            cfg = compose("train", overrides=first_values, return_hydra_config=True)
    except Exception as error:  # Hydra/OmegaConf raise several types; all are bad input here
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            known_keys = _known_keys(compose("train"))
        raise GanrunError(_explain_compose_error(error, known_keys)) from None

    from ganrun.loop import distributed

    context = distributed.init_process_group()  # no-op unless under torchrun
    extra: list[str] = []
    if resume not in (None, "null"):
        from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path, run_dir_of

        checkpoint_path = resolve_checkpoint_path(resume)
        load_checkpoint(checkpoint_path)  # truncated / foreign files fail here, before any output
        run_dir = run_dir_of(checkpoint_path)
        _check_writable(run_dir)
        if not user_set_run_dir:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            extra += [f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resume-{stamp}"]
    else:
        validate_train_config(cfg)
        _check_writable(Path(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
        if context.enabled and not user_set_run_dir:
            # Each rank resolved its own ${now:...}; rank 0's choice wins everywhere.
            extra.append(f"hydra.run.dir={distributed.broadcast_object(str(cfg.hydra.run.dir))}")
    if not context.is_main:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return args + extra


def preflight_sample(args: list[str]) -> list[str]:
    from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path

    checked = _first_values([arg for arg in args if not arg.startswith("-")])
    ckpt = next((value for override, value in checked if override.key_or_group == "ckpt"), None)
    if ckpt is None:
        raise GanrunError("sample needs a checkpoint: ganrun sample ckpt=RUN_DIR_or_FILE.pt")
    load_checkpoint(resolve_checkpoint_path(ckpt))
    return args


def preflight_eval(args: list[str]) -> list[str]:
    from ganrun.loop.checkpoint import load_checkpoint, resolve_checkpoint_path
    from ganrun.metrics.fidelity import check_metric_names

    parsed = _first_values([arg for arg in args if not arg.startswith("-")])
    checked = {override.key_or_group: value for override, value in parsed}
    if not any(checked.get(key) not in (None, "null") for key in ("ckpt", "run", "real", "fake")):
        raise GanrunError("eval needs what to measure: ckpt=FILE_or_RUN, run=RUN_DIR, or real=DIR fake=DIR")
    for override, _ in parsed:
        if override.key_or_group == "metrics" and not override.is_sweep_override():
            value = override.value()
            check_metric_names(value if isinstance(value, list) else [value])
    if "ckpt" in checked:
        load_checkpoint(resolve_checkpoint_path(checked["ckpt"]))
    return args


PREFLIGHT = {"train": preflight_train, "sample": preflight_sample, "eval": preflight_eval}


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] == "--version":
        print(__version__)
        return
    command, args = argv[0], argv[1:]
    if command not in APPS:
        fail(f"unknown command '{command}'; choose one of: train, sample, eval (ganrun --help)")
    if not any(arg.split("=")[0] in PASSTHROUGH_FLAGS for arg in args):
        with user_errors():
            args = PREFLIGHT[command](args)
    sys.argv = [f"ganrun-{command}", *args]
    try:
        APPS[command]()
    except BrokenPipeError:  # `ganrun eval --help | head`: the reader left early; no traceback (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        from ganrun.loop import distributed

        distributed.destroy()


if __name__ == "__main__":
    main()
