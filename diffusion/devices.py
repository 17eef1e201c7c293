"""Device policy: CUDA, then Apple MPS, then CPU, unless the user asks for one."""

from __future__ import annotations

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
