"""Lesson 7's anomaly score as one picklable call: a decoded picture, a method name, a device.

A GPU call on a ZeroGPU Space runs in another process (:mod:`diffusion.serving.gpu`): it
gets plain arguments, loads the model there (the registry caches it per process) and
returns the whole :class:`~.anomaly.AnomalyResult` (numbers and numpy arrays, picklable).
One score is one short call, so there is nothing to stop between and no partial result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from diffusion.lessons.applications import anomaly
from diffusion.lessons.applications.anomaly import DEFAULT_SETTINGS, AnomalyResult

GPU_S_DIFFUSION = 0.05 + 1e-4 * len(DEFAULT_SETTINGS.timesteps) * DEFAULT_SETTINGS.draws * 10  # one batch of 100
GPU_S_AUTOENCODER = 0.01
CPU_S = {"diffusion": 0.45, "autoencoder": 0.01}  # first guesses on a 2-core CPU; the job queue corrects them


def gpu_seconds(method: str) -> float:
    """GPU seconds of one score, for the GPU call's ``duration``."""
    return GPU_S_DIFFUSION if method == "diffusion" else GPU_S_AUTOENCODER


def cpu_seconds(method: str) -> float:
    """A first guess of one score's seconds on a CPU."""
    return CPU_S.get(method, CPU_S["diffusion"])


def score_call(*, picture: np.ndarray, method: str, false_alarm_rate: float, device: str,
               callback: Callable[[Any], None] | None = None,
               stop: Callable[[], bool] | None = None) -> AnomalyResult:
    """:func:`~.anomaly.score_picture` with the shipped models on ``device`` (the run contract's signature)."""
    return anomaly.score_picture(picture, method=method, false_alarm_rate=false_alarm_rate, device=device)
