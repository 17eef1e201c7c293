"""Where model work runs: the one wrapper for GPU calls, and the device a lesson's model uses.

A model tab wraps its GPU work with :func:`gpu_task`, so the same code runs on a laptop,
a school server and a ZeroGPU Space (where the ``spaces`` package exists).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def gpu_task(duration: int = 60) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@spaces.GPU(duration=...)`` on a ZeroGPU Space; a no-op decorator elsewhere."""
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def model_device(device: str) -> str:
    """Where the digit model runs.

    On a ZeroGPU Space, CUDA only exists inside ``@spaces.GPU`` calls, which run in
    another process; this lesson's stop flag and run cache need one process, and the
    model is small, so it stays on the CPU there. Elsewhere it follows ``--device``.
    """
    return "cpu" if os.environ.get("SPACES_ZERO_GPU") else device
