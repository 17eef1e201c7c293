"""The forward process on 2-D points: a cloud of data dissolving into N(0, I).

DDPM (Ho et al. 2020) eq. 4, in one jump from the clean points::

    q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I),   ᾱ_t = Π_{s≤t} (1 - β_s)
    x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε,              ε ~ N(0, I)

with the β schedule of :func:`diffusion.schedule.make_scheduler` and the lessons' t
(``t = 0`` is the data, ``ᾱ_t = scheduler.alphas_cumprod[t - 1]``). Points live in the
standardised coordinates of :mod:`~diffusion.lessons.lab2d.data`, where the data has unit
variance, so at t = T the cloud is (nearly) the standard normal drawn as its contour.

**One point's cloud and the heat kernel.** A single data point x_0 becomes the Gaussian
N(√ᾱ_t x_0, (1 - ᾱ_t) I): it spreads like heat from a point source, whose solution of
``∂u/∂s = D Δu`` is the heat kernel N(x_0, 2Ds I) (variance 2Ds), while the factor √ᾱ_t
pulls its centre towards the origin (an Ornstein–Uhlenbeck process rather than pure
diffusion). The spread of step t equals the heat kernel's after heat time
``s = (1 - ᾱ_t) / (2D)`` (:func:`heat_time`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusion.lessons.lab2d.config import DEFAULTS, check_int, check_name, check_t
from diffusion.lessons.lab2d.data import Dataset
from diffusion.schedule import make_scheduler


def training_scheduler(schedule: str = DEFAULTS["schedule"],
                       num_train_timesteps: int = DEFAULTS["num_train_timesteps"]) -> DDPMScheduler:
    """A fresh diffusers DDPM scheduler of the lab: the house schedule, x̂_0 never clipped.

    Standardised 2-D data leaves ``[-1, 1]`` (about a third of the points do), so the
    image convention ``clip_sample=True`` would cut the data; the lab turns it off.

    Raises:
        InputError: For an unknown schedule or a T outside ``LIMITS["num_train_timesteps"]``.
    """
    base = make_scheduler(check_name("schedule", schedule), check_int("num_train_timesteps", num_train_timesteps))
    return DDPMScheduler.from_config(base.config, clip_sample=False)


@functools.lru_cache(maxsize=16)
def _alpha_bar(schedule: str, num_train_timesteps: int) -> np.ndarray:
    table = np.concatenate([[1.0], training_scheduler(schedule, num_train_timesteps).alphas_cumprod.double().numpy()])
    table.setflags(write=False)
    return table


def alpha_bar_table(schedule: str = DEFAULTS["schedule"],
                    num_train_timesteps: int = DEFAULTS["num_train_timesteps"]) -> np.ndarray:
    """ᾱ_t for the lessons' ``t = 0..T`` (float64, read-only; ``ᾱ_0 = 1``), diffusers' own values."""
    return _alpha_bar(check_name("schedule", schedule), check_int("num_train_timesteps", num_train_timesteps))


def q_sample(x0: torch.Tensor, alpha_bar: torch.Tensor | float, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε (DDPM eq. 4).

    Args:
        x0: Clean points ``(B, 2)``.
        alpha_bar: ᾱ_t, a number or a ``(B, 1)`` tensor (one per point).
        noise: ε ~ N(0, I), shaped like ``x0``.

    Returns:
        x_t, shaped like ``x0``.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x0.dtype)
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def heat_time(variance: float, diffusivity: float = 0.5) -> float:
    """The heat time s at which the heat kernel N(x_0, 2Ds I) has this variance: ``s = variance / (2D)``."""
    return float(variance) / (2.0 * float(diffusivity))


@dataclass
class ForwardPoints:
    """The training set at step t of the forward process (standardised coordinates).

    Attributes:
        t: The lessons' timestep (0 = the data).
        alpha_bar: ᾱ_t.
        x0: float32 ``(n, 2)`` clean points.
        x_t: float32 ``(n, 2)`` noised points, eq. 4.
        noise: float32 ``(n, 2)`` the ε of eq. 4 (the same for every t of one seed).
        schedule: The β schedule's name.
        num_train_timesteps: T.
    """

    t: int
    alpha_bar: float
    x0: np.ndarray
    x_t: np.ndarray
    noise: np.ndarray
    schedule: str
    num_train_timesteps: int

    @property
    def signal_coef(self) -> float:
        """√ᾱ_t, how far each point's cloud centre has moved towards the origin."""
        return math.sqrt(self.alpha_bar)

    @property
    def variance(self) -> float:
        """1 - ᾱ_t, the variance of one point's cloud along each axis."""
        return 1.0 - self.alpha_bar

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers: t, ᾱ_t, √ᾱ_t, 1 - ᾱ_t, the heat time and the cloud's spread."""
        return {"t": self.t, "schedule": self.schedule, "num_train_timesteps": self.num_train_timesteps,
                "alpha_bar": self.alpha_bar, "signal_coef": self.signal_coef, "variance": self.variance,
                "heat_time": heat_time(self.variance),
                "x_t_mean": [float(v) for v in self.x_t.mean(axis=0, dtype=np.float64)],
                "x_t_std": [float(v) for v in self.x_t.std(axis=0, dtype=np.float64)]}


def forward_points(dataset: Dataset, t: int = DEFAULTS["t"], seed: int = DEFAULTS["seed"],
                   schedule: str = DEFAULTS["schedule"],
                   num_train_timesteps: int = DEFAULTS["num_train_timesteps"]) -> ForwardPoints:
    """Noise the whole training set to step t in one jump (DDPM eq. 4).

    The ε is drawn from a ``torch.Generator`` seeded with ``seed`` and does not depend on
    t, so moving a t slider moves every point smoothly along its own line from x_0
    (t = 0) to ε (t = T, nearly).

    Args:
        dataset: The training set (its standardised points are noised).
        t: The lessons' timestep, ``0..T``.
        seed: Seed of ε.
        schedule: ``"linear"`` or ``"cosine"``.
        num_train_timesteps: T.

    Returns:
        A :class:`ForwardPoints`.

    Raises:
        InputError: For a bad t, seed, schedule or T.
    """
    table = alpha_bar_table(schedule, num_train_timesteps)
    t = check_t(t, num_train_timesteps)
    seed = check_int("seed", seed)
    x0 = torch.from_numpy(dataset.standardised)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    x_t = q_sample(x0.double(), float(table[t]), noise.double()).float()
    return ForwardPoints(t=t, alpha_bar=float(table[t]), x0=x0.numpy(), x_t=x_t.numpy(), noise=noise.numpy(),
                         schedule=schedule, num_train_timesteps=int(num_train_timesteps))
