"""The learned score field next to the exact one, on a grid, at one noise level t.

The network predicts noise; its score follows from ε = -√(1 - ᾱ_t) ∇ log p_t (the
relation of :mod:`~diffusion.lessons.lab2d.exact`, eq. 4)::

    s_θ(x, t) = -ε_θ(x, t) / √(1 - ᾱ_t)                                               (1)

and the exact score s*(x, t) = ∇ log p_t(x) of the noised training set is eq. (2) there.

**How far apart are they?** Both are evaluated at the grid points g; the error is
averaged with weights from the noised data density, where the field matters (the
sampler's particles are there), and also relative to the exact score's size, which grows
like 1 / √(1 - ᾱ_t) near the data::

    w_g = p_t(g) / Σ_h p_t(h)                                                          (2)
    mean_error     = Σ_g w_g ‖s_θ(g) - s*(g)‖                                          (3)
    relative_error = Σ_g w_g ‖s_θ(g) - s*(g)‖ / Σ_g w_g ‖s*(g)‖                        (4)

plus the unweighted mean over the grid (``grid_mean_error``). At large t the two fields
agree (both pull towards the data's centre); at small t the exact field points to single
training points, and a network that generalises does not copy them: the gap there is
the memorisation the network did *not* do.

All positions and vectors are in the standardised coordinates of
:mod:`~diffusion.lessons.lab2d.data`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from diffusion.errors import InputError, check_range
from diffusion.lessons.lab2d.config import DEFAULTS, check_float, check_int
from diffusion.lessons.lab2d.exact import exact_score, log_density
from diffusion.lessons.lab2d.training import Lab2DRun

MAX_FIELD_POINTS = 10_000


def make_grid(size: int = DEFAULTS["grid"], extent: float = DEFAULTS["field_extent"]) -> np.ndarray:
    """``size × size`` points evenly spaced on ``[-extent, extent]²``, row by row (y outer, x inner).

    Returns:
        float64 ``(size², 2)``.

    Raises:
        InputError: ``size`` or ``extent`` out of ``LIMITS["grid"]`` / ``LIMITS["field_extent"]``.
    """
    size = check_int("grid", size)
    extent = check_float("field_extent", extent)
    axis = np.linspace(-extent, extent, size)
    xs, ys = np.meshgrid(axis, axis)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@dataclass
class ScoreField:
    """Both score fields at the points of a grid (see the module docstring).

    Attributes:
        t: The lessons' timestep (1..T).
        alpha_bar: ᾱ_t.
        points: float64 ``(G, 2)`` grid points.
        learned: float64 ``(G, 2)``, s_θ of eq. (1).
        exact: float64 ``(G, 2)``, s* of the noised training set.
        weights: float64 ``(G,)``, w_g of eq. (2) (sums to 1).
        mean_error: Eq. (3).
        relative_error: Eq. (4).
        grid_mean_error: Mean of ‖s_θ - s*‖ over the grid, unweighted.
    """

    t: int
    alpha_bar: float
    points: np.ndarray
    learned: np.ndarray
    exact: np.ndarray
    weights: np.ndarray
    mean_error: float
    relative_error: float
    grid_mean_error: float

    def __iter__(self):
        """``learned, exact, mean_error = field`` unpacks the three main results."""
        return iter((self.learned, self.exact, self.mean_error))

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers."""
        return {"t": self.t, "alpha_bar": self.alpha_bar, "grid_points": int(self.points.shape[0]),
                "mean_error": self.mean_error, "relative_error": self.relative_error,
                "grid_mean_error": self.grid_mean_error,
                "exact_norm": float((self.weights * np.linalg.norm(self.exact, axis=1)).sum())}


def learned_score(run: Lab2DRun, x: Any, t: int) -> np.ndarray:
    """s_θ(x, t) = -ε_θ(x, t) / √(1 - ᾱ_t), eq. (1), from the run's sampling network.

    Args:
        run: A run.
        x: ``(G, 2)`` standardised points.
        t: The lessons' timestep, 1..T.

    Returns:
        float64 ``(G, 2)``.
    """
    t = int(check_range("t", t, 1, run.train_config.num_train_timesteps, integer=True))
    alpha_bar = float(run.alphas_cumprod[t - 1])
    with torch.inference_mode():
        eps = run.sampling_model(torch.as_tensor(np.asarray(x), dtype=torch.float32), torch.tensor(t - 1))
    return -eps.double().numpy() / math.sqrt(1.0 - alpha_bar)


def score_field(run: Lab2DRun, t: int = DEFAULTS["t"], grid: Any = DEFAULTS["grid"],
                extent: float = DEFAULTS["field_extent"]) -> ScoreField:
    """The learned and the exact score at the points of a grid, and how far apart they are.

    Args:
        run: A (trained) run; its training points define the exact score.
        t: The lessons' timestep, 1..T (at t = 0 the data has no density to take a gradient of).
        grid: Points per side of a square grid (:func:`make_grid`), or the points
            themselves as ``(G, 2)`` standardised coordinates (at most 10,000).
        extent: Half-width of the square grid (ignored when ``grid`` holds points).

    Returns:
        A :class:`ScoreField`; ``learned, exact, mean_error = score_field(...)`` also works.

    Raises:
        InputError: ``t``, ``grid`` or ``extent`` out of range; ``points_bad`` for bad points.
    """
    t = int(check_range("t", t, 1, run.train_config.num_train_timesteps, integer=True))
    if isinstance(grid, (int, float, np.integer)) and not isinstance(grid, bool):
        points = make_grid(grid, extent)
    else:
        points = np.asarray(grid, dtype=np.float64)
        if (points.ndim != 2 or points.shape[1] != 2 or not 1 <= points.shape[0] <= MAX_FIELD_POINTS
                or not np.isfinite(points).all()):
            raise InputError("points_bad", "The grid must be 1 to {limit} finite (x, y) points.",
                             limit=MAX_FIELD_POINTS)
    alpha_bar = float(run.alphas_cumprod[t - 1])
    train = run.dataset.standardised
    learned = learned_score(run, points, t)
    exact = exact_score(points, train, alpha_bar).numpy()
    log_p = log_density(points, train, alpha_bar).numpy()
    weights = np.exp(log_p - log_p.max())
    weights /= weights.sum()
    error = np.linalg.norm(learned - exact, axis=1)
    size = float((weights * np.linalg.norm(exact, axis=1)).sum())
    mean_error = float((weights * error).sum())
    return ScoreField(t=t, alpha_bar=alpha_bar, points=points, learned=learned, exact=exact, weights=weights,
                      mean_error=mean_error, relative_error=mean_error / size if size > 0 else math.inf,
                      grid_mean_error=float(error.mean()))
