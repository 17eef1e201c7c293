"""Device policy: CUDA, then Apple MPS, then CPU, unless the user asks for one."""

from __future__ import annotations

import contextlib
import os

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def mps_available() -> bool:
    """Whether Apple's Metal backend can be used."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(preference: str = "auto") -> torch.device:
    """Pick the device that computations run on.

    Args:
        preference: ``auto`` (cuda, then mps, then cpu) or one device name.

    Returns:
        The chosen :class:`torch.device`.

    Raises:
        ValueError: The preference is unknown or that device is not available here.
    """
    if preference not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}")
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but no CUDA GPU is available")
    if preference == "mps" and not mps_available():
        raise ValueError("MPS was requested but Apple's Metal backend is not available")
    return torch.device(preference)


def describe_device(device: torch.device) -> str:
    """A short human-readable name, e.g. ``cuda (NVIDIA H100)`` or ``cpu (8 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def server_threads(cores: int | None = None) -> int:
    """torch CPU threads per model job when serving a class: half the cores, at most 4.

    The app's models are small: run from a worker thread (as the server runs them), more
    threads make lessons 4 and 6 slower, because OpenMP hands every tiny operation to a
    thread that has to be woken; only lesson 5's denoiser gains a little. One thread per
    job also leaves the other cores to the heat-equation and noising requests of the rest
    of the class. ``python -m diffusion.bench text2image`` and ``sampling`` show the effect.
    """
    cores = cores or os.cpu_count() or 1
    return max(1, min(4, cores // 2))


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device | str, precision: str):
    """The autocast context of ``precision`` on ``device`` (a do-nothing context for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def choose_precision(device: torch.device | str, precision: str = "auto") -> str:
    """The network's precision: ``auto`` takes bf16 where the hardware computes it natively.

    On a CPU with AVX-512 BF16 or AMX, bf16 convolutions are much cheaper than fp32 and
    leave the results practically unchanged (the model cards of the digit model and the
    denoiser have the figures); elsewhere bf16 would be emulated and slower, so ``auto``
    keeps fp32. On CUDA ``auto`` is fp16.
    """
    device = torch.device(device)
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}")
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, lambda: False) for name in
                  ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if any(check() for check in native):
            return "bf16"
    return "fp32"
