"""Lesson 4's reverse (sampling) process: one loop over diffusers schedulers.

Sampling starts from pure noise x_T ~ N(0, I) and applies the learned reverse
step once per timestep of ``scheduler.timesteps``. Every sampler here shares
the same ε-network ε_θ(x_t, t, y); only the update rule differs:

* ``ddpm``: ancestral sampling, DDPM (Ho et al. 2020) Algorithm 2 / eq. 11::

      x_{t-1} = 1/sqrt(α_t) (x_t - β_t / sqrt(1 - ᾱ_t) ε_θ) + σ_t z,   z ~ N(0, I)

  (diffusers computes it as the posterior mean μ̃_t(x_t, x̂_0) of eq. 7, which is
  eq. 11 exactly as long as x̂_0 is not clipped to [-1, 1]).

* ``ddim``: DDIM (Song et al. 2021) eq. 12, deterministic for η = 0::

      x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε_θ + σ_t z,
      σ_t = η sqrt((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1})     (eq. 16)

  (the paper writes α_t for our ᾱ_t); η = 1 gives DDPM's noise level again. When the
  model's config clips x̂_0 to [-1, 1], ε_θ in the direction term is recomputed from the
  clipped x̂_0 (diffusers' ``use_clipped_model_output``), which keeps guided runs stable.

* ``euler_ancestral``: Euler steps in the noise level σ = sqrt((1 - ᾱ)/ᾱ) of Karras
  et al. 2022 (eq. 1), with fresh noise added each step (k-diffusion's
  ``sample_euler_ancestral``). It works on x_t / sqrt(ᾱ_t); ``scale_model_input``
  turns that back into the x_t the network was trained on, and that x_t is what
  is recorded, so every sampler's frames are on the same scale.
* ``dpm_solver``: DPM-Solver++(2M) (Lu et al. 2022), a second-order multistep ODE solver.

Every step also predicts the clean image with Tweedie's formula (Efron 2011;
DDPM eq. 15, DDIM eq. 12's "predicted x_0")::

      x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε_θ(x_t, t)) / sqrt(ᾱ_t)

Classifier-free guidance (Ho & Salimans 2022, eq. 6) mixes the conditional and
the unconditional ("no class", label :data:`NULL_CLASS`) predictions::

      ε̃ = ε_θ(x_t, ∅) + s (ε_θ(x_t, y) - ε_θ(x_t, ∅))

Our guidance scale s is the paper's 1 + w (diffusers' convention): s = 1 is the
plain conditional model, s = 0 the unconditional one, s > 1 pushes towards the
class. Both predictions come from ONE batched network call of size 2B.

Determinism: the initial noise is drawn on the CPU from ``torch.Generator``
seeded with ``request.seed`` (:mod:`~diffusion.lessons.sampling.request`) and moved to
the device afterwards, and the same generator then feeds every noisy step (DDPM, DDIM
with η > 0, Euler ancestral), as diffusers' pipelines do. The same request therefore
gives the same pixels on every run.

The loop follows the run contract of :mod:`diffusion.reverse`: it reports each step to
its callback, polls its stop flag and records a :class:`Trajectory`.

Images are ``(B, 1, 28, 28)`` tensors on the ``[-1, 1]`` scale (no padding, see
:mod:`diffusion.datasets.digits`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from diffusion import reverse
from diffusion.datasets.digits import NUM_CLASSES
from diffusion.devices import PRECISIONS, autocast
from diffusion.lessons.sampling.request import (
    LIMITS, NULL_CLASS, SAMPLERS, SampleRequest, class_labels,
)
from diffusion.reverse import StepCallback, StepInfo, StopFlag, as_number, finite, should_stop
from diffusion.schedule import display_t


@dataclass(eq=False, kw_only=True)
class Trajectory(reverse.Trajectory):
    """A finished (or stopped) sampling run, kept so a slider can scrub through it.

    Frames are float16 CPU tensors of shape ``(steps, B, 1, 28, 28)``, so the
    recording takes ``3 × 2 bytes × steps × B × 28 × 28``. Without recording they are
    empty and only ``samples`` and the per-step numbers are kept.
    """

    request: SampleRequest
    x_t_std: torch.Tensor            # (steps,) float32, pixel std of x_t, from full precision
    samples: torch.Tensor            # (B, C, H, W) float32, the last x reached
    labels: torch.Tensor             # (B,) int64, the class of each image
    precision: str = "fp32"          # the network's arithmetic (see diffusion.devices.choose_precision)

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers of the run (non-finite floats become ``None``)."""
        r = self.request
        return {
            "sampler": r.sampler, "num_inference_steps": r.num_inference_steps, "steps_run": len(self),
            "stopped": bool(self.stopped), "seconds": round(float(self.seconds), 4), "precision": self.precision,
            "digit": r.digit, "labels": [int(v) for v in self.labels],
            "guidance_scale": r.guidance_scale, "seed": r.seed,
            "eta": r.eta, "batch_size": r.batch_size, "device": self.device,
            "first_t": display_t(self.timesteps[0]) if len(self) else None,
            "last_t": display_t(self.timesteps[-1]) if len(self) else None,
            "x_t_std": [finite(v, 4) for v in self.x_t_std.tolist()],
            "sample_mean": finite(self.samples.mean().item(), 5),
            "sample_std": finite(self.samples.std().item(), 5),
        }


def build_scheduler(sampler: str, scheduler_config: Any, num_inference_steps: int,
                   device: torch.device | str = "cpu") -> Any:
    """A fresh scheduler of ``SAMPLERS[sampler]`` built from the model's config, timesteps set.

    Schedulers keep per-run state (step index, DPM-Solver's history), so every
    run gets its own.
    """
    scheduler = SAMPLERS[sampler].from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler


def guided_eps(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
               guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε_θ(x, ∅) + s (ε_θ(x, y) - ε_θ(x, ∅)) (Ho & Salimans 2022, eq. 6 with s = 1 + w).

    s = 1 runs the conditional model alone, s = 0 the unconditional one; any
    other s evaluates both in one network call on a batch of 2B.
    """
    if guidance_scale == 1.0:
        return unet(x, t, class_labels=labels).sample
    null = torch.full_like(labels, NULL_CLASS)
    if guidance_scale == 0.0:
        return unet(x, t, class_labels=null).sample
    both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, null])).sample
    eps_cond, eps_uncond = both.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def _alpha_bar(scheduler: Any, i: int, t: torch.Tensor) -> float:
    # σ-parameterised schedulers (Euler, DPM-Solver) keep σ_i = sqrt((1 - ᾱ)/ᾱ) per step,
    # which also covers Euler's fractional timesteps; the others index the ᾱ table.
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        sigma = float(sigmas[i])
        return 1.0 / (1.0 + sigma * sigma)
    return float(scheduler.alphas_cumprod[int(t)])


def sample(unet: torch.nn.Module, scheduler_config: Any, request: SampleRequest, *,
           device: torch.device | str = "cpu",
           callback: StepCallback | None = None,
           stop: StopFlag | None = None,
           record: bool = True,
           noise: torch.Tensor | None = None,
           labels: torch.Tensor | None = None,
           max_batch_size: int = LIMITS["batch_size"][1],
           precision: str = "fp32") -> Trajectory:
    """Generate digits with one loop over ``scheduler.timesteps``.

    Each step: scale the input (identity except for Euler), predict ε̃ with
    guidance (:func:`guided_eps`), apply the sampler's update (DDPM Algorithm 2 /
    eq. 11, DDIM eq. 12, …) through ``scheduler.step``, and take x̂_0 from the
    step's ``pred_original_sample`` or, where the scheduler gives none, from
    Tweedie's formula x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε̃) / sqrt(ᾱ_t).

    Args:
        unet: Class-conditional ε-network (``UNet2DModel`` with 11 class embeddings),
            already on ``device``.
        scheduler_config: The model's scheduler config (DDPM's β schedule and T).
        request: What to sample; validated here.
        device: Where the network runs.
        callback: Called with a :class:`StepInfo` after every step.
        stop: Polled after every step; returning True ends the run there
            (``Trajectory.stopped``).
        record: Keep every step's x_t, x̂_0 and ε̃ (see :class:`Trajectory`).
        noise: x_T to start from instead of the seeded draw, e.g. from
            :func:`initial_noise`; the seeded generator still feeds later steps.
        labels: The class of each image, ``(B,)`` integers in 0..9, instead of the
            request's ``digit`` (training previews draw a grid of every class).
        max_batch_size: Largest batch accepted (see :meth:`SampleRequest.validated`).
        precision: The network's arithmetic, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast
            around the network call only; the sampler's updates stay float32). See
            :func:`diffusion.devices.choose_precision` and the model card's figures.

    Returns:
        The :class:`Trajectory` of the run.

    Raises:
        InputError: For a bad request.
        ValueError: ``noise`` is not a finite tensor of the batch's shape.
    """
    request = request.validated(scheduler_config["num_train_timesteps"], max_batch_size)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    dtype = getattr(unet, "dtype", torch.float32)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    shape = (request.batch_size, unet.config.in_channels, *size)
    scheduler = build_scheduler(request.sampler, scheduler_config, request.num_inference_steps, device)

    generator = torch.Generator().manual_seed(request.seed)
    x_T = torch.randn(shape, generator=generator, dtype=torch.float32)  # also advances the generator
    if noise is not None:
        x_T = _check_noise(noise, shape)
    x = (x_T * scheduler.init_noise_sigma).to(device=device, dtype=dtype)
    labels = class_labels(request) if labels is None else _check_labels(labels, request.batch_size)
    labels_device = labels.to(device)
    step_kwargs: dict[str, Any] = {"generator": generator}
    if request.sampler == "ddim":
        # The direction term of eq. 12 uses the ε implied by the *clipped* x̂_0, so each step
        # stays on the line from x_t to a valid image, as DDPM's posterior mean does. With
        # the raw ε, guided runs (s > 1) gain pixel spread step after step and, on our
        # digit model, drift to the wrong class (accuracy 27% instead of 100% at s = 2).
        step_kwargs.update(eta=request.eta, use_clipped_model_output=True)

    timesteps = scheduler.timesteps
    total = len(timesteps)
    recorder = reverse.Recorder(record)
    stds, stopped = [], False

    start = time.perf_counter()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            x_in = scheduler.scale_model_input(x, t)
            with autocast(device, precision):
                eps = guided_eps(unet, x_in, t, labels_device, request.guidance_scale).to(x.dtype)
            out = scheduler.step(eps, t, x, **step_kwargs)
            alpha_bar = _alpha_bar(scheduler, i, t)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                x0 = (x_in - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
            info = StepInfo(step=i, total=total, t=as_number(t), alpha_bar=alpha_bar, x_t=x_in, x0_pred=x0,
                            eps_pred=eps, x_next=out.prev_sample)
            recorder.add(info)
            stds.append(x_in.float().std())
            if callback is not None:
                callback(info)
            x = out.prev_sample
            if should_stop(stop, i + 1, total):
                stopped = True
                break
    samples = x.detach().to("cpu", torch.float32).clone()
    seconds = time.perf_counter() - start
    return Trajectory(
        **recorder.fields(), request=request,
        x_t_std=torch.stack(stds).to("cpu", torch.float32).clone() if stds else torch.zeros(0),
        samples=samples, labels=labels, seconds=seconds, stopped=stopped, device=str(device), precision=precision,
    )


def _check_noise(noise: Any, shape: tuple[int, ...]) -> torch.Tensor:
    # Programming errors, not student input: the UI builds the noise with initial_noise.
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        raise ValueError(f"the starting noise must be a tensor of shape {shape}")
    noise = noise.detach().to("cpu", torch.float32)
    if not torch.isfinite(noise).all():
        raise ValueError("the starting noise contains NaN or infinite values")
    return noise




def _check_labels(labels: Any, batch_size: int) -> torch.Tensor:
    # Programming errors, not student input: the training previews pass their own grid.
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if labels.shape != (batch_size,) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must be {batch_size} classes in 0..{NUM_CLASSES - 1}")
    return labels
