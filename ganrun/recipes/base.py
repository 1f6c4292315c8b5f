"""What the loop hands a recipe (`Stepper`) and what a recipe offers the loop (`Recipe`).

The loop owns AMP, gradient scaling, EMA, logging, sampling, checkpoints and resume; a recipe
owns its networks and optimizers and says, in `train_step`, which terms to minimize with
which optimizer. A new family is a new recipe, never a new branch in the loop.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


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
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)


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

    # The network whose EMA copy the loop keeps and samples from.
    generator_name = "G"

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

    def load_state_dict(self, state: dict) -> None:
        for name, network in self.networks.items():
            network.load_state_dict(state["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])

    # the family's side

    def train_step(self, batch: dict[str, torch.Tensor], stepper: Stepper) -> dict[str, torch.Tensor]:
        """One training step; returns detached loss terms named `NET/term`."""
        raise NotImplementedError

    def grid_inputs(self, n: int, *, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Fixed inputs for sample grids (drawn once, on CPU, from a seeded generator)."""
        raise NotImplementedError

    def render(self, G: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] from the generator and grid inputs."""
        raise NotImplementedError
