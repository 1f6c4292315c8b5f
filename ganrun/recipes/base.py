"""What the loop hands a recipe (`Stepper`) and what a recipe offers the loop (`Recipe`).

The loop owns AMP, gradient scaling, EMA, logging, sampling, checkpoints and resume; a recipe
owns its networks and optimizers and says, in `train_step`, which terms to minimize with
which optimizer. A new family is a new recipe, never a new branch in the loop.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torchvision.utils import save_image

from ganrun.data.toy import save_scatter
from ganrun.errors import GanrunError


class Stepper:
    """Backward + optimizer step for one named optimizer, under the loop's precision policy."""

    def __init__(
        self,
        *,
        device_type: str,
        autocast_dtype: torch.dtype | None,
        optimizers: dict[str, torch.optim.Optimizer],
        scalers: dict[str, torch.amp.GradScaler],
    ):
        self.device_type = device_type
        self.autocast_dtype = autocast_dtype
        self.optimizers = optimizers
        self.scalers = scalers
        # The 0-based index of the step being taken; the loop sets it before every train_step
        # (lazy regularizers and annealed schedules read it).
        self.step_index = 0
        # Each optimizer's last gradient norm (unscaled, on the device: read only at log points).
        self.grad_norms: dict[str, torch.Tensor] = {}

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(
            self.device_type,
            dtype=self.autocast_dtype,
            enabled=self.autocast_dtype is not None,
        )

    def step(self, name: str, terms: dict[str, torch.Tensor]) -> None:
        """Minimize the sum of `terms` with optimizer `name`; gradients are cleared after."""
        optimizer, scaler = self.optimizers[name], self.scalers[name]
        total = sum(terms.values())
        scaler.scale(total).backward()
        # One scaler per optimizer: G and D gradients live on different scales, and each
        # backward/step/update cycle is complete in itself.
        scaler.unscale_(optimizer)  # true gradient norms for the vanishing-gradient alarm
        gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradients:
            norm = torch.nn.utils.get_total_norm(gradients).detach()
            # An fp16 overflow (the scaler skips that step) must not read as divergence.
            self.grad_norms[name] = torch.nan_to_num(norm, nan=0.0, posinf=0.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


def add_terms(totals: dict[str, torch.Tensor], prefix: str, terms: dict[str, torch.Tensor], *, share: float) -> None:
    """Accumulate detached terms as `prefix/name`, each weighted by `share` (a mean over n_critic steps)."""
    for name, value in terms.items():
        totals[f"{prefix}/{name}"] = totals.get(f"{prefix}/{name}", 0) + value.detach() * share


def clip_weights(network: nn.Module, clip: Optional[float]) -> None:
    """WGAN's weight clipping (loss=wgan): every parameter of `network` into [-clip, clip]."""
    if clip is None:
        return
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.clamp_(-clip, clip)


def generator_adversarial(
    loss: Any, critic: Callable[[torch.Tensor], torch.Tensor], fake: torch.Tensor, *, D: nn.Module, stepper: "Stepper"
) -> tuple[dict[str, torch.Tensor], Optional[torch.Tensor]]:
    """G's adversarial terms `loss.g_loss(critic, fake)` with D frozen, under the stepper's autocast.

    Returns (terms, rejected): `rejected` is the share in [0, 1] of fake scores the critic puts
    below `loss.decision_threshold` (what the saturation alarm reads as stat/D_acc_fake), or None
    when the loss has no threshold or did not score the fakes exactly once.
    """
    fake_scores: list[torch.Tensor] = []

    def watched_critic(images: torch.Tensor) -> torch.Tensor:
        scores = critic(images)
        fake_scores.append(scores.detach())
        return scores

    with frozen(D), stepper.autocast():
        terms = loss.g_loss(watched_critic, fake, step=stepper.step_index)
    threshold = loss.decision_threshold
    if threshold is None or len(fake_scores) != 1:
        return terms, None
    return terms, (fake_scores[0].float() < threshold).float().mean()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No weight gradients for `module` inside the block (gradients still flow through it).

    Skipping D's weight gradients in the G phase saves a large share of the step (stylegan2
    does the same). Under DDP the frozen pass must not arm gradient sync either: its
    backward produces no weight gradients, and the next forward would wait for them forever.
    """
    was_trainable = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    sync_off = module.no_sync() if hasattr(module, "no_sync") else contextlib.nullcontext()
    try:
        with sync_off:
            yield
    finally:
        for parameter, trainable in zip(module.parameters(), was_trainable):
            parameter.requires_grad_(trainable)


class Recipe:
    """Base class. Subclasses set `networks`, `optimizers` and implement the hooks."""

    # The task (ganrun/tasks/) whose data this recipe trains on; the task checks it at start.
    task = "generation"
    # The network whose EMA copy the loop keeps and samples from.
    generator_name = "G"
    # Class-conditional recipes set this > 0; `ganrun sample labels=[...]` needs it.
    num_classes = 0
    # Keyword arguments of ganrun.data.toy.save_scatter for 2-D outputs (mode centres, std); the
    # loop copies them from the dataset's `scatter_reference` when it has one.
    scatter_reference: dict | None = None
    # Recipes with an encoder (BiGAN, VAE) set this: their grids pair real images with their
    # reconstructions, so the loop and `ganrun sample` pass real images to grid_inputs.
    grid_shows_reconstructions = False

    def __init__(self) -> None:
        self.networks: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        # What train_step calls: the networks, or their compiled / DDP-wrapped versions.
        self.train_networks: dict[str, nn.Module] = {}

    # the loop's side

    @property
    def generator(self) -> nn.Module:
        return self.networks[self.generator_name]

    @property
    def batches_per_step(self) -> int:
        """Batches the loop concatenates (dim 0) into one train_step's batch, e.g. n_critic."""
        return 1

    def bind_optimizers(self, optim: dict[str, Any]) -> None:
        """Bind the optimizer partials in `optim` (one per network name) and its LR schedule.

        `optim.decay=linear` decays every learning rate linearly to 0 from `decay_start`
        (a fraction of `total_steps`) on; the loop steps the schedulers once per train_step.
        How a resumed run continues the schedule when `total_steps` changed: `LinearDecay`.
        """
        self.optimizers = {name: optim[name](network.parameters()) for name, network in self.networks.items()}
        self.schedulers = linear_decay_schedulers(
            self.optimizers,
            decay=optim.get("decay", "none"),
            decay_start=optim.get("decay_start", 0.0),
            total_steps=optim.get("total_steps", 1),
        )

    def save_grid(self, outputs: torch.Tensor, path: Path, *, nrow: int) -> None:
        """Write rendered outputs as one picture: an image grid, or for 2-D points (N, 2) a
        scatter plot over `scatter_reference` (the toy data's mode centres, when known)."""
        if outputs.ndim == 2:
            save_scatter(outputs, path, **(self.scatter_reference or {}))
            return
        save_image(outputs, path, nrow=nrow, normalize=True, value_range=(-1, 1))

    def to(self, device: torch.device, *, channels_last: bool) -> None:
        for network in self.networks.values():
            network.to(device)
            if channels_last:
                network.to(memory_format=torch.channels_last)

    def wrap(self, wrapper: Callable[[str, nn.Module], nn.Module]) -> None:
        """Compile and/or DDP-wrap the networks train_step uses; the originals stay for checkpoints."""
        self.train_networks = {name: wrapper(name, network) for name, network in self.networks.items()}

    def train(self) -> None:
        for network in self.networks.values():
            network.train()

    def state_dict(self) -> dict:
        return {
            "networks": {name: net.state_dict() for name, net in self.networks.items()},
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "schedulers": {name: sched.state_dict() for name, sched in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict, *, step: int = 0) -> None:
        """Networks, optimizer state and LR schedules from a checkpoint, under this recipe's own
        config: what it sets (lr, betas, eps, weight_decay, ...) wins over the values saved in
        the optimizers' parameter groups, while their state (Adam's moments) is kept, so
        `resume=RUN optim.lr=1e-3` trains on at 1e-3. Learning rates go through the LR schedule:
        the configured rate becomes its base rate and the schedule's current factor applies
        (`rebase_schedule`); a schedule the checkpoint did not have (decay none -> linear) begins
        at `step`, the checkpoint's step (`start_schedule`)."""
        for name, network in self.networks.items():
            network.load_state_dict(state["networks"][name])
        saved_schedules = state.get("schedulers", {})
        for name, optimizer in self.optimizers.items():
            configured = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
            optimizer.load_state_dict(state["optimizers"][name])
            for group, values in zip(optimizer.param_groups, configured):
                for key, value in values.items():
                    if key not in ("lr", "initial_lr") and _differs(group.get(key), value):
                        group[key] = value
            base_lrs = [values.get("initial_lr", values["lr"]) for values in configured]
            scheduler = self.schedulers.get(name)
            if scheduler is None:  # a constant rate: the configured one (also after a decay was switched off)
                for group, base_lr in zip(optimizer.param_groups, base_lrs):
                    group["lr"] = base_lr
            elif name in saved_schedules:
                continue_schedule(scheduler, saved_schedules[name])
                rebase_schedule(scheduler, base_lrs)
            else:
                start_schedule(scheduler, step=step, base_lrs=base_lrs)

    # the family's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        """One training step; returns detached loss terms named `NET/term`."""
        raise NotImplementedError

    def grid_inputs(self, n: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fixed inputs for sample grids (drawn once, on CPU, from a seeded generator).

        Recipes that set `grid_shows_reconstructions` also get `real=`: the dataset's first n
        images (float in [-1, 1]). They keep those they use under the key "real", so the
        checkpoint's "grid" entry holds them and `ganrun sample` can fall back to them.
        """
        raise NotImplementedError

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] from the generator and grid inputs."""
        raise NotImplementedError


# helpers


class LinearDecay:
    """The learning-rate factor of `optim.decay=linear` after `step` optimizer steps.

    Fresh: 1 until `start`, then linearly to 0 at `end` (= optim.total_steps):
        factor(step) = clamp((end - step) / (end - start), 0, 1).
    Resumed with another `end` (a longer trainer.max_steps) after the decay began: the factor
    continues in a straight line from the one the last completed step used, `anchor_factor` at
    step `anchor_step`, to 0 at the new `end`:
        factor(step) = clamp(anchor_factor * (end - step) / (end - anchor_step), 0, 1).
    So the rate never jumps: the slope changes at the resume, the value does not (see
    `continue_schedule`). Its fields are the scheduler's saved state (LambdaLR keeps a callable
    object's __dict__), so the checkpoint records which line a run is on.
    """

    def __init__(self, *, start: int, end: int, anchor_step: Optional[int] = None, anchor_factor: float = 1.0):
        self.start, self.end = start, end
        self.anchor_step, self.anchor_factor = anchor_step, anchor_factor

    def __call__(self, step: int) -> float:
        if self.anchor_step is None:
            return max(0.0, min(1.0, (self.end - step) / max(1, self.end - self.start)))
        return max(0.0, min(1.0, self.anchor_factor * (self.end - step) / max(1, self.end - self.anchor_step)))

    def continue_from(self, *, step: int, factor: float) -> None:
        """Continue from `factor` at `step`: if the decay had not begun and this schedule's own
        start is still ahead, this schedule as it is; otherwise the straight line to 0 at `end`."""
        if factor >= 1.0 and step <= self.start:
            self.anchor_step, self.anchor_factor = None, 1.0
        else:
            self.anchor_step, self.anchor_factor = step, factor


def continue_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict) -> None:
    """Load a scheduler's saved state, continuing its decay on this config's horizon.

    Same start and end as saved (an interrupted run resumed as it was): the saved state as it
    is, so a resumed run stays bit-identical to an uninterrupted one. Another end (the resume
    raised trainer.max_steps, and with it optim.total_steps): the LR the last completed step
    used, continued linearly to 0 at the new end (`LinearDecay`); the optimizer's rate for the
    next step is set from it at once. Checkpoints from before schedules were saved (their
    state holds no schedule) continue from the rate they hold: a decay that had reached 0 stays 0.
    """
    if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.load_state_dict(state)
        return
    saved = list(state.get("lr_lambdas") or [None] * len(scheduler.lr_lambdas))
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(saved)})  # counters and rates, not the schedule
    steps = scheduler.last_epoch
    for index, (schedule, group) in enumerate(zip(scheduler.lr_lambdas, scheduler.optimizer.param_groups)):
        if not isinstance(schedule, LinearDecay):
            continue
        old = saved[index]
        if old is not None and (old["start"], old["end"]) == (schedule.start, schedule.end):
            schedule.__dict__.update(old)  # the same horizon: exactly the saved schedule
            continue
        if old is not None:
            previous = LinearDecay(**old)
            schedule.continue_from(step=steps - 1, factor=previous(steps - 1))
        else:
            base_lr = scheduler.base_lrs[index]
            if group["lr"] == base_lr * schedule(steps):  # as LambdaLR computed it: the same schedule
                continue
            schedule.continue_from(step=steps, factor=float(group["lr"]) / base_lr if base_lr else 0.0)
        group["lr"] = scheduler.base_lrs[index] * schedule(steps)
        scheduler._last_lr[index] = group["lr"]


def rebase_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, base_lrs: list[float]) -> None:
    """Give a loaded schedule the configured base rates (a resume with another optim.lr): the
    rate for the next step is the new base times the schedule's current factor. Same bases as
    saved: nothing changes, so a plain resume stays bit-identical."""
    for index, (group, base_lr) in enumerate(zip(scheduler.optimizer.param_groups, base_lrs)):
        old = scheduler.base_lrs[index]
        if not _differs(old, base_lr):
            continue
        scheduler.base_lrs[index] = group["initial_lr"] = base_lr
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            group["lr"] = base_lr * scheduler.lr_lambdas[index](scheduler.last_epoch)
        else:
            group["lr"] = group["lr"] * base_lr / old if old else base_lr
        scheduler._last_lr[index] = group["lr"]


def start_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, *, step: int, base_lrs: list[float]) -> None:
    """A schedule the checkpoint did not have (`resume=RUN optim.decay=linear`), begun at `step`
    from the configured rates as they were (constant until then): `continue_schedule` as for a
    checkpoint whose state holds no schedule, so the decay applies as it is if it has not begun
    by `step`, and otherwise runs from the full rate at `step` straight to 0 at its end."""
    for group, base_lr in zip(scheduler.optimizer.param_groups, base_lrs):
        group["lr"] = group["initial_lr"] = base_lr
    lambdas = getattr(scheduler, "lr_lambdas", [])
    state = {**scheduler.state_dict(), "base_lrs": list(base_lrs), "_last_lr": list(base_lrs), "last_epoch": step,
             "_step_count": step + 1, "lr_lambdas": [None] * len(lambdas)}
    continue_schedule(scheduler, state)


def _differs(a: Any, b: Any) -> bool:
    """Hyperparameter values compared as values: betas saved as a tuple equal the config's list."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return tuple(a) != tuple(b)
    return a != b


def linear_decay_schedulers(
    optimizers: dict[str, torch.optim.Optimizer], *, decay: str, decay_start: float, total_steps: int
) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """LambdaLR schedulers of `LinearDecay`: constant until decay_start * total_steps, then linearly to 0 at total_steps."""
    if decay == "none":
        return {}
    if decay != "linear":
        raise GanrunError(f"optim.decay must be none or linear, got {decay!r}")
    if not 0.0 <= decay_start < 1.0:
        raise GanrunError(f"optim.decay_start must be a fraction in [0, 1), got {decay_start}")
    start = int(decay_start * total_steps)
    return {
        name: torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(start=start, end=total_steps))
        for name, optimizer in optimizers.items()
    }
