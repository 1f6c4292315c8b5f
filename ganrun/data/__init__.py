"""Datasets and the training batch stream. Config `_target_`s name the loaders here
(`ganrun.data.load_mnist_family`, ...): images in memory or streamed from files (`images`),
toy 2-D mixtures (`toy`), paired low/high-resolution images (`paired_sr`), paired and unpaired
image-to-image translation data (`translation`, inputs made by `degrade`), and the reference
split a checkpoint's metrics are measured against (`reference`)."""

from ganrun.data.images import (
    Batches,
    ImageData,
    load_celeba,
    load_cifar10,
    load_image_folder,
    load_mnist_family,
)
from ganrun.data.paired_sr import load_paired_sr
from ganrun.data.toy import load_grid, load_ring
from ganrun.data.translation import load_paired, load_unpaired

__all__ = [
    "Batches",
    "ImageData",
    "load_celeba",
    "load_cifar10",
    "load_grid",
    "load_image_folder",
    "load_mnist_family",
    "load_paired",
    "load_paired_sr",
    "load_ring",
    "load_unpaired",
]
