"""`ganrun train|sample|eval`: each command is a Hydra app, so -m, --cfg and --help work.

Before Hydra runs, `preflight` composes the config once to turn bad input (unknown group
option, typo'd key, wrong type, bad value, unwritable output dir, bad resume path or resume
override, missing data root) into one line that names the value and the fix, with exit code 2
and nothing created on disk; what only training itself can refuse is removed again
(`RefusedRunCleanup`). Paths are checked as Hydra parses them, so both of Hydra's forms for an
'=' in a path ("ckpt='a/lr=2e-4/x.pt'", 'ckpt=a/lr\\=2e-4/x.pt') work. It also pins the run
dir: on resume (the original run dir), under torchrun (rank 0's choice, shared with every
rank), and otherwise so it is known before Hydra creates it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
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
from ganrun.config import register_schemas
from ganrun.errors import GanrunError, OutputWriteError, TrainingDiverged

register_schemas()

# OpenMP threads that finish a parallel region early spin, then sleep, waiting for the next one.
# Not spinning at all (OMP_WAIT_POLICY=PASSIVE) costs every small op a wake-up: DCGAN on MNIST
# alone on 2 cores of a Xeon (bf16) ran 2,610 img/s passive vs 4,424 with a short spin (width 32),
# 1,539 vs 2,141 (width 64; fp32: 905 vs 1,108). Beside another busy 2-thread job the short spin
# read like passive (width 64, 2 threads, two rounds: 327/452 vs 455/288 img/s beside a spinning
# job, 68 vs 46 beside a passive one; 1 thread: 860-1,360 either way), and there auto threads
# take 1 thread anyway (hardware.choose_threads, ThreadWatch). So a bounded spin of 30,000
# iterations (libgomp's default is 300,000; a pause is tens of ns, so about a millisecond),
# unless the user chose a policy or spin count.
# libgomp reads these when torch loads it, so they are set here, before anything imports torch.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

USAGE = f"""ganrun {__version__}: config-driven GAN experiments

usage: ganrun COMMAND [overrides...]

commands:
  train    train a model            ganrun train model=dcgan dataset=celeba dataset.root=DIR
  sample   images from a checkpoint ganrun sample ckpt=RUN/checkpoints/last.pt n=64
  eval     metrics of a checkpoint  ganrun eval ckpt=RUN/checkpoints/last.pt metrics=[fid,kid]

Each command is a Hydra app: `ganrun train --help` lists the config groups,
`ganrun train --cfg job` prints the composed config, `ganrun train -m a=1,2` sweeps.
"""

GROUPS = ("task", "dataset", "model", "loss", "optim", "logger", "trainer", "experiment", "debug")
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
    from ganrun.training import train  # here, not at the top: `ganrun --help` starts without torch

    hydra_cfg = HydraConfig.get()
    with user_errors():
        result = train(cfg, run_dir=Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task))
    if result.stopped_by_signal is not None:
        raise SystemExit(128 + int(result.stopped_by_signal))


@hydra.main(version_base="1.3", config_path="pkg://ganrun.conf", config_name="sample")
def sample_app(cfg: DictConfig) -> None:
    from ganrun.sampling import sample  # here, not at the top: `ganrun --help` starts without torch

    with user_errors():
        sample(cfg)


@hydra.main(version_base="1.3", config_path="pkg://ganrun.conf", config_name="eval")
def eval_app(cfg: DictConfig) -> None:
    from ganrun.evaluation import evaluate  # here, not at the top: `ganrun --help` starts without torch

    with user_errors():
        evaluate(cfg)


APPS = {"train": train_app, "sample": sample_app, "eval": eval_app}

# preflight


def group_options(group: str) -> list[str]:
    folder = resources.files("ganrun.conf") / group
    return sorted(entry.name[: -len(".yaml")] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def _first_values(overrides: list[str]) -> list[tuple]:
    """Parsed overrides as (override, text, value), a sweep (a=1,2) reduced to its first value.

    `text` is the value as Hydra's grammar spells it (quotes and escapes kept), for composing
    again; `value` is what it means, for checking: "ckpt='a/lr=2e-4/x.pt'" and
    'ckpt=a/lr\\=2e-4/x.pt' both give the path a/lr=2e-4/x.pt, as Hydra hands it to the app.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import QuotedString
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except OverrideParseException:
        for override in overrides:  # which one, and why
            try:
                parser.parse_overrides([override])
            except OverrideParseException as error:
                raise GanrunError(_explain_parse_error(override, error)) from None
        raise
    checked = []
    for override in parsed:
        if override.is_sweep_override():
            text = next(iter(override.sweep_string_iterator()))
            value = next(iter(override.sweep_iterator()))
            value = value.text if isinstance(value, QuotedString) else value
        else:
            text, value = override.get_value_element_as_str(), override.value()
        checked.append((override, text, value))
    return checked


def _explain_parse_error(override: str, error: Exception) -> str:
    """One line for an override Hydra's grammar refuses; for an unquoted '=' in a value (Lightning's
    epoch=3-step=100.pt, Hydra's own lr=2e-4 run dirs) both of Hydra's fixes, as typed in a shell."""
    key, _, value = override.partition("=")
    if "=" in value and not value.startswith(("'", '"')):
        escaped = value.replace("=", "\\=")
        return (
            f"cannot parse {override}: paths with '=' need quotes: \"{key}={_quoted(value)}\" "
            f"or escape each '=' as '\\=': '{key}={escaped}'"
        )
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"cannot parse {override}: {reason} (quote values with special characters: \"{key}='...'\")"


def _quoted(value: str) -> str:
    """`value` as a quoted override value that Hydra parses back to exactly `value`: a backslash
    run before a quote or the end is doubled, a quote escaped."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def _path(checked: list[tuple], key: str) -> Optional[str]:
    """The parsed value of `key=` as a path string; None when absent or null."""
    value = next((value for override, _, value in checked if override.key_or_group == key), None)
    return None if value is None else str(value)


def _check_folder(key: str, value: Optional[str]) -> None:
    from ganrun.data.images import root_problem  # here, not at the top: `ganrun --help` starts without torch

    problem = root_problem(Path(value).expanduser()) if value is not None else None
    if problem:
        raise GanrunError(f"{key}={value} is not a folder ({problem}); pass an existing folder")


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
        # known_keys are the default config's: a key of another option (dataset.download with
        # dataset=image_folder) would be suggested as itself
        matches = [match for match in difflib.get_close_matches(key, known_keys, n=2, cutoff=0.75) if match != key]
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
    """Check a `ganrun train` command line; returns it with pinned run-dir overrides added.

    Everything that can refuse the command is checked here, before Hydra creates a run dir: the
    overrides, the config values, a resume's checkpoint and its overrides, init_from, the data
    root. (What only training itself can find out is cleaned up by `RefusedRunCleanup`.)
    """
    from hydra import compose, initialize_config_module

    multirun = any(arg in ("-m", "--multirun") for arg in args)
    overrides = [arg for arg in args if not arg.startswith("-")]
    checked = _first_values(overrides)
    for override, _, value in checked:
        group = override.key_or_group
        if group in GROUPS and override.value_type is not None and isinstance(value, str):
            options = group_options(group)
            if value not in options:
                raise GanrunError(f"unknown {group} '{value}'; choose one of: {', '.join(options)}")
    first_values = [  # as typed, a sweep as its first value
        f"{override.get_key_element()}={text}" if override.is_sweep_override() else override.input_line
        for override, text, _ in checked
    ]
    user_set_run_dir = any(override.key_or_group == "hydra.run.dir" for override, _, _ in checked)
    resume = _path(checked, "resume")
    try:
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            cfg = compose("train", overrides=first_values, return_hydra_config=True)
    except Exception as error:  # Hydra/OmegaConf raise several types; all are bad input here
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            known_keys = _known_keys(compose("train"))
        raise GanrunError(_explain_compose_error(error, known_keys)) from None

    from ganrun.loop import distributed  # here, not at the top: `ganrun --help` starts without torch
    from ganrun.loop.lock import check_free  # here too, for the same reason
    from ganrun.loop.setup import validate_run_config  # here too, for the same reason

    context = distributed.init_process_group()  # no-op unless under torchrun
    extra: list[str] = []
    if resume is not None:
        from ganrun.loop.checkpoint import (  # here, not at the top: `ganrun --help` starts without torch
            load_checkpoint,
            resolve_checkpoint_path,
            run_dir_of,
        )
        from ganrun.loop.setup import check_same_model, merge_resume_config  # here too, for the same reason

        checkpoint_path = resolve_checkpoint_path(resume)
        checkpoint = load_checkpoint(checkpoint_path)  # truncated / foreign files fail here, before any output
        # the config the resumed run will have: refused overrides (experiment=, ~key) fail here too
        run_cfg = merge_resume_config(checkpoint["config"], cfg, first_values)
        check_same_model(checkpoint["config"], run_cfg, checkpoint_path)
        run_dir = run_dir_of(checkpoint_path)
        _check_writable(run_dir)
        if context.is_main:  # a run in use stops before Hydra writes into it
            check_free(Path(cfg.hydra.run.dir) if user_set_run_dir else run_dir)
        if not user_set_run_dir:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            extra += [f"hydra.run.dir={_quoted(str(run_dir))}", f"hydra.output_subdir=.hydra/resume-{stamp}"]
    else:
        run_cfg = cfg
        _check_writable(Path(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir))
        if context.is_main and not multirun:  # before Hydra overwrites .hydra/ of a live run
            check_free(Path(cfg.hydra.run.dir))
        if not multirun and not user_set_run_dir:
            # Pinned, so the run dir is known before Hydra makes it (RefusedRunCleanup); under
            # torchrun each rank resolved its own ${now:...}, and rank 0's choice wins everywhere.
            run_dir = str(cfg.hydra.run.dir)
            extra.append(f"hydra.run.dir={_quoted(distributed.broadcast_object(run_dir) if context.enabled else run_dir)}")
        init_from = _path(checked, "init_from")
        if init_from is not None:
            from ganrun.loop.checkpoint import (  # here, not at the top: `ganrun --help` starts without torch
                load_checkpoint,
                resolve_checkpoint_path,
            )

            load_checkpoint(resolve_checkpoint_path(init_from))
    validate_run_config(run_cfg)
    _check_data_root(run_cfg.dataset)
    if not context.is_main:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return args + extra


def _check_data_root(dataset: DictConfig) -> None:
    """An explicit dataset.root must be an existing folder (ganrun.data.images.check_root)."""
    from omegaconf import OmegaConf

    from ganrun.data.images import check_root  # here, not at the top: `ganrun --help` starts without torch

    if OmegaConf.is_missing(dataset, "root"):  # `root: ???` (image_folder)
        raise GanrunError(f"dataset={dataset.get('name')} needs a folder: dataset.root=DIR")
    if isinstance(dataset.get("root"), str):
        check_root(dataset.root)


def _compose_checked(config_name: str, checked: list) -> None:
    """Compose `ganrun sample|eval`'s config with the command line, so a typo'd key, a wrong type or
    a training group (`model=...`: sample and eval take the model from the checkpoint) is one line."""
    from hydra import compose, initialize_config_module

    overrides = [f"{override.get_key_element()}={text}" if override.is_sweep_override() else override.input_line
                 for override, text, _ in checked]
    for override, _, _ in checked:
        if override.key_or_group in GROUPS:
            raise GanrunError(
                f"{override.key_or_group}= is a training option; ganrun {config_name} takes the model, data and losses "
                f"from the checkpoint (ganrun {config_name} --help lists its keys)"
            )
    try:
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            compose(config_name, overrides=overrides)
    except Exception as error:  # Hydra/OmegaConf raise several types; all are bad input here
        with initialize_config_module("ganrun.conf", version_base="1.3"):
            known_keys = _known_keys(compose(config_name))
        message = _explain_compose_error(error, known_keys).replace("ganrun train --cfg job", f"ganrun {config_name} --help")
        raise GanrunError(message) from None


def preflight_sample(args: list[str]) -> list[str]:
    from ganrun.loop.checkpoint import (  # here, not at the top: `ganrun --help` starts without torch
        load_checkpoint,
        resolve_checkpoint_path,
    )

    checked = _first_values([arg for arg in args if not arg.startswith("-")])
    _compose_checked("sample", checked)
    ckpt = _path(checked, "ckpt")
    if ckpt is None:
        raise GanrunError("sample needs a checkpoint: ganrun sample ckpt=RUN_DIR_or_FILE.pt")
    load_checkpoint(resolve_checkpoint_path(ckpt))
    _check_folder("input_dir", _path(checked, "input_dir"))
    return args


def preflight_eval(args: list[str]) -> list[str]:
    from ganrun.loop.checkpoint import (  # here, not at the top: `ganrun --help` starts without torch
        load_checkpoint,
        resolve_checkpoint_path,
    )
    from ganrun.metrics.fidelity import check_metric_names  # here, not at the top: `ganrun --help` starts without torch

    parsed = _first_values([arg for arg in args if not arg.startswith("-")])
    _compose_checked("eval", parsed)
    paths = {key: _path(parsed, key) for key in ("ckpt", "run", "real", "fake")}
    if all(path is None for path in paths.values()):
        raise GanrunError("eval needs what to measure: ckpt=FILE_or_RUN, run=RUN_DIR, or real=DIR fake=DIR")
    for override, _, _ in parsed:
        if override.key_or_group == "metrics" and not override.is_sweep_override():
            value = override.value()
            check_metric_names(value if isinstance(value, list) else [value])
    if paths["ckpt"] is not None:
        load_checkpoint(resolve_checkpoint_path(paths["ckpt"]))
    if paths["run"] is not None and not Path(paths["run"]).expanduser().exists():
        raise GanrunError(f"run={paths['run']} does not exist; pass a run dir (outputs/DATE/TIME)")
    problems = []  # both folders named at once, not one per attempt
    for key in ("real", "fake"):
        try:
            _check_folder(key, paths[key])
        except GanrunError as error:
            problems.append(str(error).removesuffix("; pass an existing folder"))
    if problems:
        raise GanrunError("; ".join(problems) + ("; pass existing folders" if len(problems) > 1 else "; pass an existing folder"))
    data_root = _path(parsed, "data_root")
    if data_root is not None:
        from ganrun.data.images import check_root  # here, not at the top: `ganrun --help` starts without torch

        check_root(data_root, key="data_root")
    return args


PREFLIGHT = {"train": preflight_train, "sample": preflight_sample, "eval": preflight_eval}


# what a refused run leaves behind


def _tree(folder: Path) -> dict[Path, Optional[tuple[int, int]]]:
    """Everything under `folder`: files (and links) with (mtime_ns, size), folders with None."""
    entries: dict[Path, Optional[tuple[int, int]]] = {}
    for parent, folders, files in os.walk(folder):
        for name in folders:
            path = Path(parent) / name
            entries[path] = None if not path.is_symlink() else (path.lstat().st_mtime_ns, 0)
        for name in files:
            stat = (Path(parent) / name).lstat()
            entries[Path(parent) / name] = (stat.st_mtime_ns, stat.st_size)
    return entries


class RefusedRunCleanup:
    """Removes what a refused `ganrun train` created.

    Hydra makes the run dir and writes .hydra/{config,hydra,overrides}.yaml (resuming:
    .hydra/resume-STAMP/) before `train` runs, and `train` can still refuse input that only it
    can check (a corrupt data file, a model setting its constructor rejects). On exit code 2
    (bad input) with nothing written but files under RUN/.hydra and nothing changed, those
    files go, with the folders the command created (outputs/DATE/TIME, outputs/DATE if new).
    Anything else written or changed (checkpoints, metrics, W&B files) means training had
    begun: then everything stays.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir.expanduser().absolute()
        self.before = _tree(self.run_dir)
        outermost = self.run_dir
        while not outermost.parent.exists():
            outermost = outermost.parent
        self.created_from = None if self.run_dir.exists() else outermost  # the first folder this command makes

    @classmethod
    def for_train(cls, args: list[str]) -> contextlib.AbstractContextManager:
        """For a single run on the main process (sweeps and other ranks: nothing to do)."""
        from ganrun.loop import distributed  # here, not at the top: `ganrun --help` starts without torch

        if any(arg in ("-m", "--multirun") for arg in args) or not distributed.DistributedContext.from_env().is_main:
            return contextlib.nullcontext()
        run_dir = _path(_first_values([arg for arg in args if not arg.startswith("-")]), "hydra.run.dir")
        return cls(Path(run_dir)) if run_dir is not None else contextlib.nullcontext()

    def __enter__(self) -> "RefusedRunCleanup":
        return self

    def __exit__(self, kind: object, error: Optional[BaseException], traceback: object) -> None:
        if isinstance(error, SystemExit) and error.code == 2:
            self.remove_created()

    def remove_created(self) -> None:
        after = _tree(self.run_dir)
        created = [path for path in after if path not in self.before]
        changed = [path for path, stamp in self.before.items() if stamp is not None and after.get(path) != stamp]
        hydra_dir = self.run_dir / ".hydra"
        ours = {hydra_dir, self.run_dir / ".lock"}  # Hydra's files and the run lock (released by now)
        if changed or any(path not in ours and hydra_dir not in path.parents for path in created):
            return
        for path in sorted(created, key=lambda path: len(path.parts), reverse=True):  # contents before folders
            path.rmdir() if after[path] is None else path.unlink()
        folder = self.run_dir
        while self.created_from is not None and folder != self.created_from.parent:
            with contextlib.suppress(OSError):  # a folder someone else filled meanwhile stays
                folder.rmdir()
            folder = folder.parent


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
    cleanup: contextlib.AbstractContextManager = contextlib.nullcontext()
    if not any(arg.split("=")[0] in PASSTHROUGH_FLAGS for arg in args):
        with user_errors():
            args = PREFLIGHT[command](args)
            if command == "train":
                cleanup = RefusedRunCleanup.for_train(args)
    sys.argv = [f"ganrun-{command}", *args]
    try:
        with cleanup:
            APPS[command]()
    except BrokenPipeError:  # `ganrun eval --help | head`: the reader left early; no traceback (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        from ganrun.loop import distributed  # here, not at the top: `ganrun --help` starts without torch

        distributed.destroy()


if __name__ == "__main__":
    main()
