"""The forward process in one jump, q(x_t | x_0), next to the step-by-step chain.

Because Gaussians compose, any step can be reached from the clean image at once
(Ho et al. 2020, eq. 4)::

    q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I),   ᾱ_t = Π_{s<=t} (1 - β_s)

Images are float32 arrays ``(H, W, C)`` scaled to ``[-1, 1]`` (see
:func:`diffusion.images.load_image`); the noising is element-wise, so the channel
layout does not matter and the arrays keep the layout they came in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusion.errors import InputError
from diffusion.lessons.noising.chain import StepwiseChain
from diffusion.lessons.noising.schedules import get_schedule, shared_scheduler
from diffusion.lessons.noising.validation import check_image, check_seed, check_t


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one jump, DDPM eq. 4, via ``scheduler.add_noise``.

    Computes ``sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise``.

    Args:
        x0: Clean image(s), any shape.
        t: Lesson timestep in ``0..T``; 0 returns ``x0`` unchanged.
        noise: ε ~ N(0, I), same shape as ``x0``.
        scheduler: The diffusers scheduler that defines ᾱ.

    Returns:
        The noisy tensor x_t, same shape and dtype as ``x0``.

    Raises:
        InputError: If ``t`` is not a whole number in ``[0, T]``.
    """
    t = check_t(t, scheduler.config.num_train_timesteps)
    if t == 0:
        return x0
    # Lesson t counts the clean image as 0; diffusers' index 0 is paper step 1.
    return scheduler.add_noise(x0, noise, torch.tensor([t - 1], dtype=torch.long))


@dataclass
class ForwardResult:
    """One point of the forward process, as shown by lesson 2.

    Arrays are float32 ``(H, W, C)`` on the ``[-1, 1]`` pixel scale; ``noise`` is
    the ε of eq. 4 (standard normal, shown with :func:`to_display` lo=-3, hi=3).
    ``chain`` is the stepwise chain that produced ``x_t_stepwise``; pass it back
    to :func:`forward_noise` so the next slider move reuses its checkpoints.
    """

    t: int
    x0: np.ndarray
    x_t: np.ndarray
    noise: np.ndarray
    x_t_stepwise: np.ndarray
    schedule: str
    num_train_timesteps: int
    seed: int
    alpha_bar: float
    chain: StepwiseChain | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers describing this step (finite floats or ``None``).

        ``snr`` and ``log_snr`` are ``None`` at t = 0, where they are infinite
        (the clean image has no noise); everything else is a finite float.

        Returns:
            ``t``, ``schedule``, ``num_train_timesteps``, ``seed``, ``alpha_bar``,
            ``snr``, ``log_snr``, ``signal_coef`` (sqrt ᾱ_t), ``noise_coef``
            (sqrt(1 - ᾱ_t)), ``mean`` and ``std`` of the x_t pixels, and
            ``stepwise_mean`` / ``stepwise_std`` of the stepwise x_t pixels.
        """
        alpha_bar = float(self.alpha_bar)
        if alpha_bar < 1.0:
            snr: float | None = alpha_bar / (1.0 - alpha_bar)
            log_snr: float | None = math.log(alpha_bar) - math.log1p(-alpha_bar)
        else:
            snr = log_snr = None
        return {
            "t": int(self.t),
            "schedule": self.schedule,
            "num_train_timesteps": int(self.num_train_timesteps),
            "seed": int(self.seed),
            "alpha_bar": alpha_bar,
            "snr": snr,
            "log_snr": log_snr,
            "signal_coef": math.sqrt(alpha_bar),
            "noise_coef": math.sqrt(max(0.0, 1.0 - alpha_bar)),
            "mean": float(np.mean(self.x_t, dtype=np.float64)),
            "std": float(np.std(self.x_t, dtype=np.float64)),
            "stepwise_mean": float(np.mean(self.x_t_stepwise, dtype=np.float64)),
            "stepwise_std": float(np.std(self.x_t_stepwise, dtype=np.float64)),
        }


def _standard_noise(shape: torch.Size, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def forward_noise(
    x0: np.ndarray,
    schedule: str,
    num_train_timesteps: int,
    t: int,
    seed: int,
    chain: StepwiseChain | None = None,
) -> ForwardResult:
    """Noise an image to step t both in one jump (eq. 4) and step by step (eq. 2).

    The one-jump ε is drawn from a ``torch.Generator`` seeded with ``seed`` and is
    the same for every t, so x_t moves smoothly as the slider moves.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        t: Lesson timestep in ``0..T`` (0 = clean image).
        seed: Noise seed, within ``LIMITS["seed"]``.
        chain: A chain from an earlier result for the same image, schedule and
            seed; reused when it matches, replaced by a new one otherwise.

    Returns:
        A :class:`ForwardResult`; its ``chain`` is the chain to pass next time.

    Raises:
        InputError: For a missing or malformed image, unknown schedule, or a T,
            t or seed that is not a whole number in range.
    """
    image = check_image(x0)
    noise_schedule = get_schedule(schedule, num_train_timesteps)
    big_t = noise_schedule.num_train_timesteps
    t = check_t(t, big_t)
    seed = check_seed(seed)
    if chain is None or not chain.matches(image, noise_schedule, seed):
        chain = StepwiseChain(image, noise_schedule, seed)
    x0_tensor = chain.x0
    noise = _standard_noise(x0_tensor.shape, seed)
    x_t = q_sample(x0_tensor, t, noise, shared_scheduler(noise_schedule.name, big_t))
    return ForwardResult(
        t=t,
        x0=image,
        x_t=x_t.numpy().copy(),
        noise=noise.numpy(),
        x_t_stepwise=chain.x_at(t).numpy(),
        schedule=noise_schedule.name,
        num_train_timesteps=big_t,
        seed=seed,
        alpha_bar=float(noise_schedule.alpha_bar[t]),
        chain=chain,
    )


def noise_strip(
    x0: np.ndarray, schedule: str, num_train_timesteps: int, seed: int, ts: Sequence[int]
) -> list[np.ndarray]:
    """x_t at several timesteps, all from the closed form (eq. 4) with one ε.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        seed: Seed of ε (the same ε as :func:`forward_noise` with this seed).
        ts: Lesson timesteps in ``0..T``, at most 64 of them.

    Returns:
        One float32 array per entry of ``ts``, in the same order.

    Raises:
        InputError: For bad inputs, as :func:`forward_noise`; ``too_many_steps``
            when more than 64 timesteps are asked for.
    """
    image = torch.from_numpy(check_image(x0).copy())
    noise_schedule = get_schedule(schedule, num_train_timesteps)
    big_t = noise_schedule.num_train_timesteps
    seed = check_seed(seed)
    ts = list(ts)
    if len(ts) > 64:
        raise InputError("too_many_steps", "At most {limit} timesteps can be shown at once.", limit=64)
    checked = [check_t(t, big_t) for t in ts]
    noise = _standard_noise(image.shape, seed)
    scheduler = shared_scheduler(noise_schedule.name, big_t)
    return [q_sample(image, t, noise, scheduler).numpy().copy() for t in checked]
