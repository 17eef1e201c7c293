"""How good are the samples? Distance to the training set, and distance to the distribution.

* **Memorisation**: for each generated point, the distance to its nearest training point
  (:func:`nearest_distance`). Samples of the exact score sit on training points (median
  ≈ 0); a model that generalises puts them *between* training points, at distances like
  those of fresh data to the training set (:func:`memorisation`).
* **Distribution match**: the sliced Wasserstein distance (Rabin et al. 2011; Bonneel
  et al. 2015) between the generated points and fresh data::

      SW_p(μ, ν) = ( E_θ [ W_p(P_θ# μ, P_θ# ν)^p ] )^(1/p),   P_θ(x) = ⟨x, (cos θ, sin θ)⟩

  with θ drawn uniformly (seeded) and each 1-D distance taken between the empirical
  quantile functions, exactly, for samples of any two sizes::

      W_p(u, v)^p = ∫_0^1 |F_u^{-1}(q) - F_v^{-1}(q)|^p dq

  Even two samples of the same distribution are apart by their finite size; that
  **floor** (:func:`sliced_wasserstein` of two fresh samples) is the scale to read a
  model's figure against.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from diffusion.errors import InputError

CHUNK_ELEMENTS = 2**22


def _points(name: str, x: Any) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0 or not np.isfinite(array).all():
        raise InputError("points_bad", "{name} must be a non-empty (n, 2) array of finite numbers.", name=name)
    return array


def nearest_distance(points: Any, train: Any) -> np.ndarray:
    """Euclidean distance from each point to its nearest training point.

    Args:
        points: ``(M, 2)``.
        train: ``(N, 2)``.

    Returns:
        float64 ``(M,)``, computed in chunks of at most :data:`CHUNK_ELEMENTS` pairs.
    """
    p = torch.from_numpy(_points("points", points))
    q = torch.from_numpy(_points("train", train))
    rows = max(1, CHUNK_ELEMENTS // q.shape[0])
    out = [torch.cdist(p[s:s + rows], q, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
           for s in range(0, p.shape[0], rows)]
    return torch.cat(out).numpy()


def memorisation(points: Any, train: Any, reference: Any | None = None) -> dict[str, float]:
    """Nearest-training-point distances of ``points`` summarised, next to fresh data's.

    Args:
        points: Generated points ``(M, 2)``.
        train: The training points ``(N, 2)`` (same coordinates).
        reference: Fresh points of the data distribution; their distances to the training
            set are what a model that does not copy would show.

    Returns:
        ``median``, ``mean``, ``p10``, ``p90`` of the distances, and ``reference_median``
        plus ``ratio`` (median ÷ reference median) when ``reference`` is given.
    """
    d = nearest_distance(points, train)
    result = {"median": float(np.median(d)), "mean": float(d.mean()),
              "p10": float(np.quantile(d, 0.1)), "p90": float(np.quantile(d, 0.9))}
    if reference is not None:
        ref = float(np.median(nearest_distance(reference, train)))
        result.update(reference_median=ref, ratio=result["median"] / ref if ref > 0 else math.inf)
    return result


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged levels ``{i/n} ∪ {j/m}`` as interval widths, and the order statistic of
    each sample that its quantile function takes on each interval."""
    levels_a, levels_b = np.arange(1, n + 1) / n, np.arange(1, m + 1) / m
    levels = np.union1d(levels_a, levels_b)
    widths = np.diff(levels, prepend=0.0)
    # F^{-1}(q) = x_(i) for q in ((i - 1)/n, i/n]: the first i with i/n ≥ the interval's right end.
    ia = np.minimum(np.searchsorted(levels_a, levels - 1e-12), n - 1)
    ib = np.minimum(np.searchsorted(levels_b, levels - 1e-12), m - 1)
    return widths, ia, ib


def wasserstein_1d(u: Any, v: Any, p: float = 1.0) -> float:
    """W_p between two 1-D empirical distributions (any sizes), from their quantile functions.

    Both quantile functions are step functions; between consecutive levels of the merged
    grid ``{i/n} ∪ {j/m}`` both are constant, so the integral is an exact finite sum.
    """
    a, b = np.sort(np.asarray(u, dtype=np.float64)), np.sort(np.asarray(v, dtype=np.float64))
    widths, ia, ib = _quantile_grid(a.size, b.size)
    return float((widths * np.abs(a[ia] - b[ib]) ** p).sum() ** (1.0 / p))


def projections(n_projections: int, seed: int) -> np.ndarray:
    """``(K, 2)`` unit directions (cos θ, sin θ), θ ~ U[0, π) from ``numpy.random.default_rng(seed)``."""
    theta = np.random.default_rng(seed).uniform(0.0, math.pi, size=int(n_projections))
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def sliced_wasserstein(x: Any, y: Any, n_projections: int = 256, seed: int = 0, p: float = 1.0) -> float:
    """SW_p between two point sets (see the module docstring), with seeded directions.

    Args:
        x: ``(M, 2)`` points.
        y: ``(N, 2)`` points (same coordinates; sizes may differ).
        n_projections: Number of directions θ (1 to 10,000).
        seed: Seed of the directions; use the same seed to compare several x with one y.
        p: Order of the distance (1 or more).

    Returns:
        SW_p in the points' units.
    """
    a, b = _points("x", x), _points("y", y)
    if not 1 <= int(n_projections) <= 10_000 or not p >= 1:
        raise InputError("bad_projections", "Use 1 to 10000 projections and p ≥ 1.")
    directions = projections(n_projections, seed)
    pa, pb = np.sort(a @ directions.T, axis=0), np.sort(b @ directions.T, axis=0)
    widths, ia, ib = _quantile_grid(a.shape[0], b.shape[0])
    per_direction = (widths[:, None] * np.abs(pa[ia] - pb[ib]) ** p).sum(axis=0)  # W_p^p of each θ
    return float(per_direction.mean() ** (1.0 / p))


def distribution_report(samples: Any, fresh: Any, floor_points: Any, train: Any | None = None,
                        n_projections: int = 256, seed: int = 0) -> dict[str, float]:
    """Sliced Wasserstein of ``samples`` to ``fresh`` data, the floor, their ratio, memorisation.

    Args:
        samples: Generated points ``(M, 2)``.
        fresh: Fresh data the samples are compared with.
        floor_points: Other fresh data of the same size as ``samples``: its distance to
            ``fresh`` is the floor.
        train: The training points, for the memorisation figures (optional).
        n_projections: Directions of the sliced distance.
        seed: Seed of the directions (shared by both distances).

    Returns:
        ``sw``, ``floor``, ``ratio`` (sw ÷ floor), and with ``train`` the
        :func:`memorisation` figures prefixed ``nearest_``.
    """
    sw = sliced_wasserstein(samples, fresh, n_projections, seed)
    floor = sliced_wasserstein(floor_points, fresh, n_projections, seed)
    report = {"sw": sw, "floor": floor, "ratio": sw / floor if floor > 0 else math.inf}
    if train is not None:
        report.update({f"nearest_{k}": v for k, v in memorisation(samples, train, floor_points).items()})
    return report
