"""Noise-level tables of lesson 2: β_t, ᾱ_t, their square roots and the SNR, for t = 0..T.

The β schedules themselves come from :class:`diffusers.DDPMScheduler` (see
:func:`diffusion.schedule.make_scheduler`), so the lesson shows exactly the numbers
the library used for training does. Every table has length T + 1 and is indexed by
the lesson's t (:mod:`diffusion.schedule`): ``t = 0`` is the clean image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from diffusers import DDPMScheduler

from diffusion.schedule import SCHEDULES, check_schedule, check_timesteps, make_scheduler

__all__ = ["SCHEDULES", "NoiseSchedule", "get_schedule", "make_scheduler", "shared_scheduler"]


@functools.lru_cache(maxsize=32)
def shared_scheduler(schedule: str, num_train_timesteps: int) -> DDPMScheduler:
    """One cached scheduler per (schedule, T); callers only read its tables (``add_noise``)."""
    return make_scheduler(schedule, num_train_timesteps)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Noise-level tables of one schedule, indexed by the lesson's t = 0..T.

    Index 0 is the clean image: ``betas[0] = 0``, ``alpha_bar[0] = 1`` and the
    signal-to-noise ratio there is ``inf``. The arrays are read-only because
    :func:`get_schedule` shares one instance between callers.
    """

    name: str
    num_train_timesteps: int
    betas: np.ndarray
    alpha_bar: np.ndarray
    sqrt_alpha_bar: np.ndarray
    sqrt_one_minus_alpha_bar: np.ndarray
    snr: np.ndarray
    log_snr: np.ndarray

    @classmethod
    def from_scheduler(cls, name: str, scheduler: DDPMScheduler) -> NoiseSchedule:
        """Tables built from a diffusers scheduler's ``betas`` and ``alphas_cumprod``.

        Args:
            name: Lesson name of the schedule (one of :data:`SCHEDULES`).
            scheduler: The scheduler whose tables are copied.

        Returns:
            A schedule whose ``alpha_bar[t]`` is ``scheduler.alphas_cumprod[t - 1]``
            for t >= 1 (DDPM eq. 4's ᾱ_t) and 1 for t = 0.
        """
        betas = np.concatenate([[0.0], scheduler.betas.double().cpu().numpy()])
        alpha_bar = np.concatenate([[1.0], scheduler.alphas_cumprod.double().cpu().numpy()])
        one_minus = 1.0 - alpha_bar
        with np.errstate(divide="ignore"):
            snr = alpha_bar / one_minus
            log_snr = np.log(alpha_bar) - np.log(one_minus)
        return cls(
            name=name,
            num_train_timesteps=len(betas) - 1,
            betas=_read_only(betas),
            alpha_bar=_read_only(alpha_bar),
            sqrt_alpha_bar=_read_only(np.sqrt(alpha_bar)),
            sqrt_one_minus_alpha_bar=_read_only(np.sqrt(one_minus)),
            snr=_read_only(snr),
            log_snr=_read_only(log_snr),
        )


@functools.lru_cache(maxsize=32)
def _cached_schedule(schedule: str, num_train_timesteps: int) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler(schedule, shared_scheduler(schedule, num_train_timesteps))


def get_schedule(schedule: str, num_train_timesteps: int) -> NoiseSchedule:
    """The validated, cached :class:`NoiseSchedule` for a schedule name and T.

    Args:
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T, within ``LIMITS``.

    Returns:
        A shared, read-only :class:`NoiseSchedule` with arrays of length T + 1.

    Raises:
        InputError: For an unknown schedule or a T outside ``LIMITS``.
    """
    return _cached_schedule(check_schedule(schedule), check_timesteps(num_train_timesteps))
