"""Typed config schemas, the one checked way to build `_target_`s, and value checks.

The dataclasses below sit underneath the YAML tree (`conf/`): Hydra merges the YAML onto
them, so a typo'd loop key (`trainer.max_step=...`) or a wrong type (`trainer.max_steps=abc`)
fails when the config is composed, not an hour into training. Groups whose keys differ per
option (dataset, model, loss, optim) are checked by Hydra's struct mode instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

from ganrun.errors import GanrunError

# helpers


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class LoggerMode(str, Enum):
    auto = "auto"
    online = "online"
    offline = "offline"
    disabled = "disabled"


def choice(value: Any) -> str:
    """The plain string of an enum-typed config value (str() of a str-Enum is 'Class.member')."""
    return value.value if isinstance(value, Enum) else str(value)


# schemas


@dataclass
class AlarmSettings:
    """trainer.alarms: the thresholds of the collapse/divergence alarms (ganrun/loop/alarms.py)."""

    enabled: bool = True
    window: int = 5  # consecutive log points a condition must hold before it fires
    # D calls at least this share of fakes fake, over whole log windows. A healthy DCGAN on MNIST
    # sits at 0.93-0.99 with single windows at 0.999-1.0, so both the level and the run length
    # are set above that (0.99 for 3 windows fired on a healthy cgan_mnist run).
    d_saturation: float = 0.999
    g_loss_factor: float = 10.0  # G's loss this many times its median so far ...
    g_loss_floor: float = 5.0  # ... and above this absolute value
    vanishing_ratio: float = 1e-3  # a gradient norm this small relative to its largest so far
    modes_drop: int = 2  # modes covered this many below the best count so far


@dataclass
class EMAConfig:
    enabled: bool = True
    # Half-life of the generator's moving average, in thousands of training images.
    half_life_kimg: float = 10.0
    # Early in training the half-life is capped at `rampup * images_seen` (stylegan2-ada),
    # so grids from the first few hundred steps are not dominated by the random init.
    rampup: Optional[float] = 0.05


@dataclass
class TrainerConfig:
    max_steps: int = 3000
    # Wall-clock budget of this session: "HH:MM:SS", "MM:SS" or seconds (a number); null = none.
    # Training stops at the first step boundary after it (checkpoint, grid, how to continue);
    # side work (grids, eval, checkpoints) counts. The LR decay still ends at optim.total_steps
    # (= max_steps), so a run stopped by its budget stops early on that schedule. On resume the
    # budget applies to the resumed session. Parsed by `parse_duration`.
    max_time: Optional[str] = None
    batch_size: int = 64  # global: split evenly over DDP ranks
    seed: int = 0
    device: Device = Device.auto
    precision: Precision = Precision.auto
    channels_last: bool = True
    compile: bool = False
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500
    keep_last: int = 3
    grid_size: int = 64
    num_workers: int = 2  # only for datasets streamed from disk
    # CPU threads for torch's math; null = auto: on CPU the cores not busy with other processes
    # (/proc/stat over 0.3 s, else the 1-min load average; ganrun.hardware.choose_threads), on GPU torch's default.
    num_threads: Optional[int] = None
    # D steps per G step; null = the loss's own (5 for wgan/wgan_gp, else 1). max_steps counts G steps.
    n_critic: Optional[int] = None
    ema: EMAConfig = field(default_factory=EMAConfig)
    # Collapse/divergence alarms (ganrun/alarms.py): D saturating, G loss exploding, vanishing
    # gradients, modes lost on toy data; a console line and a W&B alert each.
    alarms: AlarmSettings = field(default_factory=AlarmSettings)


@dataclass
class LoggerConfig:
    mode: LoggerMode = LoggerMode.auto
    project: str = "ganrun"
    entity: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    # Seconds to wait for the W&B server before falling back to offline logging.
    init_timeout: float = 30.0


@dataclass
class TrainEvalConfig:
    """In-training evaluation (rank 0), against the dataset's held-out split."""

    every: int = 0  # steps between evaluations; 0 = off
    metrics: list[str] = field(default_factory=lambda: ["fid"])
    num_samples: int = 5000
    split: str = "test"
    best_metric: str = "fid"  # best.pt keeps the checkpoint where this was best
    batch_size: int = 50
    precision: Precision = Precision.auto  # Inception's arithmetic: auto = bf16 where native (see ganrun eval)


@dataclass
class TrainConfig:
    task: Any = MISSING  # conf/task/: what differs between kinds of job (ganrun/tasks/)
    dataset: Any = MISSING
    model: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    resume: Optional[str] = None
    # Class-conditional training: model.num_classes becomes dataset.num_classes (classes_if).
    conditional: bool = False
    # A checkpoint (file or run dir) whose G_ema a new run's generator starts from, without its
    # optimizer state or step (SRGAN after its SRResNet warm-up); ignored when resuming.
    init_from: Optional[str] = None


@dataclass
class SampleConfig:
    ckpt: str = MISSING
    n: int = 64
    out: Optional[str] = None
    seed: int = 0
    nrow: Optional[int] = None
    interpolate: bool = False
    interpolation_steps: int = 8
    save_individual: bool = False
    ema: bool = True  # sample from G_ema (true) or the raw G (false)
    device: Device = Device.auto
    # Conditional checkpoints: one row per listed class (labels=[0,1,2]); null = every class in turn.
    labels: Optional[list[int]] = None
    # Image-to-image checkpoints (super-resolution, translation): every image of input_dir (any size)
    # -> out_dir, same names as PNG, run in tiles of `tile` input pixels with `tile_overlap` pixels of
    # context (bounded memory; 0 = whole images; null = the task's default: 128/32 for
    # super-resolution, 1024/64 for translation, whose networks see whole training crops).
    input_dir: Optional[str] = None
    out_dir: Optional[str] = None
    tile: Optional[int] = None
    tile_overlap: Optional[int] = None
    # Translation checkpoints: which way to translate input_dir (AtoB or BtoA; null = AtoB). CycleGAN
    # has both generators; pix2pix only AtoB.
    direction: Optional[str] = None
    # Inpainting checkpoints: a folder of masks matched to input_dir's images by file stem (white >= 128
    # = fill; an image's transparent pixels are holes too). null = holes from the alpha channel alone.
    mask_dir: Optional[str] = None


@dataclass
class SREvalDataset:
    """`ganrun eval` of a super-resolution checkpoint: the pairs to measure on (null = the
    checkpoint's own validation folder, then its dataset.lr_name / scale)."""

    hr_dir: Optional[str] = None
    lr_dir: Optional[str] = None  # null: LR by bicubic downscaling of hr_dir
    lr_name: Optional[str] = None  # e.g. '{stem}x4'
    hr_name: Optional[str] = None  # HR and LR in one folder: e.g. '{stem}_HR' beside lr_name='{stem}_LR'


@dataclass
class EvalConfig:
    ckpt: Optional[str] = None  # a checkpoint file or run dir (its last.pt)
    run: Optional[str] = None  # every numbered checkpoint of a run -> a metric-vs-step table
    real: Optional[str] = None  # two image folders, compared directly
    fake: Optional[str] = None
    metrics: list[str] = field(default_factory=lambda: ["fid", "kid"])  # fid, kid, is, prc
    num_samples: int = 10000  # generated images; also the cap on reference images
    split: str = "test"  # reference split of the checkpoint's dataset (held-out by default)
    ema: bool = True  # G_ema (true) or the raw G
    batch_size: int = 50
    seed: int = 0
    device: Device = Device.auto
    data_root: Optional[str] = None  # where the reference data lives, if not where training found it
    resolution: Optional[int] = None  # for real=/fake= folders: resize + center-crop to this size
    kid_subset_size: int = 1000
    download: bool = True  # fetch missing weights: Inception (FID etc.), AlexNet (LPIPS of SR checkpoints)
    # Inception's arithmetic: auto = bf16 where the hardware has it natively (2.5x faster on such
    # CPUs; FID moves ~0.3%), fp32 elsewhere or on request. Cached features are kept per precision.
    precision: Precision = Precision.auto
    # The results also go to the W&B summary of the checkpoint's own training run (resumed by its
    # id); auto = as training decided (online with credentials, else offline), disabled = off.
    wandb: LoggerMode = LoggerMode.auto
    # Super-resolution checkpoints (PSNR/SSIM instead of FID): the pairs, the border cropped before
    # measuring (null = the scale, as BasicSR), and tiled inference as in `ganrun sample`.
    dataset: SREvalDataset = field(default_factory=SREvalDataset)
    crop_border: Optional[int] = None
    tile: Optional[int] = None  # null = the task's default (as `ganrun sample`)
    tile_overlap: Optional[int] = None


def register_schemas() -> None:
    """Make the schemas available to the YAML defaults lists (`- schema_train`)."""
    store = ConfigStore.instance()
    store.store(name="schema_train", node=TrainConfig)
    store.store(name="schema_sample", node=SampleConfig)
    store.store(name="schema_eval", node=EvalConfig)
    OmegaConf.register_new_resolver("classes_if", classes_if, replace=True)
    OmegaConf.register_new_resolver("dcgan_width", dcgan_width, replace=True)
    OmegaConf.register_new_resolver("dcgan_hidden", dcgan_hidden, replace=True)
    OmegaConf.register_new_resolver("dcgan_g_lr", dcgan_g_lr, replace=True)


# A run at 28 px is short up to this budget: 5 minutes of wall clock (width 16) or, with no time
# budget, 10,000 steps (width 32: what width 32 reached in 5 minutes on the AMX Xeon, README
# "Defaults by measurement").
SHORT_RUN_SECONDS = 300
SHORT_RUN_STEPS = 10_000
SHORT_TIME_BUDGET_WIDTH = 16
SHORT_STEP_BUDGET_WIDTH = 32


def dcgan_width(resolution: int, max_time: Any = None, max_steps: Optional[int] = None) -> int:
    """`${dcgan_width:${dataset.resolution},${trainer.max_time},${trainer.max_steps}}`: DCGAN's base width
    (channels of D's first and G's last stage) when the command line does not set one.

    64 is the paper's (Radford et al. 2016) and is kept everywhere except for short runs at 28 px
    (MNIST, Fashion-MNIST), by measurement of quality per CPU-minute (README, "Defaults by
    measurement", FID of G_ema vs MNIST test digits on 2 CPU cores):
    - a time budget (`max_time`) of at most 5 minutes (`make train`): 16. On 2 AVX2 cores of an AMD
      EPYC (fp32) 3 minutes read FID 32.0 at width 16 (3,628 steps) against 50.8 at 32 (1,442 steps;
      1,000 samples; both with the fully connected layers and G at 4e-4). Earlier, in bf16, 32 had
      won over 64 at 2.5 minutes (35.9 vs 39.3, 2,000 samples) and tied at 5 (24.81 vs 24.80);
      16 against 32 at 5 minutes on a bf16 CPU is unmeasured.
    - no time budget and at most 10,000 steps (the default 3,000): 32; a step budget fixes the steps,
      not the wait, and a wider network is better per step.
    - longer budgets: 64, which won at 10 minutes on an Intel Xeon with AMX in bf16 (16.48 vs 20.83
      at width 32, 10,000 samples). In fp32 width 32 still read better at 10 minutes there (20.01 vs
      21.35, one run each), and on a CPU as slow as that EPYC 10 minutes are fewer steps than 5 on
      the Xeon; this rule follows the budget, not the machine's speed.
    A resumed run keeps its checkpoint's width whatever budget it is given
    (`ganrun.loop.setup.merge_resume_config`). The pinned `experiment=dcgan_mnist` and `cgan_mnist`
    keep 64. A `max_time` that does not parse counts as no budget here: the loop's check reports it."""
    if resolution != 28:
        return 64
    try:
        seconds = parse_duration(max_time)
    except GanrunError:
        seconds = None
    if seconds is not None:
        return SHORT_TIME_BUDGET_WIDTH if seconds <= SHORT_RUN_SECONDS else 64
    return SHORT_STEP_BUDGET_WIDTH if max_steps is None or int(max_steps) <= SHORT_RUN_STEPS else 64


# Units of the fully connected layer at 28 px per unit of DCGAN width: InfoGAN's 1024 at width 64.
HIDDEN_PER_WIDTH = 16


def dcgan_hidden(resolution: int, width: int) -> int:
    """`${dcgan_hidden:${dataset.resolution},${.width}}`: units of the fully connected layer that
    DCGAN's G (after z) or D (before the logit) adds at 28 px (MNIST, Fashion-MNIST): 16 x that
    network's width, 0 (the paper's all-convolutional network) at every other resolution.

    At width 64 this is InfoGAN's MNIST layout (Chen et al. 2016, appendix C.1: conv stages of 64
    and 128 channels, FC 1024), the networks of Lucic et al. 2018's MNIST study; it scales with the
    width as the conv stages do: 512 at width 32 (step budgets of up to 10,000), 256 at width 16 (time
    budgets of up to 5 minutes, `dcgan_width`).
    Chosen by measurement (README, "Defaults by measurement"): on 2 CPU cores of an Intel Xeon with
    AMX, 10 minutes of width 64 with `optim.G.lr=4e-4 trainer.ema.half_life_kimg=50` read FID 6.75
    (10,000 G_ema samples vs the MNIST test digits) with 1024 units after 6,991 steps, against
    14.93 without after 18,244 steps: a third of the steps for less than half the FID. The pinned
    `experiment=dcgan_mnist` and `cgan_mnist` keep the paper's 0."""
    return HIDDEN_PER_WIDTH * int(width) if resolution == 28 else 0


# DCGAN's G learns at this multiple of optim.lr at 28 px (dcgan_g_lr below).
DCGAN_28PX_G_LR_RATIO = 2.0
DCGAN_GENERATOR = "ganrun.models.dcgan.Generator"


def dcgan_g_lr(lr: float, resolution: int, generator_target: Any) -> float:
    """`${dcgan_g_lr:${optim.lr},${oc.select:dataset.resolution,0},${oc.select:model.G._target_,none}}`:
    G's Adam learning rate (optim=adam). 2 x `optim.lr` (4e-4 beside D's 2e-4) for DCGAN's G at 28 px
    (MNIST, Fashion-MNIST), `optim.lr` for every other network and resolution; `optim.G.lr=...` wins.

    A faster G is what InfoGAN's MNIST training does with these networks (openai/InfoGAN,
    launchers/run_mnist_exp.py: generator_learning_rate 1e-3, discriminator 2e-4). Chosen by
    measurement (README, "Defaults by measurement"): G at 4e-4 read a better FID than 2e-4 in every
    comparison made, at 2.5, 3 and 5 minutes (and at 10 together with a 50-kimg EMA) on three CPUs;
    most on 2 AVX2 cores of an AMD EPYC
    in fp32, where 3 minutes (1,442 vs 1,467 steps, width 32 with the fully connected layers) read
    FID 50.8 against 156.9 (1,000 G_ema samples vs 1,000 test digits). The pinned
    `experiment=dcgan_mnist` and `cgan_mnist` keep DCGAN's equal rates."""
    return float(lr) * (DCGAN_28PX_G_LR_RATIO if resolution == 28 and generator_target == DCGAN_GENERATOR else 1.0)


def classes_if(conditional: bool, num_classes: int) -> int:
    """`${classes_if:${conditional},${dataset.num_classes}}`: the class count when training conditionally, else 0."""
    if not conditional:
        return 0
    if num_classes < 1:
        raise GanrunError("conditional=true needs a dataset with labels (dataset.num_classes > 0); pick e.g. dataset=mnist or drop conditional=true")
    return num_classes


# building

ALLOWED_TARGET_PREFIXES = ("ganrun.", "torch.")


def build(node: DictConfig | dict, **kwargs: Any) -> Any:
    """Instantiate a config node: only ganrun.* and torch.* targets, plain Python containers.

    `_convert_="all"` matters: without it list values (Adam's `betas`) arrive as ListConfig,
    end up inside the optimizer state and `torch.load(weights_only=True)` refuses the checkpoint.
    """
    _check_targets(node, path="")
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as error:
        # Our own checks inside constructors speak to the user directly, unwrapped.
        cause = error.__cause__
        while cause is not None and not isinstance(cause, GanrunError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _check_targets(node: Any, *, path: str) -> None:
    if isinstance(node, (DictConfig, dict)):
        target = node.get("_target_")
        if target is not None and not str(target).startswith(ALLOWED_TARGET_PREFIXES):
            raise GanrunError(
                f"{path or 'config'}._target_={target!r} is not allowed; "
                "targets must be ganrun.* or torch.* classes"
            )
        for key, value in node.items():
            _check_targets(value, path=f"{path}.{key}" if path else str(key))


# checks at the edge


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise GanrunError(message)


def parse_duration(value: Any, *, key: str = "trainer.max_time") -> Optional[float]:
    """A wall-clock budget in seconds from "HH:MM:SS", "MM:SS" or seconds ("90", 90, 2.5);
    None for null. Raises GanrunError naming `key` and the accepted forms."""
    if value is None:
        return None
    text = str(value).strip()
    fix = f"{key} must be HH:MM:SS, MM:SS or seconds, e.g. {key}=00:10:00 or {key}=600 (null = no budget)"
    parts = text.split(":")
    seconds: Optional[float] = None
    if 1 <= len(parts) <= 3 and all(parts):
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        fields_ok = numbers and all(math.isfinite(n) and n >= 0 for n in numbers)
        # in H:M:S and M:S every field but the first is below 60, and only the last has a fraction
        if fields_ok and all(n < 60 for n in numbers[1:]) and all(n == int(n) for n in numbers[:-1]):
            seconds = sum(n * 60**power for power, n in enumerate(reversed(numbers)))
    if seconds is None:
        raise GanrunError(f"{fix}; got {text!r}")
    if seconds <= 0:
        raise GanrunError(f"{key} must be more than 0 seconds, got {text!r}; e.g. {key}=00:10:00, or null for no budget")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as H:MM:SS (what trainer.max_time accepts back)."""
    whole = int(round(seconds))
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def validate_train_config(cfg: DictConfig) -> None:
    """Reject values that would only fail deep inside training, with the key and the fix."""
    trainer = cfg.trainer
    _require(trainer.batch_size >= 1, f"trainer.batch_size must be >= 1, got {trainer.batch_size}")
    _require(trainer.max_steps >= 1, f"trainer.max_steps must be >= 1, got {trainer.max_steps}")
    parse_duration(trainer.get("max_time"))
    threads = trainer.get("num_threads")
    _require(threads is None or threads >= 1,
             f"trainer.num_threads must be >= 1 (or null for auto), got {threads}")
    for key in ("log_every", "ckpt_every"):
        value = trainer[key]
        _require(value >= 1, f"trainer.{key} must be >= 1, got {value}")
    _require(
        trainer.sample_every >= 0,
        f"trainer.sample_every must be >= 0 (0 = no grids), got {trainer.sample_every}",
    )
    _require(trainer.keep_last >= 0, f"trainer.keep_last must be >= 0, got {trainer.keep_last}")
    _require(trainer.grid_size >= 1, f"trainer.grid_size must be >= 1, got {trainer.grid_size}")
    _require(
        trainer.ema.half_life_kimg > 0,
        f"trainer.ema.half_life_kimg must be > 0, got {trainer.ema.half_life_kimg}",
    )
    _require(cfg.eval.every >= 0, f"eval.every must be >= 0 (0 = no in-training evaluation), got {cfg.eval.every}")
    _require(
        trainer.n_critic is None or trainer.n_critic >= 1,
        f"trainer.n_critic must be >= 1 (or null for the loss's own), got {trainer.n_critic}",
    )
    _require(
        not cfg.conditional or cfg.dataset.get("num_classes", 0) > 0,
        f"conditional=true needs a dataset with labels, but dataset={cfg.dataset.get('name')} has num_classes=0; "
        "pick e.g. dataset=mnist or drop conditional=true",
    )
    decay = cfg.optim.get("decay", "none")
    _require(decay in ("none", "linear"), f"optim.decay must be none or linear, got {decay!r}")
    decay_start = cfg.optim.get("decay_start", 0.0)
    _require(0.0 <= decay_start < 1.0, f"optim.decay_start must be a fraction in [0, 1), got {decay_start}")
    for key, value in _learning_rates(cfg.optim):
        _require(
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
            f"{key} must be > 0, got {value}; e.g. {key}=2e-4",
        )


def _learning_rates(optim: DictConfig) -> list[tuple[str, Any]]:
    rates = []
    if "lr" in optim:
        rates.append(("optim.lr", optim.lr))
    for name, node in optim.items():
        if isinstance(node, DictConfig) and "lr" in node:
            rates.append((f"optim.{name}.lr", node.lr))
    return rates


def to_plain(cfg: DictConfig) -> dict:
    """The resolved config as plain Python: what checkpoints, W&B and config.yaml store."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
