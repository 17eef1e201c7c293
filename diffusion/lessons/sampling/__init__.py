"""Lesson 4: sampling the shipped digit model with DDPM, DDIM and other diffusers schedulers.

A notebook needs only this package::

    from diffusion.lessons import sampling
    from diffusion.models import registry
    unet, config = registry.load_unet_model("mnist")
    run = sampling.sample(unet, config, sampling.SampleRequest(sampler="ddim", seed=0))
"""

from diffusion.lessons.sampling.pictures import std_curve, to_uint8_grid
from diffusion.lessons.sampling.request import (
    DIGITS, LIMITS, NULL_CLASS, SAMPLERS, SampleRequest, class_labels, initial_noise, request_from_summary,
)
from diffusion.lessons.sampling.sampler import Trajectory, build_scheduler, guided_eps, sample
from diffusion.reverse import StepInfo

__all__ = ["DIGITS", "LIMITS", "NULL_CLASS", "SAMPLERS", "SampleRequest", "StepInfo", "Trajectory",
           "build_scheduler", "class_labels", "guided_eps", "initial_noise", "request_from_summary", "sample",
           "std_curve", "to_uint8_grid"]
