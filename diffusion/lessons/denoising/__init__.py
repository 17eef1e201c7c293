"""Lesson 5: a diffusion model as a denoiser, side by side with the classical methods.

A notebook needs only this package::

    from diffusion.lessons import denoising
    den = denoising.load_denoiser("cpu")
    noisy = denoising.add_noise(clean_uint8, 25, seed=0)
    result = denoising.run_method("diffusion_one_step", noisy, 25, clean=clean_uint8, denoiser=den)
"""

from diffusion.lessons.denoising.compare import (
    DIFFUSION_METHODS, METHODS, Comparison, MethodResult, Progress, add_noise, compare_methods, run_method, score,
    summary, to_uint8,
)
from diffusion.lessons.denoising.denoiser import (
    COLOR_MODES, DEFAULT_COLOR, DiffusionDenoiser, MultiStepRun, choose_precision, from_channels, load_denoiser,
    to_channels,
)
from diffusion.lessons.denoising.upload import (
    DEFAULT_METHODS, DEFAULTS, LIMITS, Prepared, check_methods, check_zoom, load_upload, prepare,
)

__all__ = ["COLOR_MODES", "Comparison", "Progress", "compare_methods", "DEFAULTS", "DEFAULT_COLOR", "DEFAULT_METHODS", "DIFFUSION_METHODS", "DiffusionDenoiser",
           "LIMITS", "METHODS", "MethodResult", "MultiStepRun", "Prepared", "add_noise", "check_methods",
           "check_zoom", "choose_precision", "from_channels", "load_denoiser", "load_upload", "prepare",
           "run_method", "score", "summary", "to_channels", "to_uint8"]
