"""Lesson 5: text-to-image through diffusers pipelines, with every step on record.

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

The run is recorded the way lesson 3 records its sampler (:class:`~diffusion.lessons.sampling.sampler.StepInfo`
per step: the latent z_t the network saw, the scheduler's predicted clean latent ẑ_0 and ε̃),
by wrapping the scheduler's ``step``; ``callback_on_step_end`` reports each finished step and
stops the run when asked (``pipe._interrupt``). Latents are recorded, not pictures: a frame is
decoded with the VAE only when someone looks at it.
"""

from __future__ import annotations

import inspect
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForText2Image,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
)
from PIL import Image

from diffusion.errors import InputError, check_choice, check_range
from diffusion.lessons.sampling.sampler import StepInfo

EMBEDDED = "embedded"
SUGGESTED = ("stabilityai/sd-turbo", "stable-diffusion-v1-5/stable-diffusion-v1-5",
             "stabilityai/stable-diffusion-2-1-base", "stabilityai/sdxl-turbo")
SCHEDULERS: dict[str, tuple[type, dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpm_solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "lcm": (LCMScheduler, {}),
}
MAX_PROMPT_CHARS = 1000
MAX_SIDE, MAX_PIXELS = 1024, 1024 * 1024
LIMITS = {"num_inference_steps": (1, 100), "guidance_scale": (0.0, 20.0), "seed": (0, 2**31 - 1),
          "batch_size": (1, 4), "strength": (0.05, 1.0), "side": (64, MAX_SIDE)}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


@dataclass(frozen=True)
class T2IRequest:
    """One generation. ``width``/``height`` 0 mean the model's own size; ``strength`` is used with an init image."""

    prompt: str = "a large red circle in the center on a white background"
    negative_prompt: str = ""
    num_inference_steps: int = 30
    guidance_scale: float = 5.0
    seed: int = 0
    scheduler: str = "ddim"
    width: int = 0
    height: int = 0
    batch_size: int = 1
    strength: float = 0.6

    def validated(self, default_side: int, lcm_model: bool = False) -> T2IRequest:
        """Checked, normalised copy; sizes filled in from the model and rounded down to multiples of 8.

        Raises:
            InputError: Any field out of range or of the wrong type.
        """
        prompt, negative = _text("prompt", self.prompt), _text("negative_prompt", self.negative_prompt)
        scheduler = check_choice("scheduler", self.scheduler, tuple(SCHEDULERS))
        if scheduler == "lcm" and not lcm_model:
            raise InputError("lcm_only", "The LCM scheduler only works with LCM-distilled models; "
                             "choose another scheduler.")
        sides = []
        for name, value in (("width", self.width), ("height", self.height)):
            side = int(check_range(name, value, 0, LIMITS["side"][1], integer=True))
            if side == 0:
                side = default_side
            elif side < LIMITS["side"][0]:
                raise InputError("out_of_range", "{name} must be between {lo} and {hi} (it is {value}).",
                                 name=name, lo=LIMITS["side"][0], hi=LIMITS["side"][1], value=side)
            sides.append(side // 8 * 8)
        return replace(
            self, prompt=prompt, negative_prompt=negative, scheduler=scheduler, width=sides[0], height=sides[1],
            num_inference_steps=int(check_range("num_inference_steps", self.num_inference_steps,
                                                *LIMITS["num_inference_steps"], integer=True)),
            guidance_scale=check_range("guidance_scale", self.guidance_scale, *LIMITS["guidance_scale"]),
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)),
            batch_size=int(check_range("batch_size", self.batch_size, *LIMITS["batch_size"], integer=True)),
            strength=check_range("strength", self.strength, *LIMITS["strength"]))


def _text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError("not_text", "{name} must be text.", name=name)
    value = "".join(ch for ch in value if ch.isprintable() or ch in "\n\t").strip()
    if len(value) > MAX_PROMPT_CHARS:
        raise InputError("prompt_too_long", "{name} is {n} characters long; the limit is {limit}.",
                         name=name, n=len(value), limit=MAX_PROMPT_CHARS)
    return value


def resolve_model(name: Any, embedded_path: Path, extra: tuple[str, ...] = (), allow_any: bool = False) -> str:
    """Map a model choice to what ``from_pretrained`` gets: the embedded folder, a local folder or a hub id.

    Args:
        name: ``"embedded"``, one of :data:`SUGGESTED` or ``extra`` (set by the operator,
            which may include local folders), or, with ``allow_any``, any hub id ``owner/name``.
            Paths typed by users are never accepted.
        embedded_path: The embedded model's folder.

    Raises:
        InputError: ``model_not_allowed`` for anything else.
    """
    if not isinstance(name, str) or not name.strip() or name.strip() == EMBEDDED:
        return str(embedded_path)
    name = name.strip()
    if name in SUGGESTED or name in extra:
        return name
    if allow_any and _HUB_ID.match(name) and ".." not in name:
        return name
    raise InputError("model_not_allowed", "The model {model} is not offered here. Choose one of the listed models "
                     "(the server's operator can allow others).", model=name[:80])


def load_pipeline(ref: str, device: torch.device | str = "cpu", offline: bool = False) -> Any:
    """``AutoPipelineForText2Image.from_pretrained(ref)`` with safetensors only, fp16 on CUDA.

    Raises:
        InputError: ``model_load_failed`` when the model is missing, offline, gated or corrupt.
    """
    device = torch.device(device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    local = Path(ref).is_dir()
    try:
        pipe = AutoPipelineForText2Image.from_pretrained(
            ref, use_safetensors=True, dtype=dtype, local_files_only=local or offline,
            safety_checker=None, requires_safety_checker=False)
    except Exception as error:  # noqa: BLE001 - network, missing files, bad configs: all "cannot load"
        reason = "no internet connection or not downloaded yet" if isinstance(error, OSError) and not local else \
            type(error).__name__
        raise InputError("model_load_failed", "The model {model} could not be loaded ({reason}). "
                         "The embedded model still works.", model=Path(ref).name if local else ref,
                         reason=reason) from error
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


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


@dataclass(eq=False)
class Generation:
    """A finished (or stopped) run: the images, and the recorded latents for scrubbing.

    Recorded frames are float16 CPU tensors ``(steps, B, C, h, w)`` in latent space.
    """

    request: T2IRequest
    model: str
    images: list[Image.Image]
    timesteps: list[float]
    alpha_bar: list[float]
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    eps: torch.Tensor
    seconds: float
    stopped: bool = False
    img2img: bool = False
    start_t: float | None = None
    device: str = "cpu"
    fallback: str | None = None  # what was changed to finish the run (after running out of GPU memory)
    decoder: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x_t, self.x0_pred, self.eps))

    def frame(self, i: int) -> StepInfo:
        """Step ``i`` as a :class:`StepInfo` of float32 latents."""
        i = int(check_range("step", i, 0, max(len(self) - 1, 0), integer=True))
        if not len(self):
            raise InputError("no_steps", "This run was stopped before its first step.")
        return StepInfo(step=i, total=len(self), t=self.timesteps[i], alpha_bar=self.alpha_bar[i],
                        x_t=self.x_t[i].float(), x0_pred=self.x0_pred[i].float(), eps_pred=self.eps[i].float())

    def summary(self) -> dict[str, Any]:
        r = self.request
        return {"model": self.model, "scheduler": r.scheduler, "steps": r.num_inference_steps,
                "guidance_scale": r.guidance_scale, "seed": r.seed, "seconds": round(self.seconds, 3),
                "prompt": r.prompt, "negative_prompt": r.negative_prompt, "width": r.width, "height": r.height,
                "batch_size": r.batch_size, "steps_run": len(self), "stopped": self.stopped,
                "img2img": self.img2img, "strength": r.strength if self.img2img else None,
                "start_t": self.start_t, "device": self.device, "fallback": self.fallback}


class _Recorder:
    """Wraps a scheduler's ``step`` to keep (z_t, ẑ_0, ε̃) of every step on the CPU."""

    def __init__(self, scheduler: Any, record: bool) -> None:
        self.scheduler, self.record = scheduler, record
        self.frames: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.timesteps: list[float] = []
        self.alpha_bar: list[float] = []
        self.latest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._step = scheduler.step
        scheduler.step = self.step

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
        frame = (x_t.detach().to("cpu", torch.float16), x0.detach().to("cpu", torch.float16),
                 model_output.detach().to("cpu", torch.float16))
        self.latest = frame
        self.timesteps.append(float(timestep))
        self.alpha_bar.append(alpha_bar)
        if self.record:
            self.frames.append(frame)
        return output

    @property
    def _k_space(self) -> bool:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0)) > 1.0


def generate(pipe: Any, request: T2IRequest, *, model: str = EMBEDDED, init_image: Image.Image | None = None,
             callback: Callable[[StepInfo], None] | None = None, stop: Callable[[], bool] | None = None,
             record: bool = True) -> Generation:
    """Run one (validated) request through ``pipe``; see the module docstring.

    Args:
        pipe: A loaded text-to-image pipeline (:func:`load_pipeline`); it is not modified:
            the run uses its own pipeline object sharing the weights, with its own scheduler.
        request: What to generate, already :meth:`T2IRequest.validated`.
        init_image: With an image, image-to-image (SDEdit) at ``request.strength``.
        callback: Called after every step with the step's :class:`StepInfo` (CPU latents).
        stop: Polled after every step; True ends the run cleanly.
        record: Keep every step for scrubbing.

    Returns:
        The images (PIL, the VAE's decoding of the last latent) and the recorded run.
    """
    if init_image is not None:
        scheduler = make_scheduler(request.scheduler, pipe.scheduler.config)
        run_pipe = AutoPipelineForImage2Image.from_pipe(pipe, scheduler=scheduler)
        run_pipe.set_progress_bar_config(disable=True)
    else:
        run_pipe = with_scheduler(pipe, request.scheduler)
        scheduler = run_pipe.scheduler
    recorder = _Recorder(scheduler, record)
    stopped = [False]

    def on_step_end(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if callback is not None and recorder.latest is not None:
            x_t, x0, eps = recorder.latest
            callback(StepInfo(step=i, total=p.num_timesteps, t=float(t),
                              alpha_bar=recorder.alpha_bar[-1], x_t=x_t, x0_pred=x0, eps_pred=eps))
        if stop is not None and stop():
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
    with torch.inference_mode():
        images = run_pipe(**arguments).images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    empty = torch.empty(0)
    stack = (lambda k: torch.stack([f[k] for f in recorder.frames])) if recorder.frames else (lambda k: empty)
    vae = pipe.vae
    return Generation(request=request, model=model, images=list(images), timesteps=recorder.timesteps,
                      alpha_bar=recorder.alpha_bar, x_t=stack(0), x0_pred=stack(1), eps=stack(2),
                      seconds=seconds, stopped=stopped[0], img2img=init_image is not None,
                      start_t=recorder.timesteps[0] if recorder.timesteps else None, device=str(device),
                      decoder=lambda z: decode_latents(vae, z))


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


PREVIEW_SHARE = 0.05  # at most ~5 % of a run's time goes into VAE-decoding live previews


class PreviewPacer:
    """Keeps the VAE decoding of live x̂₀ previews to a small share of the run's time.

    The latent preview (:func:`latent_picture`) is nearly free and shown every
    frame; decoding x̂₀ costs a VAE pass, which on a tiny model is as slow as the
    whole denoising step and on Stable Diffusion at 512² is not cheap either. The
    first preview is always decoded; after that a frame is decoded only while the
    decoding time so far stays within ``share`` × the time since the run started,
    so small models decode often and big ones every few seconds, without tuning.
    """

    def __init__(self, share: float = PREVIEW_SHARE, clock: Callable[[], float] = time.perf_counter) -> None:
        self.share, self._clock = share, clock
        self.start, self.spent, self.decoded = clock(), 0.0, 0

    def due(self) -> bool:
        """Whether the next preview may be decoded."""
        return self.spent <= self.share * (self._clock() - self.start)

    def decode(self, decoder: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor) -> np.ndarray:
        """``decoder(latents)`` as a uint8 strip, its time counted."""
        begin = self._clock()
        picture = to_uint8(decoder(latents))
        self.spent += self._clock() - begin
        self.decoded += 1
        return picture


def latent_picture(latents: torch.Tensor) -> np.ndarray:
    """A look inside latent space: the first three channels as RGB, each stretched to its ±3σ range.

    ``(B, C, h, w)`` → one ``(h, B·w, 3)`` uint8 strip.
    """
    z = latents.float()[:, :3]
    if z.shape[1] < 3:
        z = torch.cat([z, z[:, -1:].expand(-1, 3 - z.shape[1], -1, -1)], dim=1)
    spread = z.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    z = (z - z.mean(dim=(0, 2, 3), keepdim=True)) / (3 * spread)
    picture = ((z.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return torch.cat(list(picture), dim=2).permute(1, 2, 0).numpy()


def to_uint8(pictures: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` on [0, 1] → one ``(H, B·W, 3)`` uint8 strip."""
    strip = torch.cat(list(pictures), dim=2)
    return (strip.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def strength_to_timestep(pipe: Any, scheduler_name: str, num_inference_steps: int, strength: float) -> dict[str, Any]:
    """Where image-to-image starts: the first timestep and its ᾱ, exactly as the img2img pipeline picks them.

    diffusers keeps the last ``int(steps × strength)`` steps of the schedule, so
    the run starts from z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε at that step's t (lesson 2's closed form).
    """
    scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = (num_inference_steps - kept) * getattr(scheduler, "order", 1)
    if kept == 0:
        return {"steps_run": 0, "t": None, "alpha_bar": None}
    t = float(scheduler.timesteps[start])
    cumprod = pipe.scheduler.alphas_cumprod if hasattr(pipe.scheduler, "alphas_cumprod") else None
    alpha_bar = float(cumprod[int(round(t))]) if cumprod is not None else None
    return {"steps_run": kept, "t": t, "alpha_bar": alpha_bar}
