"""Lesson 6: text to image through a diffusers pipeline, every step on record.

A notebook needs only this package and a pipeline::

    from diffusion.lessons import text2image as t2i
    from diffusion.models.pipelines import load_pipeline
    pipe = load_pipeline("assets/models/tiny-shapes-sd", safety=False)  # a real model: keep safety=True
    request = t2i.T2IRequest("a large red circle").validated(t2i.default_side(pipe))
    run = t2i.generate(pipe, request)
"""

from diffusion.lessons.text2image.pipeline import (
    Generation, decode_latents, default_side, generate, generate_within_memory, is_lcm, make_scheduler,
    unknown_words, with_scheduler,
)
from diffusion.lessons.text2image.attention import AttentionMaps, overlays
from diffusion.lessons.text2image.previews import (
    PREVIEW_SHARE, PreviewPacer, latent_picture, strength_to_timestep, to_uint8,
)
from diffusion.lessons.text2image.request import (
    EMBEDDED, LIMITS, MAX_PROMPT_CHARS, MAX_PIXELS, MAX_SIDE, MODEL_DEFAULTS, SCHEDULERS, SUGGESTED, ModelDefaults,
    T2IRequest, defaults_for, resolve_model,
)
from diffusion.models.pipelines import load_pipeline

__all__ = ["AttentionMaps", "EMBEDDED", "Generation", "LIMITS", "MAX_PIXELS", "MAX_PROMPT_CHARS", "MAX_SIDE",
           "MODEL_DEFAULTS", "ModelDefaults", "PREVIEW_SHARE", "PreviewPacer", "SCHEDULERS", "SUGGESTED",
           "T2IRequest", "decode_latents", "default_side", "defaults_for", "generate",
           "generate_within_memory", "is_lcm", "latent_picture", "load_pipeline", "make_scheduler", "overlays",
           "resolve_model", "strength_to_timestep", "to_uint8", "unknown_words", "with_scheduler"]
