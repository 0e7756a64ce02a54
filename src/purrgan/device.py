"""Where and how the networks run: the device, mixed precision, memory layout and torch.compile."""

from __future__ import annotations

import contextlib
import logging
import os
import platform

import torch
from torch import nn

from .errors import PurrganError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """Return the torch device for "auto", "cpu", "cuda" or "cuda:N", failing clearly when CUDA is missing."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PurrganError(f"--device {name} was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PurrganError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PurrganError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cpu_has_native_bf16() -> bool:
    """Return whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: nothing to gain either
        return False


def describe_device(device: torch.device) -> str:
    """Return the device's model in words (for run.json and benchmark tables), e.g. "AMD EPYC CPU, 2 cores"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:  # Linux names the CPU model only here; CPU figures differ 2x between models, so record it
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} CPU, {os.cpu_count()} cores"


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype for train.amp on device, or None for float32."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    if setting == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if setting == "bf16" else torch.float16


def tune_backends(device: torch.device, precision: torch.dtype | None, deterministic: bool = False) -> None:
    """Set CUDA's speed switches for a run: cuDNN's autotuner (a GAN's shapes never change) and TF32 for float32.

    Process-wide PyTorch settings, so the run's entry point calls this once; a CPU run changes nothing.
    TF32 keeps float32's range with a 10-bit mantissa in matrix products and convolutions, several
    times faster on Ampere and later; a bf16/fp16 run computes those in half precision already.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic  # the autotuner may pick non-deterministic algorithms
    if precision is None:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Return the autocast context for dtype (a no-op for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def memory_format(setting: str) -> torch.memory_format:
    """Return the memory layout for train.channels_last: NHWC unless turned off (faster with cuDNN and oneDNN)."""
    return torch.contiguous_format if setting in ("off", "false") else torch.channels_last


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """Return torch.compile(module) when enabled (compiled lazily, on the first call), else module itself.

    The first call must be the one training makes (train.warm_up_compiled): a trial on another
    signature (eval mode, no_grad, float32, another batch) only adds graphs that training then recompiles.
    """
    if not enabled:
        return module
    try:
        return torch.compile(module)
    except Exception as error:  # noqa: BLE001 - a PyTorch/Python pair without compile support: train eagerly
        log.warning("torch.compile is not available for %s (%s); training without compiling", type(module).__name__,
                    str(error).splitlines()[0][:200] if str(error) else type(error).__name__)
        return module
