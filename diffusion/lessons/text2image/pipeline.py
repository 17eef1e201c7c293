"""Lesson 6: text-to-image through diffusers pipelines, with every step on record.

One code path serves every model: our embedded tiny Stable Diffusion
(``assets/models/tiny-shapes-sd``, trained by ``python -m diffusion.train
text2image``) and real hub models (SD 1.x/2.x, SD-Turbo, SDXL) for online users.
Pipelines come from diffusers' auto-pipeline API, safetensors only.

A run is one pipeline call (Stable Diffusion, Rombach et al. 2022) in latent space::

    c = E_text(prompt),  z_T ~ N(0, I)                       (text-to-image)
    z_t = √ᾱ_t E_vae(x) + √(1-ᾱ_t) ε,  t = t(strength)      (image-to-image, SDEdit, Meng et al. 2022)
    ε̃ = ε_θ(z_t, t, ∅) + w (ε_θ(z_t, t, c) - ε_θ(z_t, t, ∅))  (classifier-free guidance, Ho & Salimans 2022)
    z_{t-1} = scheduler.step(ε̃, t, z_t)                      (DDIM, DDPM, Euler, DPM-Solver++, LCM)
    x = D_vae(z_0)

The run follows the contract of :mod:`diffusion.reverse`, like lesson 4's sampler: one
:class:`~diffusion.reverse.StepInfo` per step (the latent z_t the network saw, the
scheduler's predicted clean latent ẑ_0 and ε̃), recorded by wrapping the run's own
scheduler's ``step``; the pipeline's public ``callback_on_step_end`` reports each finished
step and stops the run when asked (diffusers' interrupt flag). Latents are recorded, not
pictures: a frame is decoded with the VAE only when someone looks at it. With ``attention``,
the UNet's cross-attention per prompt word is recorded too (DAAM, :mod:`.attention`).
A pipeline loaded with its content filter (:mod:`.safety`) has its final pictures checked
here, and every x̂₀ frame when it is decoded.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
from diffusers import AutoPipelineForImage2Image
from PIL import Image

from diffusion.errors import InputError
from diffusion.lessons.text2image.attention import AttentionMaps, AttentionRecorder, ensure_installed, recording
from diffusion.lessons.text2image.request import EMBEDDED, SCHEDULERS, T2IRequest
from diffusion.lessons.text2image.safety import SafetyFilter, Verdicts, pipe_filter, screen_images, screen_x0
from diffusion.reverse import Recorder, StepCallback, StepInfo, StopFlag, Trajectory, should_stop
from diffusion.schedule import display_t


def default_side(pipe: Any) -> int:
    """The image side the model was trained at (UNet sample size × VAE scale factor)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def is_lcm(pipe: Any) -> bool:
    """Whether the model ships an LCM scheduler (an LCM-distilled model)."""
    return type(pipe.scheduler).__name__ == "LCMScheduler"


def make_scheduler(name: str, base_config: Any) -> Any:
    """A fresh scheduler of kind ``name`` from the model's own scheduler config."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **overrides)


def with_scheduler(pipe: Any, name: str) -> Any:
    """A pipeline object sharing ``pipe``'s weights with a fresh scheduler of kind ``name`` (``pipe`` is untouched)."""
    extra = {"requires_safety_checker": False} if "requires_safety_checker" in inspect.signature(
        type(pipe).__init__).parameters else {}
    run_pipe = type(pipe)(**{**pipe.components, "scheduler": make_scheduler(name, pipe.scheduler.config)}, **extra)
    run_pipe.set_progress_bar_config(disable=True)
    return run_pipe


def unknown_words(pipe: Any, prompt: str) -> list[str]:
    """Words of ``prompt`` that a small-vocabulary tokenizer (the embedded model's) has no token for.

    They are not an error: the model was trained to ignore made-up words. The UI lists them.
    A real CLIP vocabulary (tens of thousands of tokens) knows enough of every word: nothing is listed.
    """
    tokenizer = pipe.tokenizer
    if len(tokenizer) > 5000:
        return []
    words = re.findall(r"[^\W\d_]+|\d+", prompt.lower())
    unknown = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1
               or tokenizer(w, add_special_tokens=False).input_ids[0] == tokenizer.unk_token_id]
    return list(dict.fromkeys(unknown))


@dataclass(eq=False, kw_only=True)
class Generation(Trajectory):
    """A finished (or stopped) run: the images, and the recorded latents for scrubbing.

    Recorded frames are float16 CPU tensors ``(steps, B, C, h, w)`` in latent space.
    """

    request: T2IRequest
    model: str
    images: list[Image.Image]
    img2img: bool = False
    start_t: float | None = None  # the scheduler's first timestep (img2img starts there)
    fallback: str | None = None  # what was changed to finish the run (after running out of GPU memory)
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    # x̂₀ of each step already decoded (uint8 strips by step index), for a run whose VAE stayed
    # in a GPU process (ZeroGPU); a step without one shows only its latent.
    x0_pictures: dict[int, np.ndarray] | None = field(default=None, repr=False)
    # Cross-attention per prompt word, one map per recorded step (a run made with attention=True).
    attention: AttentionMaps | None = field(default=None, repr=False)
    # The content filter of a real model (None: none, or it stayed in the GPU process) and what
    # it said about each picture at each step; the latent view and the summary read the verdicts.
    content_filter: SafetyFilter | None = field(default=None, repr=False)
    verdicts: Verdicts | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded frames, the decoded pictures and the attention maps."""
        return super().nbytes + sum(p.nbytes for p in (self.x0_pictures or {}).values()) + \
            (self.attention.nbytes if self.attention is not None else 0)

    def x0_picture(self, info: StepInfo) -> np.ndarray | None:
        """The decoded x̂₀ of recorded step ``info`` (uint8 strip, screened by the content filter), or None."""
        if self.x0_pictures is not None:
            return self.x0_pictures.get(info.step)  # screened where they were decoded
        if self.decoder is None:
            return None
        return screen_x0(self.content_filter, self.verdicts, info.step, to_uint8(self.decoder(info.x0_pred)))

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers; ``start_t`` in the lessons' convention (:func:`~diffusion.schedule.display_t`)."""
        r = self.request
        return {"model": self.model, "scheduler": r.scheduler, "steps": r.num_inference_steps,
                "guidance_scale": r.guidance_scale, "seed": r.seed, "seconds": round(self.seconds, 3),
                "prompt": r.prompt, "negative_prompt": r.negative_prompt, "width": r.width, "height": r.height,
                "batch_size": r.batch_size, "steps_run": len(self), "stopped": self.stopped,
                "img2img": self.img2img, "strength": r.strength if self.img2img else None,
                "start_t": None if self.start_t is None else display_t(self.start_t), "device": self.device,
                "fallback": self.fallback, "attention": self.attention is not None,
                "content_filter": bool(self.verdicts is not None and self.verdicts.enabled),
                "blocked": self.verdicts.blocked() if self.verdicts is not None else [False] * len(self.images)}


class _StepRecorder:
    """Wraps a scheduler's ``step`` to see (z_t, ẑ_0, ε̃) of every step.

    The pipeline's public ``callback_on_step_end`` gives the latents after each step but
    neither the predicted clean latent ẑ_0 nor the noise prediction ε̃ (SD pipelines list
    only ``latents`` and the prompt embeddings as callback tensors), and the lesson shows
    both. So the run's own scheduler instance is wrapped, and the callback reports what it saw.
    """

    def __init__(self, scheduler: Any, record: bool) -> None:
        self.scheduler = scheduler
        self.recorder = Recorder(record)
        self._step = scheduler.step
        # The wrapper must show the scheduler's own signature: pipelines pass ``generator``
        # (and DDIM's ``eta``) only to a ``step`` that declares them. Without it, DDPM and
        # the ancestral samplers drew their noise from torch's global generator, so the same
        # seed gave different pictures.
        scheduler.step = functools.wraps(self._step)(lambda *args, **kwargs: self.step(*args, **kwargs))

    def _alpha_bar(self, t: Any) -> float:
        cumprod = getattr(self.scheduler, "alphas_cumprod", None)
        if cumprod is None:
            return float("nan")
        index = int(round(float(t)))
        return float(cumprod[min(max(index, 0), len(cumprod) - 1)])

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        alpha_bar = self._alpha_bar(timestep)
        output = self._step(model_output, timestep, sample, *args, **kwargs)
        if isinstance(output, tuple):  # pipelines ask for return_dict=False: (prev_sample, x̂_0) where there is one
            x0 = output[1] if len(output) > 1 else None
        else:
            x0 = getattr(output, "pred_original_sample", None)
        if x0 is None and getattr(self.scheduler, "model_outputs", None):  # DPM-Solver++ keeps x̂_0 here
            x0 = self.scheduler.model_outputs[-1]
        if x0 is None:
            x0 = torch.full_like(sample, float("nan"))
        # Euler-type schedulers work on z_t / √ᾱ_t (k-diffusion's x = x_0 + σ ε, σ² = (1-ᾱ)/ᾱ):
        # record the z_t = √ᾱ_t x the network saw, like every other scheduler.
        x_t = sample * math.sqrt(alpha_bar) if self._k_space and math.isfinite(alpha_bar) else sample
        step = len(self.recorder)
        self.recorder.add(StepInfo(step=step, total=0, t=float(timestep), alpha_bar=alpha_bar,
                                   x_t=x_t.detach().to("cpu", torch.float16),
                                   x0_pred=x0.detach().to("cpu", torch.float16),
                                   eps_pred=model_output.detach().to("cpu", torch.float16)))
        return output

    @property
    def _k_space(self) -> bool:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0)) > 1.0


def generate(pipe: Any, request: T2IRequest, *, model: str = EMBEDDED, init_image: Image.Image | None = None,
             callback: StepCallback | None = None, stop: StopFlag | None = None,
             record: bool = True, attention: bool = False, verdicts: Verdicts | None = None) -> Generation:
    """Run one (validated) request through ``pipe``; see the module docstring.

    Args:
        pipe: A loaded text-to-image pipeline (:func:`load_pipeline`); it is not modified:
            the run uses its own pipeline object sharing the weights, with its own scheduler.
        request: What to generate, already :meth:`T2IRequest.validated`.
        init_image: With an image, image-to-image (SDEdit) at ``request.strength``.
        callback: Called after every step with the step's :class:`StepInfo` (CPU latents).
        stop: Polled after every step; True ends the run cleanly.
        record: Keep every step for scrubbing.
        attention: Record the cross-attention of every step per prompt word (:mod:`.attention`);
            the result's ``attention`` stays None where the UNet's attention processors are
            not diffusers' standard ones (recording is unavailable there).
        verdicts: What the content filter said about this run's previews so far (a new
            record when None or of another batch size).

    Returns:
        The images (PIL, the VAE's decoding of the last latent; with ``pipe``'s content filter,
        blocked ones replaced) and the recorded run.
    """
    if init_image is not None:
        scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        run_pipe = AutoPipelineForImage2Image.from_pipe(pipe, scheduler=scheduler)
        run_pipe.set_progress_bar_config(disable=True)
    else:
        run_pipe = with_scheduler(pipe, request.scheduler)
        scheduler = run_pipe.scheduler
    steps = _StepRecorder(scheduler, record)
    stopped = [False]
    maps = _attention_recorder(pipe, request) if attention else None

    def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if maps is not None:
            maps.end_step()
        latest = steps.recorder.latest
        if callback is not None and latest is not None:
            callback(replace(latest, step=i, total=p.num_timesteps, t=float(t)))
        if should_stop(stop, i + 1, p.num_timesteps):
            # diffusers' documented way to end a run early: the pipeline checks it before each step.
            p._interrupt = True
            stopped[0] = True
        return kwargs

    device = pipe.device
    generator = torch.Generator("cpu").manual_seed(request.seed)  # same noise on every device
    arguments = dict(prompt=request.prompt, negative_prompt=request.negative_prompt or None,
                     num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
                     num_images_per_prompt=request.batch_size, generator=generator,
                     callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    if init_image is not None:  # one prompt and one copy of the picture per output, as img2img expects
        picture = init_image.convert("RGB").resize((request.width, request.height), Image.Resampling.LANCZOS)
        arguments.update(prompt=[request.prompt] * request.batch_size, image=[picture] * request.batch_size,
                         negative_prompt=[request.negative_prompt] * request.batch_size
                         if request.negative_prompt else None,
                         num_images_per_prompt=1, strength=request.strength)
    else:
        arguments.update(width=request.width, height=request.height)
    start = time.perf_counter()
    with torch.inference_mode(), recording(maps):
        images = run_pipe(**arguments).images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    vae = pipe.vae
    recorded = steps.recorder.fields()
    content_filter = pipe_filter(pipe)
    if verdicts is None or verdicts.batch != len(images):
        verdicts = Verdicts(len(images), enabled=content_filter is not None)
    images = screen_images(content_filter, verdicts, images)
    return Generation(**recorded, request=request, model=model, images=images, seconds=seconds,
                      stopped=stopped[0], img2img=init_image is not None,
                      start_t=float(recorded["timesteps"][0]) if len(recorded["timesteps"]) else None,
                      device=str(device), decoder=lambda z: decode_latents(vae, z),
                      attention=maps.result() if maps is not None else None,
                      content_filter=content_filter, verdicts=verdicts)


def _attention_recorder(pipe: Any, request: T2IRequest) -> AttentionRecorder | None:
    """A recorder of ``request``'s cross-attention, or None where the pipeline's UNet cannot record."""
    unet, tokenizer = getattr(pipe, "unet", None), getattr(pipe, "tokenizer", None)
    if unet is None or tokenizer is None or not ensure_installed(unet):
        return None
    latent = (request.height // pipe.vae_scale_factor, request.width // pipe.vae_scale_factor)
    return AttentionRecorder(tokenizer, request.prompt, latent, request.batch_size, request.num_inference_steps)


def generate_within_memory(pipe: Any, request: T2IRequest, **kwargs: Any) -> Generation:
    """:func:`generate`, recovering from a GPU out-of-memory error instead of failing the server.

    The cache is emptied and a batch is retried one picture at a time; a single picture
    that does not fit is reported as a clear error, and the process keeps serving.

    Raises:
        InputError: ``out_of_memory`` when even one picture does not fit.
    """
    try:
        return generate(pipe, request, **kwargs)
    except torch.cuda.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if request.batch_size == 1:
            raise InputError("out_of_memory", "The GPU ran out of memory for a {w}×{h} picture; choose a smaller "
                             "size or fewer steps.", w=request.width, h=request.height) from None
    run = generate(pipe, replace(request, batch_size=1), **kwargs)
    run.request, run.fallback = request, "batch_size=1 (the GPU ran out of memory for the whole batch)"
    return run


def to_uint8(pictures: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` on [0, 1] → one ``(H, B·W, 3)`` uint8 strip."""
    strip = torch.cat(list(pictures), dim=2)
    return (strip.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``D_vae(z / scaling_factor)`` of CPU latents ``(B, C, h, w)``: pictures on [0, 1], ``(B, 3, H, W)`` float32."""
    parameter = next(vae.parameters())
    z = latents.to(parameter.device, parameter.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        z = z + shift
    pixels = vae.decode(z).sample
    return ((pixels.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
