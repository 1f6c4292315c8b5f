"""A run's parts rebuilt from its checkpoint file alone: the task it belongs to, and the recipe
with its trained networks (what `ganrun eval` and `ganrun sample` measure and draw)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ganrun.config import build
from ganrun.data.toy import scatter_reference_for
from ganrun.errors import GanrunError
from ganrun.loop.checkpoint import load_checkpoint
from ganrun.recipes.base import Recipe


def task_of(config: dict | DictConfig) -> Any:
    """The task object (ganrun.tasks.*) a run's config names in `task._target_`."""
    return build(config["task"])


def rebuild_from_checkpoint(path: Path, *, device: torch.device, use_ema: bool = True) -> tuple[Recipe, torch.nn.Module, DictConfig]:
    """(recipe with every network loaded, its generator (G_ema's weights when `use_ema`), the
    run's config), from nothing but the checkpoint file. Networks are in eval mode on `device`."""
    checkpoint = load_checkpoint(path)
    config = OmegaConf.create(checkpoint["config"])
    recipe: Recipe = build(config.model, loss=build(config.loss), optim=build(config.optim))
    generator = recipe.generator
    try:
        # Every network, not only G: recipes with an encoder render reconstructions G(E(x)).
        for name, network in recipe.networks.items():
            network.load_state_dict(checkpoint["recipe"]["networks"][name])
        if use_ema:
            generator.load_state_dict(checkpoint["G_ema"])
    except (RuntimeError, KeyError) as error:
        raise GanrunError(f"{path}: the network weights do not fit its own config ({str(error).splitlines()[0]})") from None
    for network in recipe.networks.values():
        network.to(device).eval().requires_grad_(False)
    # Scatter plots of 2-D outputs draw the data's mode rings, rebuilt from the config alone.
    recipe.scatter_reference = scatter_reference_for(checkpoint["config"]["dataset"])
    return recipe, generator, config
