"""One noise-schedule convention for every lesson: the β schedules and what "t" means.

The forward process of DDPM (Ho et al. 2020) noises the clean image x_0 in T steps,
``q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I)`` with ``ᾱ_t = Π_{s≤t} (1 - β_s)`` (eq. 4).

**The lessons' t** is the paper's: ``t = 0`` is the clean image (ᾱ_0 = 1), ``t = T`` is
(nearly) pure noise, and a sampler walks from ``t = T`` down to ``t = 1``. diffusers numbers
the same steps from 0, so its timestep index ``τ`` is the paper's ``t = τ + 1``
(``ᾱ_t = scheduler.alphas_cumprod[t - 1]``). Every number a student reads, in every lesson,
goes through :func:`display_t`; the code keeps diffusers' ``τ`` wherever it calls diffusers.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDPMScheduler

from diffusion.errors import check_choice, check_range

SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid")
_DIFFUSERS_NAMES = {
    "linear": "linear",
    "cosine": "squaredcos_cap_v2",
    "scaled_linear": "scaled_linear",
    "sigmoid": "sigmoid",
}
TIMESTEP_LIMITS = (10, 4000)  # T of a schedule built here

# DDPM's linear schedule endpoints (Ho et al. 2020, section 4); diffusers'
# "scaled_linear" and "sigmoid" reuse them, the cosine schedule ignores them.
BETA_START = 1e-4
BETA_END = 0.02


def display_t(timestep: Any) -> int | float:
    """The lessons' t of a diffusers timestep index τ: ``t = τ + 1`` (see the module docstring).

    Whole numbers stay ``int``; Euler-type schedulers' fractional timesteps stay ``float``.
    """
    t = float(timestep) + 1.0
    return int(t) if t.is_integer() else t


def check_schedule(schedule: Any) -> str:
    """``schedule`` if it is one of :data:`SCHEDULES`; else ``InputError("bad_choice")``."""
    return check_choice("schedule", schedule, SCHEDULES)


def check_timesteps(num_train_timesteps: Any) -> int:
    """T as an ``int`` within :data:`TIMESTEP_LIMITS`; else an ``InputError`` naming the field."""
    lo, hi = TIMESTEP_LIMITS
    return int(check_range("num_train_timesteps", num_train_timesteps, lo, hi, integer=True))


def make_scheduler(schedule: str, num_train_timesteps: int = 1000) -> DDPMScheduler:
    """A fresh diffusers DDPM scheduler for one of :data:`SCHEDULES`.

    Args:
        schedule: ``"linear"``, ``"cosine"``, ``"scaled_linear"`` or ``"sigmoid"``
            (the cosine one is diffusers' ``"squaredcos_cap_v2"``).
        num_train_timesteps: Number of diffusion steps T, within :data:`TIMESTEP_LIMITS`.

    Returns:
        A :class:`diffusers.DDPMScheduler` with DDPM's β_1 = 1e-4, β_T = 0.02.

    Raises:
        InputError: ``bad_choice`` for an unknown schedule, ``not_a_number`` /
            ``not_an_integer`` / ``out_of_range`` for a bad T.
    """
    return DDPMScheduler(
        num_train_timesteps=check_timesteps(num_train_timesteps),
        beta_start=BETA_START,
        beta_end=BETA_END,
        beta_schedule=_DIFFUSERS_NAMES[check_schedule(schedule)],
    )
