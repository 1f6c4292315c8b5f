"""Device, precision, memory-format and compile decisions: pure functions, testable on CPU."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ganrun.errors import GanrunError

# helpers


def cpu_supports_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True on CPUs with native bf16 math (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_device(requested: str, *, cuda_available: bool, local_rank: int = 0, key: str = "trainer.device") -> torch.device:
    """`key` is the option as the command spells it (trainer.device for train, device for sample/eval)."""
    if requested == "cuda" and not cuda_available:
        raise GanrunError(f"{key}=cuda but no CUDA GPU is visible; use {key}=auto or cpu")
    if requested == "cuda" or (requested == "auto" and cuda_available):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass(frozen=True)
class PrecisionPolicy:
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    grad_scaler: bool


FP32 = PrecisionPolicy("fp32", None, False)
BF16 = PrecisionPolicy("bf16", torch.bfloat16, False)
FP16 = PrecisionPolicy("fp16", torch.float16, True)


def choose_precision(
    requested: str,
    *,
    device_type: str,
    cuda_capability: tuple[int, int] | None = None,
    cpu_bf16: bool = False,
) -> PrecisionPolicy:
    """auto: bf16 autocast where the hardware computes in bf16 (Ampere+ GPUs, CPUs with
    AVX512-BF16/AMX), fp16 with a GradScaler on older GPUs, fp32 otherwise."""
    if requested == "fp32":
        return FP32
    if requested == "fp16":
        if device_type != "cuda":
            raise GanrunError("trainer.precision=fp16 needs a CUDA GPU; use trainer.precision=bf16 or fp32 on CPU")
        return FP16
    if requested == "bf16":
        if device_type == "cuda" and cuda_capability is not None and cuda_capability < (8, 0):
            raise GanrunError(
                f"trainer.precision=bf16 needs an Ampere or newer GPU (compute capability 8.0+), "
                f"this one is {cuda_capability[0]}.{cuda_capability[1]}; use trainer.precision=fp16"
            )
        return BF16
    if device_type == "cuda":
        return BF16 if cuda_capability is not None and cuda_capability >= (8, 0) else FP16
    return BF16 if cpu_bf16 else FP32


def use_channels_last(enabled: bool, *networks: nn.Module) -> bool:
    """channels_last (NHWC) only helps convolutions; MLP families are left alone."""
    return enabled and any(
        isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) for network in networks for layer in network.modules()
    )


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
