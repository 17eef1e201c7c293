"""The 2-D point sets the lab trains on, and their standardisation.

Built-in sets (each ``float32 (n, 2)`` in its own coordinates, drawn from
``numpy.random.default_rng(seed)`` and shuffled):

* ``moons``: scikit-learn's ``make_moons(noise=0.05)``, same definition and coordinates.
  ``n // 2`` points on the outer half circle ``(cos θ, sin θ)`` and the rest on the inner
  one ``(1 - cos θ, 1 - sin θ - 0.5)``, θ evenly spaced in ``[0, π]``, then Gaussian noise
  of std 0.05 on both coordinates.
* ``swiss_roll``: scikit-learn's ``make_swiss_roll`` seen from above, ``(x, z)``: ``u``
  uniform on ``[1.5π, 4.5π]`` and ``u (cos u, sin u)``, noise of std 0.25.
* ``spiral``: two interleaved Archimedean arms ``± r (cos r, sin r)``, ``r = 3π √v`` (so the
  points are spread evenly along the arms), the arm by a fair coin, noise of std 0.2.
* ``gaussians``: eight Gaussians of std 0.15 centred on the circle of radius 2.
* ``checkerboard``: uniform on the eight black squares of a 4×4 board on ``[-2, 2]²``
  (the FFJORD paper's set).
* ``rings``: three concentric circles of radius 1, 2 and 3 with points in proportion to
  their lengths, noise of std 0.08.

``text`` and ``drawing`` come from :mod:`~diffusion.lessons.lab2d.drawn`.

**Standardisation.** The network and the exact score work on ``x = (p - mean) / scale``
with one isotropic ``scale = sqrt((Var p_x + Var p_y) / 2)``: zero mean, unit variance on
average over the two axes. One scale for both axes keeps the shape undistorted, so the
forward process' isotropic noise stays isotropic in the data set's own coordinates, and
every sample is mapped back with :meth:`Dataset.to_data` before it is compared with data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusion.errors import InputError
from diffusion.lessons.lab2d.config import BUILTIN_DATASETS, DEFAULTS, check_int, check_name

MOONS_NOISE = 0.05


def _shuffled(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return points[rng.permutation(len(points))].astype(np.float32)


def moons_clean(n: int) -> np.ndarray:
    """The noiseless two half circles of scikit-learn's ``make_moons``, in its order (outer first).

    Args:
        n: Number of points; ``n // 2`` on the outer half circle, the rest on the inner one.

    Returns:
        float64 ``(n, 2)``.
    """
    n_out = n // 2
    n_in = n - n_out
    theta_out = np.linspace(0.0, math.pi, n_out)
    theta_in = np.linspace(0.0, math.pi, n_in)
    outer = np.stack([np.cos(theta_out), np.sin(theta_out)], axis=1)
    inner = np.stack([1.0 - np.cos(theta_in), 1.0 - np.sin(theta_in) - 0.5], axis=1)
    return np.concatenate([outer, inner])


def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's ``make_moons(n, noise=0.05)`` (see the module docstring), shuffled."""
    points = moons_clean(n) + rng.normal(0.0, MOONS_NOISE, size=(n, 2))
    return _shuffled(points, rng)


def moons_iid(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent draws of the moons distribution: θ ~ U[0, π], the moon by a fair coin, noise 0.05.

    ``make_moons`` spaces θ evenly, a stratified sample of this distribution (its n → ∞
    limit). Fresh data for evaluation uses these i.i.d. draws: two stratified sets are
    far closer to each other (sliced Wasserstein ≈ 0.005 for 2000 vs 5000 points) than
    any sampler that draws its points independently can come (≈ 0.03).
    """
    theta = rng.uniform(0.0, math.pi, size=n)
    outer = rng.uniform(size=n) < 0.5
    points = np.where(outer[:, None], np.stack([np.cos(theta), np.sin(theta)], axis=1),
                      np.stack([1.0 - np.cos(theta), 1.0 - np.sin(theta) - 0.5], axis=1))
    return (points + rng.normal(0.0, MOONS_NOISE, size=(n, 2))).astype(np.float32)


def swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    """``u (cos u, sin u)`` with ``u ~ U[1.5π, 4.5π]``: scikit-learn's swiss roll in its (x, z) plane."""
    u = 1.5 * math.pi * (1.0 + 2.0 * rng.uniform(size=n))
    points = np.stack([u * np.cos(u), u * np.sin(u)], axis=1) + rng.normal(0.0, 0.25, size=(n, 2))
    return _shuffled(points, rng)


def spiral(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved arms ``± r (cos r, sin r)``, ``r = 3π √v``, ``v ~ U[0, 1]``, the arm by a fair coin."""
    r = 3.0 * math.pi * np.sqrt(rng.uniform(size=n))
    sign = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
    points = sign[:, None] * np.stack([r * np.cos(r), r * np.sin(r)], axis=1)
    return _shuffled(points + rng.normal(0.0, 0.2, size=(n, 2)), rng)


def gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Eight Gaussians of std 0.15 at angles ``2πk/8`` on the circle of radius 2."""
    k = rng.integers(0, 8, size=n)
    angle = 2.0 * math.pi * k / 8.0
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _shuffled(centres + rng.normal(0.0, 0.15, size=(n, 2)), rng)


def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the black squares of a 4×4 board on ``[-2, 2]²`` (FFJORD's checkerboard)."""
    x = rng.uniform(-2.0, 2.0, size=n)
    y = rng.uniform(0.0, 1.0, size=n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(x) % 2
    return _shuffled(np.stack([x, y], axis=1), rng)


def rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Concentric circles of radius 1, 2, 3; each point picks a ring with probability ∝ its radius."""
    radius = rng.choice(np.array([1.0, 2.0, 3.0]), size=n, p=np.array([1.0, 2.0, 3.0]) / 6.0)
    angle = rng.uniform(0.0, 2.0 * math.pi, size=n)
    points = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _shuffled(points + rng.normal(0.0, 0.08, size=(n, 2)), rng)


GENERATORS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": moons, "swiss_roll": swiss_roll, "spiral": spiral, "gaussians": gaussians,
    "checkerboard": checkerboard, "rings": rings,
}
assert tuple(GENERATORS) == BUILTIN_DATASETS


@dataclass(eq=False)
class Dataset:
    """A training set and its standardisation (see the module docstring).

    Attributes:
        name: One of ``LIMITS["dataset"]``.
        points: float32 ``(n, 2)`` in the data set's own coordinates.
        seed: The seed the points were drawn with.
        mean: float64 ``(2,)``, the points' mean.
        scale: The isotropic scale ``sqrt((Var x + Var y) / 2)``.
        source: What else rebuilds the set (``text`` or ``strokes``), for :meth:`fresh`.
    """

    name: str
    points: np.ndarray
    seed: int
    mean: np.ndarray
    scale: float
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.points.shape[0])

    @property
    def standardised(self) -> np.ndarray:
        """float32 ``(n, 2)``: ``(points - mean) / scale``, what the model trains on."""
        return self.to_model(self.points)

    def to_model(self, points: Any) -> np.ndarray:
        """Points in the data set's coordinates → the standardised (model) coordinates."""
        return ((np.asarray(points, dtype=np.float64) - self.mean) / self.scale).astype(np.float32)

    def to_data(self, x: Any) -> np.ndarray:
        """Standardised (model) coordinates → the data set's own coordinates (float32)."""
        return (np.asarray(x, dtype=np.float64) * self.scale + self.mean).astype(np.float32)

    def fresh(self, n: int, seed: int) -> np.ndarray:
        """``n`` new, independent points of the same distribution, in the data set's coordinates.

        Evaluations compare samples with these (never with the training points). For
        ``moons`` they are :func:`moons_iid` draws (see there why).
        """
        if self.name == "moons":
            return moons_iid(check_int("n_points", n), np.random.default_rng(check_int("seed", seed)))
        return make_dataset(self.name, n, seed, **self.source).points

    def summary(self) -> dict[str, Any]:
        """JSON-safe description of the set."""
        return {"dataset": self.name, "n_points": len(self), "seed": int(self.seed),
                "mean": [round(float(v), 6) for v in self.mean], "scale": round(float(self.scale), 6),
                **({"text": self.source["text"]} if "text" in self.source else {})}


def standardisation(points: np.ndarray) -> tuple[np.ndarray, float]:
    """``(mean, scale)`` of ``points`` with the isotropic scale of the module docstring.

    Raises:
        InputError: ``points_degenerate`` when all points coincide (scale 0).
    """
    p = np.asarray(points, dtype=np.float64)
    mean = p.mean(axis=0)
    scale = float(np.sqrt(p.var(axis=0).mean()))
    if not scale > 1e-9:
        raise InputError("points_degenerate", "The points all lie on one spot; draw a larger shape.")
    return mean, scale


def make_dataset(name: str = DEFAULTS["dataset"], n_points: int = DEFAULTS["n_points"],
                 seed: int = DEFAULTS["seed"], text: str | None = None,
                 strokes: Sequence[Sequence[Sequence[float]]] | None = None,
                 canvas_size: tuple[int, int] | None = None) -> Dataset:
    """Draw a training set: a built-in one, the points of a text, or of a drawing.

    Args:
        name: One of ``LIMITS["dataset"]``: a built-in set, ``"text"`` or ``"drawing"``.
        n_points: Number of points, within ``LIMITS["n_points"]``.
        seed: Seed of the ``numpy.random.Generator`` that draws them.
        text: The text for ``"text"`` (see :func:`~diffusion.lessons.lab2d.drawn.from_text`).
        strokes: Polylines in canvas pixels for ``"drawing"``
            (see :func:`~diffusion.lessons.lab2d.drawn.from_strokes`).
        canvas_size: ``(width, height)`` of the drawing canvas in pixels.

    Returns:
        A :class:`Dataset` with its standardisation.

    Raises:
        InputError: ``bad_choice`` for an unknown name, ``out_of_range`` and friends for
            ``n_points`` or ``seed``, and the text / drawing checks of :mod:`.drawn`.
    """
    from diffusion.lessons.lab2d import drawn  # drawn imports Pillow; built-in sets need none of it

    name = check_name("dataset", name)
    n = check_int("n_points", n_points)
    seed = check_int("seed", seed)
    source: dict[str, Any] = {}
    if name == "text":
        text = DEFAULTS["text"] if text is None else text
        points = drawn.from_text(text, n, seed)
        source = {"text": text}
    elif name == "drawing":
        if strokes is None:
            raise InputError("drawing_empty", "Draw something on the canvas first.")
        points = drawn.from_strokes(strokes, n, seed, canvas_size=canvas_size)
        source = {"strokes": strokes, "canvas_size": canvas_size}
    else:
        points = GENERATORS[name](n, np.random.default_rng(seed))
    mean, scale = standardisation(points)
    return Dataset(name=name, points=np.ascontiguousarray(points, dtype=np.float32), seed=seed,
                   mean=mean, scale=scale, source=source)
