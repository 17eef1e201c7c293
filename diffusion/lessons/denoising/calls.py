"""Lesson 5's network work as picklable calls, and :class:`CallingDenoiser`, which routes a comparison's calls.

On a ZeroGPU Space the network runs in another process (:mod:`diffusion.serving.gpu`),
while the classical methods, scoring and drawing stay in the main one. The comparison
(:func:`~diffusion.lessons.denoising.compare_methods`) takes any object with the
denoiser's ``one_step``/``multi_step``/``levels``; :class:`CallingDenoiser` is one whose
two methods go through a ``call`` function the serving layer gives it. :func:`rebuilt`
makes the multi-step run of a loop stopped after the steps received, as
:meth:`DiffusionDenoiser.multi_step` returns it when stopped there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffusion.lessons.denoising.denoiser import (
    DEFAULT_COLOR, DiffusionDenoiser, MultiStepRun, finish_multi_step, load_denoiser, multi_step_grid, to_channels,
)
from diffusion.models.denoiser_net import NoiseLevels, sigma_to_model
from diffusion.reverse import Recorder, StepInfo

GPU_S_PER_MEGAPIXEL_STEP = 0.05  # a generous guess for a GPU call's duration (one network pass on 1 MP)


def one_step(*, noisy: np.ndarray, sigma_255: float, color: str, device: str,
             callback: Any = None, stop: Any = None) -> np.ndarray:
    """:meth:`DiffusionDenoiser.one_step` of the shipped denoiser on ``device``."""
    return load_denoiser(device).one_step(noisy, sigma_255, color)


def multi_step(*, noisy: np.ndarray, sigma_255: float, steps: int, eta: float, seed: int, color: str, device: str,
               callback: Callable[[StepInfo], None] | None = None,
               stop: Callable[[], bool] | None = None) -> MultiStepRun:
    """:meth:`DiffusionDenoiser.multi_step` of the shipped denoiser on ``device``."""
    return load_denoiser(device).multi_step(noisy, sigma_255, steps=steps, eta=eta, seed=seed, color=color,
                                            callback=callback, stop=stop)


def rebuilt(kwargs: dict[str, Any], steps: list[StepInfo], seconds: float, *, levels: NoiseLevels) -> MultiStepRun:
    """The :func:`multi_step` run stopped after ``steps`` (CPU copies with ``x_next``), built here.

    ``levels`` are the denoiser's noise levels (its schedule), the same in both processes.
    """
    planes, factors = to_channels(kwargs["noisy"], kwargs["color"])
    y = torch.from_numpy(planes).float()[:, None]
    grid, abars = multi_step_grid(levels, sigma_to_model(kwargs["sigma_255"]) * factors, kwargs["steps"])
    recorder = Recorder(dtype=torch.float32)
    for info in steps:
        recorder.add(info)
    return finish_multi_step(recorder, steps[-1].x_next, y, grid, abars, len(steps), levels, kwargs["sigma_255"],
                             kwargs["color"], seconds=seconds, stopped=len(steps) < kwargs["steps"],
                             device=str(torch.device(kwargs["device"])))


def gpu_seconds(noisy: np.ndarray, steps: int = 1) -> float:
    """A GPU call's expected seconds for ``steps`` network passes over ``noisy``."""
    return GPU_S_PER_MEGAPIXEL_STEP * steps * noisy.shape[0] * noisy.shape[1] / 1e6


class CallingDenoiser:
    """The shipped denoiser, its network passes made by ``call`` (a GPU call on ZeroGPU).

    Args:
        local: The denoiser loaded in this process: its noise levels and precision are
            plain numbers; its network is not used here.
        device: Where the calls run the network.
        call: ``call(fn, kwargs, gpu_s, partial, callback, stop)`` runs ``fn`` (one of this
            module's functions) and returns its result.
    """

    def __init__(self, local: DiffusionDenoiser, device: str, call: Callable[..., Any]) -> None:
        self.levels, self.precision, self.sigma_max_255 = local.levels, local.precision, local.sigma_max_255
        self._device, self._call = device, call

    def one_step(self, noisy: np.ndarray, sigma_255: float, color: str = DEFAULT_COLOR) -> np.ndarray:
        """Tweedie's one-step estimate, computed by a call."""
        if sigma_255 <= 0:
            return noisy.astype(np.float64, copy=True)
        return self._call(one_step, {"noisy": noisy, "sigma_255": sigma_255, "color": color, "device": self._device},
                          gpu_seconds(noisy), None, None, None)

    def multi_step(self, noisy: np.ndarray, sigma_255: float, steps: int = 10, eta: float = 0.0, seed: int = 0,
                   color: str = DEFAULT_COLOR, callback: Callable[[StepInfo], None] | None = None,
                   stop: Callable[[], bool] | None = None) -> MultiStepRun:
        """The DDIM run, made by one call that streams its steps."""
        kwargs = {"noisy": noisy, "sigma_255": sigma_255, "steps": steps, "eta": eta, "seed": seed, "color": color,
                  "device": self._device}
        if sigma_255 <= 0:
            return multi_step(**kwargs)
        return self._call(multi_step, kwargs, gpu_seconds(noisy, steps),
                          functools.partial(rebuilt, levels=self.levels), callback, stop)
