"""The data a checkpoint is measured against (or reconstructs), rebuilt from its saved config."""

from __future__ import annotations

from typing import Optional

from ganrun.config import build
from ganrun.data.images import ImageData


def load_reference_data(dataset_cfg: dict, *, split: str, root: Optional[str]) -> ImageData:
    """The checkpoint's dataset (its config as a plain dict), switched to `split` when the dataset
    has splits and to `root` when given. Raises GanrunError when the data cannot be read."""
    options = {key: value for key, value in dataset_cfg.items() if key != "source"}
    if "split" in options:
        options["split"] = split
    if root is not None:
        options["root"] = root
    return build(options)
