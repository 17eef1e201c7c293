"""Reverse (sampling) process for lesson 3: one loop over diffusers schedulers.

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
seeded with ``request.seed`` and moved to the device afterwards, and the same
generator then feeds every noisy step (DDPM, DDIM with η > 0, Euler ancestral),
as diffusers' pipelines do. Random digits come from a second generator derived
from the seed. The same request therefore gives the same pixels on every run,
and the CPU and a GPU start from the same x_T.

Images are ``(B, 1, 28, 28)`` tensors on the ``[-1, 1]`` scale (no padding, see
:mod:`diffusion.datasets.digits`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
)

from diffusion.datasets.digits import IMAGE_SIZE, NUM_CLASSES
from diffusion.errors import InputError, check_choice, check_range

SAMPLERS: dict[str, type] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
}
NULL_CLASS = NUM_CLASSES  # label 10: "no class", the unconditional model
DIGITS = ("random",) + tuple(str(d) for d in range(NUM_CLASSES))
LIMITS = {"batch_size": (1, 16), "guidance_scale": (0.0, 10.0), "eta": (0.0, 1.0),
          "seed": (0, 2**32 - 1)}


@dataclass(frozen=True)
class SampleRequest:
    """What the student asks for. Call :meth:`validated` before use.

    ``eta`` (DDIM's η) is used by ``ddim`` only; ``digit`` is ``"0"``-``"9"`` or
    ``"random"`` (each image gets its own random class).
    """

    sampler: str = "ddim"
    num_inference_steps: int = 50
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 16
    digit: str = "random"
    guidance_scale: float = 1.5

    def validated(self, num_train_timesteps: int, max_batch_size: int = LIMITS["batch_size"][1]) -> SampleRequest:
        """A checked copy with plain Python types.

        Args:
            num_train_timesteps: T of the model's scheduler; at most T steps can be run.
            max_batch_size: Largest batch accepted; the app's cap unless an offline tool
                (evaluation) asks for more.

        Returns:
            A new request. For samplers other than ``ddim`` its ``eta`` is 0.0,
            since η has no effect there (a hidden slider may still send a value).

        Raises:
            InputError: ``bad_choice`` (sampler), ``bad_digit``, or ``not_a_number`` /
                ``not_an_integer`` / ``out_of_range`` naming the field.
        """
        big_t = int(check_range("num_train_timesteps", num_train_timesteps, 1, 100_000, integer=True))
        sampler = check_choice("sampler", self.sampler, tuple(SAMPLERS))
        eta = check_range("eta", self.eta, *LIMITS["eta"])
        return SampleRequest(
            sampler=sampler,
            num_inference_steps=int(check_range("num_inference_steps", self.num_inference_steps,
                                                1, big_t, integer=True)),
            eta=float(eta) if sampler == "ddim" else 0.0,
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)),
            batch_size=int(check_range("batch_size", self.batch_size, LIMITS["batch_size"][0],
                                       max(1, int(max_batch_size)), integer=True)),
            digit=_parse_digit(self.digit),
            guidance_scale=float(check_range("guidance_scale", self.guidance_scale,
                                             *LIMITS["guidance_scale"])),
        )


def _parse_digit(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(int(value))
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in DIGITS:
        raise InputError("bad_digit", "digit must be 'random' or one of 0-9 (got {value}).",
                         value=str(value)[:40])
    return text


@dataclass
class StepInfo:
    """The callback payload of one step (the k-diffusion pattern).

    Tensors are ``(B, C, H, W)``. In the callback they live on the sampling
    device and must not be modified; :meth:`Trajectory.frame` returns float32
    CPU copies.

    Attributes:
        step: Index of this step, 0 .. total - 1.
        total: Number of steps of the run.
        t: The scheduler's timestep (an integer index 0..T-1, a float for Euler).
        alpha_bar: ᾱ_t of the noise level this step starts from.
        x_t: The noisy images the network sees at this step.
        x0_pred: Predicted clean images x̂_0 (Tweedie's formula), clipped to [-1, 1]
            by DDPM and DDIM when the config says ``clip_sample`` (the default).
        eps_pred: The guided noise prediction ε̃.
    """

    step: int
    total: int
    t: int | float
    alpha_bar: float
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    eps_pred: torch.Tensor


@dataclass(eq=False)
class Trajectory:
    """A finished (or stopped) run, cached so a slider can scrub through it.

    Frames are float16 CPU tensors of shape ``(steps, B, 1, 28, 28)``, so the
    recording takes ``3 × 2 bytes × steps × B × 28 × 28``: 3.8 MB for DDIM-50 and
    75 MB for DDPM-1000 at the largest batch (16). Without recording they are
    empty (``steps`` = 0) and only ``samples`` and the per-step numbers are kept.
    """

    request: SampleRequest
    timesteps: torch.Tensor          # (steps,) float64, the scheduler's t of each step
    alpha_bar: torch.Tensor          # (steps,) float64, ᾱ_t of each step
    x_t: torch.Tensor                # (steps, B, C, H, W) float16
    x0_pred: torch.Tensor            # (steps, B, C, H, W) float16
    eps: torch.Tensor                # (steps, B, C, H, W) float16
    x_t_std: torch.Tensor            # (steps,) float32, pixel std of x_t, from full precision
    samples: torch.Tensor            # (B, C, H, W) float32, the last x reached
    labels: torch.Tensor             # (B,) int64, the class of each image
    seconds: float
    stopped: bool = False
    device: str = "cpu"

    def __len__(self) -> int:
        """Number of steps that were run."""
        return int(self.timesteps.numel())

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded frames."""
        return sum(t.numel() * t.element_size() for t in (self.x_t, self.x0_pred, self.eps))

    def frame(self, i: int) -> StepInfo:
        """The recorded step ``i`` as float32 CPU tensors.

        Raises:
            ValueError: The run was sampled with ``record=False``.
            InputError: ``i`` is not a whole number in ``[0, len - 1]``.
        """
        if self.x_t.shape[0] == 0:
            raise ValueError("this run was sampled with record=False, so it has no frames")
        i = int(check_range("step", i, 0, len(self) - 1, integer=True))
        return StepInfo(step=i, total=len(self), t=_number(self.timesteps[i]),
                        alpha_bar=float(self.alpha_bar[i]), x_t=self.x_t[i].float(),
                        x0_pred=self.x0_pred[i].float(), eps_pred=self.eps[i].float())

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers of the run (non-finite floats become ``None``)."""
        r = self.request
        return {
            "sampler": r.sampler, "num_inference_steps": r.num_inference_steps, "steps_run": len(self),
            "stopped": bool(self.stopped), "seconds": round(float(self.seconds), 4),
            "digit": r.digit, "labels": [int(v) for v in self.labels],
            "guidance_scale": r.guidance_scale, "seed": r.seed,
            "eta": r.eta, "batch_size": r.batch_size, "device": self.device,
            "first_t": _number(self.timesteps[0]) if len(self) else None,
            "last_t": _number(self.timesteps[-1]) if len(self) else None,
            "x_t_std": [_finite(v, 4) for v in self.x_t_std.tolist()],
            "sample_mean": _finite(self.samples.mean().item(), 5),
            "sample_std": _finite(self.samples.std().item(), 5),
        }


def _number(value: torch.Tensor | float) -> float | int:
    v = float(value)
    return int(v) if v.is_integer() else v


def _finite(value: float, digits: int) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def build_scheduler(sampler: str, scheduler_config: Any, num_inference_steps: int,
                   device: torch.device | str = "cpu") -> Any:
    """A fresh scheduler of ``SAMPLERS[sampler]`` built from the model's config, timesteps set.

    Schedulers keep per-run state (step index, DPM-Solver's history), so every
    run gets its own.
    """
    scheduler = SAMPLERS[sampler].from_config(scheduler_config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    return scheduler


def _seed_generator(seed: int, purpose: int) -> torch.Generator:
    # SeedSequence spreads (seed, purpose) so the label stream does not mirror the noise stream.
    word = np.random.SeedSequence([seed, purpose]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(word))


def class_labels(request: SampleRequest) -> torch.Tensor:
    """The class of each image: the chosen digit, or seeded random digits for ``"random"``.

    Args:
        request: A validated request.

    Returns:
        int64 ``(B,)`` tensor on the CPU.
    """
    if request.digit == "random":
        return torch.randint(0, NUM_CLASSES, (request.batch_size,), generator=_seed_generator(request.seed, 1))
    return torch.full((request.batch_size,), int(request.digit), dtype=torch.long)


def initial_noise(request: SampleRequest, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T ~ N(0, I) from a CPU ``torch.Generator`` seeded with ``request.seed``.

    This is exactly the x_T that :func:`sample` draws for the request, so two
    runs (say DDPM and DDIM side by side) given this tensor as ``noise=`` start
    from the same picture.

    Returns:
        float32 CPU tensor of ``shape``.
    """
    seed = int(check_range("seed", request.seed, *LIMITS["seed"], integer=True))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


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
           callback: Callable[[StepInfo], None] | None = None,
           stop: Callable[[], bool] | None = None,
           record: bool = True,
           noise: torch.Tensor | None = None,
           max_batch_size: int = LIMITS["batch_size"][1]) -> Trajectory:
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
        max_batch_size: Largest batch accepted (see :meth:`SampleRequest.validated`).

    Returns:
        The :class:`Trajectory` of the run.

    Raises:
        InputError: For a bad request.
        ValueError: ``noise`` is not a finite tensor of the batch's shape.
    """
    request = request.validated(scheduler_config["num_train_timesteps"], max_batch_size)
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
    labels = class_labels(request)
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
    frames = total if record else 0
    rec_x = torch.empty((frames, *shape), dtype=torch.float16)
    rec_x0 = torch.empty_like(rec_x)
    rec_eps = torch.empty_like(rec_x)
    alpha_bars, stds, stopped, done = [], [], False, 0

    start = time.perf_counter()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            x_in = scheduler.scale_model_input(x, t)
            eps = guided_eps(unet, x_in, t, labels_device, request.guidance_scale)
            out = scheduler.step(eps, t, x, **step_kwargs)
            alpha_bar = _alpha_bar(scheduler, i, t)
            x0 = getattr(out, "pred_original_sample", None)
            if x0 is None:
                x0 = (x_in - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
            if record:
                rec_x[i].copy_(x_in)
                rec_x0[i].copy_(x0)
                rec_eps[i].copy_(eps)
            alpha_bars.append(alpha_bar)
            stds.append(x_in.float().std())
            if callback is not None:
                callback(StepInfo(step=i, total=total, t=_number(t), alpha_bar=alpha_bar,
                                  x_t=x_in, x0_pred=x0, eps_pred=eps))
            x = out.prev_sample
            done = i + 1
            if stop is not None and done < total and stop():
                stopped = True
                break
    samples = x.detach().to("cpu", torch.float32).clone()
    seconds = time.perf_counter() - start

    if record and done < total:  # keep only the steps run, and free the rest
        rec_x, rec_x0, rec_eps = (r[:done].clone() for r in (rec_x, rec_x0, rec_eps))
    return Trajectory(
        request=request,
        timesteps=timesteps[:done].detach().to("cpu", torch.float64).clone(),
        alpha_bar=torch.tensor(alpha_bars, dtype=torch.float64),
        x_t=rec_x, x0_pred=rec_x0, eps=rec_eps,
        x_t_std=torch.stack(stds).to("cpu", torch.float32).clone() if stds else torch.zeros(0),
        samples=samples, labels=labels, seconds=seconds, stopped=stopped, device=str(device),
    )


def _check_noise(noise: Any, shape: tuple[int, ...]) -> torch.Tensor:
    # Programming errors, not student input: the UI builds the noise with initial_noise.
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        raise ValueError(f"the starting noise must be a tensor of shape {shape}")
    noise = noise.detach().to("cpu", torch.float32)
    if not torch.isfinite(noise).all():
        raise ValueError("the starting noise contains NaN or infinite values")
    return noise


def to_uint8_grid(batch: torch.Tensor | np.ndarray, nrow: int = 4, *, lo: float = -1.0, hi: float = 1.0,
                  pad: int = 2, crop: int = IMAGE_SIZE) -> np.ndarray:
    """Tile a batch of grey digits into one ``(H, W)`` uint8 picture.

    Values map linearly from ``[lo, hi]`` to ``[0, 255]`` (clipped; NaN is black).
    Images larger than ``crop`` (a model trained on digits padded to 32×32)
    are centre-cropped back to ``crop``×``crop``.

    Args:
        batch: ``(B, 1, H, W)`` or ``(B, H, W)`` floats.
        nrow: Images per row.
        lo: Value shown black; use -3 with ``hi=3`` for noise (x_t at large t, ε).
        hi: Value shown white.
        pad: Grey gap between the images, in pixels.
        crop: Largest image side kept.

    Returns:
        uint8 array ``(rows·(h + pad) + pad, nrow·(w + pad) + pad)``.
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().float().cpu().numpy()
    array = np.asarray(batch, dtype=np.float32)
    if array.ndim == 4:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"to_uint8_grid expects (B, 1, H, W) or (B, H, W), got {array.shape}")
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"to_uint8_grid needs finite lo < hi, got lo={lo}, hi={hi}")
    n, h, w = array.shape
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    nrow = min(n, int(nrow))
    top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    array = array[:, top:top + min(h, crop), left:left + min(w, crop)]
    h, w = array.shape[1:]
    scaled = (np.nan_to_num(array, nan=lo) - lo) * (255.0 / (hi - lo))
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 64, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = pixels[k]
    return grid


def std_curve(trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Pixel standard deviation of x_t against the timestep of each step.

    Starts near 1 (pure noise) and falls towards the spread of real digits
    (about 0.6 on the [-1, 1] scale), sqrt(ᾱ_t · Var x_0 + 1 - ᾱ_t) if the model is good.

    Returns:
        ``(timesteps, std)``, float64 arrays of length ``len(trajectory)``.
    """
    return trajectory.timesteps.numpy().astype(np.float64), trajectory.x_t_std.numpy().astype(np.float64)


def request_from_summary(summary: dict[str, Any]) -> SampleRequest:
    """The request that reproduces a run from its :meth:`Trajectory.summary`."""
    fields = ("sampler", "num_inference_steps", "eta", "seed", "batch_size", "digit", "guidance_scale")
    return replace(SampleRequest(), **{k: summary[k] for k in fields})
