"""Sampling 2-D points with DDPM and DDIM, from the network or from the exact score.

Both update rules are diffusers' schedulers (``from_config`` of the run's training
scheduler, ``set_timesteps(num_inference_steps)``, then ``step`` once per timestep):

* ``ddpm``: ancestral sampling, DDPM (Ho et al. 2020) Algorithm 2 / eq. 11::

      x_{t-1} = 1/√α_t (x_t - β_t / √(1 - ᾱ_t) ε) + σ_t z,   σ_t² = β̃_t,  z ~ N(0, I)

  (diffusers writes it as the posterior mean μ̃_t(x_t, x̂_0) of eq. 7, the same thing when
  x̂_0 is not clipped; with fewer steps than T, α_t and β_t are those of the strided steps).
* ``ddim``: DDIM (Song et al. 2021) eq. 12 with σ_t of eq. 16 (η = 0: deterministic)::

      x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 - ᾱ_{t-1} - σ_t²) ε + σ_t z,
      σ_t = η √((1 - ᾱ_{t-1}) / (1 - ᾱ_t)) √(1 - ᾱ_t / ᾱ_{t-1})

with x̂_0 = (x_t - √(1 - ᾱ_t) ε) / √ᾱ_t (Tweedie's formula, DDPM eq. 15). The ε comes from
the ``predictor``: ``"learned"``, the run's network ε_θ (its EMA weights), or ``"exact"``,
ε* of the training set's exact score (:func:`~diffusion.lessons.lab2d.exact.exact_eps`),
which walks every particle back onto a training point (memorisation).

**Same start for every sampler.** x_T ~ N(0, I) is drawn first from a
``torch.Generator`` seeded with ``seed``; the same generator then feeds DDPM's (and
DDIM η > 0's) fresh noise. So DDPM, DDIM, learned and exact runs with one seed start
from the same particles.

The loop follows :mod:`diffusion.reverse`'s run contract: ``callback(StepInfo)`` after
each step (``x_t``, ``x0_pred``, ``eps_pred`` are ``(n, 2)`` in standardised
coordinates, ``t`` is diffusers' τ), the stop flag polled after each step, and a
:class:`SampleTrajectory` recorded for playback. The recording keeps the first
``recorded`` particles of every step, at most :data:`MAX_RECORDED_PARTICLES` and at most
:data:`RECORD_BUDGET` particle-steps in all (1000 particles × 200 steps, or 200 × 1000),
so one kept run stays under 5 MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion import reverse
from diffusion.errors import check_range
from diffusion.lessons.lab2d.config import DEFAULTS, LIMITS, check_float, check_int, check_name
from diffusion.lessons.lab2d.exact import exact_eps
from diffusion.lessons.lab2d.forward import training_scheduler
from diffusion.lessons.lab2d.training import Lab2DRun
from diffusion.reverse import StepCallback, StepInfo, StopFlag, should_stop
from diffusion.schedule import display_t

SCHEDULERS: dict[str, type] = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
MAX_RECORDED_PARTICLES = 1000
RECORD_BUDGET = 200_000


@dataclass(eq=False, kw_only=True)
class SampleTrajectory(reverse.Trajectory):
    """A finished (or stopped) sampling run of the 2-D lab.

    Frames (``x_t``, ``x0_pred``, ``eps``) are float32 ``(steps, recorded, 2)`` in
    standardised coordinates; :meth:`to_data` maps them to the data set's coordinates.

    Attributes:
        sampler: ``"ddpm"`` or ``"ddim"``.
        predictor: ``"learned"`` or ``"exact"``.
        num_inference_steps: Steps asked for.
        eta: DDIM's η (0.0 for DDPM).
        seed: Seed of x_T and of the sampler's noise.
        noise: float32 ``(n, 2)``, the starting x_T (standardised).
        samples_model: float32 ``(n, 2)``, the last x reached (standardised).
        samples: float32 ``(n, 2)``, the same in the data set's coordinates.
        mean: float64 ``(2,)`` and ``scale``: the data set's standardisation.
    """

    sampler: str
    predictor: str
    num_inference_steps: int
    eta: float
    seed: int
    noise: np.ndarray
    samples_model: np.ndarray
    samples: np.ndarray
    mean: np.ndarray
    scale: float

    @property
    def recorded_particles(self) -> int:
        """How many particles each recorded step keeps (the first ones of the batch)."""
        return int(self.x_t.shape[1]) if self.recorded else 0

    def to_data(self, x: Any) -> np.ndarray:
        """Standardised points (any shape ``(..., 2)``) → the data set's coordinates."""
        return (np.asarray(x, dtype=np.float64) * self.scale + self.mean).astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers of the run."""
        return {"sampler": self.sampler, "predictor": self.predictor,
                "num_inference_steps": self.num_inference_steps, "steps_run": len(self),
                "eta": self.eta, "seed": self.seed, "n_samples": int(self.samples.shape[0]),
                "recorded_particles": self.recorded_particles, "stopped": bool(self.stopped),
                "seconds": round(float(self.seconds), 4),
                "first_t": display_t(self.timesteps[0]) if len(self) else None,
                "last_t": display_t(self.timesteps[-1]) if len(self) else None,
                "sample_mean": [round(float(v), 5) for v in self.samples.mean(axis=0, dtype=np.float64)],
                "sample_std": [round(float(v), 5) for v in self.samples.std(axis=0, dtype=np.float64)]}


def build_scheduler(run: Lab2DRun, sampler: str, num_inference_steps: int) -> Any:
    """A fresh diffusers scheduler for ``sampler``, from the run's training config, timesteps set.

    x̂_0 is never clipped (standardised 2-D data is not bounded by ±1).
    """
    config = training_scheduler(run.train_config.schedule, run.train_config.num_train_timesteps).config
    scheduler = SCHEDULERS[sampler].from_config(config, clip_sample=False)
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def initial_noise(n_samples: int, seed: int) -> torch.Tensor:
    """x_T ~ N(0, I), float32 ``(n, 2)``: exactly what :func:`sample` starts from for this seed."""
    return torch.randn((n_samples, 2), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def recorded_count(n_samples: int, steps: int) -> int:
    """Particles recorded per step: ``min(n, MAX_RECORDED_PARTICLES, RECORD_BUDGET // steps)``, at least 1."""
    return max(1, min(n_samples, MAX_RECORDED_PARTICLES, RECORD_BUDGET // max(1, steps)))


def sample(run: Lab2DRun, sampler: str = DEFAULTS["sampler"],
           num_inference_steps: int = DEFAULTS["num_inference_steps"], eta: float = DEFAULTS["eta"],
           n_samples: int = DEFAULTS["n_samples"], seed: int = DEFAULTS["seed"],
           callback: StepCallback | None = None, stop: StopFlag | None = None, *,
           predictor: str = DEFAULTS["predictor"], record: bool = True) -> SampleTrajectory:
    """Generate ``n_samples`` points with DDPM or DDIM (see the module docstring).

    Args:
        run: A (trained) run; its EMA network predicts ε unless ``predictor="exact"``.
        sampler: ``"ddpm"`` or ``"ddim"``.
        num_inference_steps: Steps, within ``LIMITS["num_inference_steps"]`` and at most T.
        eta: DDIM's η in ``[0, 1]`` (ignored by DDPM).
        n_samples: Number of particles, within ``LIMITS["n_samples"]``.
        seed: Seed of x_T and of the sampler's fresh noise.
        callback: Called with a :class:`~diffusion.reverse.StepInfo` after every step.
        stop: Polled after every step; True ends the run there (``stopped``).
        predictor: ``"learned"`` (the network) or ``"exact"`` (the exact score's ε*).
        record: Keep the frames for playback (see the module docstring).

    Returns:
        The :class:`SampleTrajectory`.

    Raises:
        InputError: A setting out of range or an unknown name.
    """
    sampler = check_name("sampler", sampler)
    predictor = check_name("predictor", predictor)
    big_t = run.train_config.num_train_timesteps
    steps = int(check_range("num_inference_steps", num_inference_steps, LIMITS["num_inference_steps"][0],
                            min(LIMITS["num_inference_steps"][1], big_t), integer=True))
    eta = check_float("eta", eta) if sampler == "ddim" else 0.0
    n = check_int("n_samples", n_samples)
    seed = check_int("seed", seed)
    scheduler = build_scheduler(run, sampler, steps)
    generator = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n, 2), generator=generator, dtype=torch.float32)  # also advances the generator
    step_kwargs: dict[str, Any] = {"generator": generator}
    if sampler == "ddim":
        step_kwargs["eta"] = eta
    train_points = torch.from_numpy(run.dataset.standardised)
    model = run.sampling_model
    keep = recorded_count(n, steps)
    recorder = reverse.Recorder(record, dtype=torch.float32)
    timesteps = scheduler.timesteps
    total, stopped, x = len(timesteps), False, x_T.clone()

    start = time.perf_counter()
    with torch.inference_mode():
        for i, tau in enumerate(timesteps):
            alpha_bar = float(scheduler.alphas_cumprod[int(tau)])
            if predictor == "learned":
                eps = model(x, tau)
            else:
                eps = exact_eps(x, train_points, alpha_bar, dtype=torch.float32)
            out = scheduler.step(eps, tau, x, **step_kwargs)
            info = StepInfo(step=i, total=total, t=int(tau), alpha_bar=alpha_bar, x_t=x,
                            x0_pred=out.pred_original_sample, eps_pred=eps)
            recorder.add(StepInfo(step=i, total=total, t=int(tau), alpha_bar=alpha_bar, x_t=x[:keep],
                                  x0_pred=out.pred_original_sample[:keep], eps_pred=eps[:keep]))
            if callback is not None:
                callback(info)
            x = out.prev_sample
            if should_stop(stop, i + 1, total):
                stopped = True
                break
    seconds = time.perf_counter() - start
    dataset = run.dataset
    samples_model = x.detach().to(torch.float32).numpy().copy()
    return SampleTrajectory(**recorder.fields(), seconds=seconds, stopped=stopped, sampler=sampler,
                            predictor=predictor, num_inference_steps=steps, eta=float(eta), seed=seed,
                            noise=x_T.numpy(), samples_model=samples_model, samples=dataset.to_data(samples_model),
                            mean=dataset.mean.copy(), scale=float(dataset.scale))
