"""Lesson 2: forward noising, q(x_t | x_0) step by step and in closed form.

The forward process of DDPM (Ho et al. 2020) adds Gaussian noise one step at a time
(eq. 2), ``q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I)``, and because Gaussians
compose, any step can be reached from the clean image in one jump (eq. 4),
``q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I)`` with ``ᾱ_t = Π_{s<=t} (1 - β_s)``.
The β schedules come from :class:`diffusers.DDPMScheduler`, and t follows the one
convention of :mod:`diffusion.schedule`: ``t = 0`` is the clean image, ``t = 1..T``
are the paper's steps. In a notebook::

    from diffusion.lessons import noising
    result = noising.forward_noise(x0, "cosine", 1000, t=300, seed=0)
    result.summary()

Modules: :mod:`~.schedules` (ᾱ, SNR tables), :mod:`~.forward` (eq. 4, the result),
:mod:`~.chain` (eq. 2 step by step), :mod:`~.display` (pixels, GIF), :mod:`~.validation`.

The math needs torch and diffusers; the histogram in :mod:`~.figures` does not, and the
drawing processes that import it load this package first. So the names below are
imported on first use (PEP 562), not with the package: the drawing processes stay small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusion.lessons.noising.chain import MAX_CHECKPOINTS, StepwiseChain
    from diffusion.lessons.noising.display import export_gif, forward_frames, to_display
    from diffusion.lessons.noising.forward import ForwardResult, forward_noise, noise_strip, q_sample
    from diffusion.lessons.noising.schedules import SCHEDULES, NoiseSchedule, get_schedule, make_scheduler
    from diffusion.lessons.noising.validation import LIMITS

# Where each public name lives (the same names as the imports above).
_SOURCES: dict[str, tuple[str, ...]] = {
    "chain": ("MAX_CHECKPOINTS", "StepwiseChain"),
    "display": ("export_gif", "forward_frames", "to_display"),
    "forward": ("ForwardResult", "forward_noise", "noise_strip", "q_sample"),
    "schedules": ("SCHEDULES", "NoiseSchedule", "get_schedule", "make_scheduler"),
    "validation": ("LIMITS",),
}

__all__ = [
    "LIMITS", "MAX_CHECKPOINTS", "SCHEDULES",
    "ForwardResult", "NoiseSchedule", "StepwiseChain",
    "export_gif", "forward_frames", "forward_noise", "get_schedule", "make_scheduler", "noise_strip", "q_sample",
    "to_display",
]


def __getattr__(name: str) -> Any:
    """Import the lesson's math the first time any of its names is used."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module_name, names in _SOURCES.items():
        module = importlib.import_module(f"{__name__}.{module_name}")
        globals().update({n: getattr(module, n) for n in names})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(__all__)
