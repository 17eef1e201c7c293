"""Time stepping for u_t = D u_xx: FTCS (explicit) and Crank–Nicolson (implicit).

Both march from u^0 with the mesh ratio r = D dt / dx^2. FTCS is stable only for
r <= 1/2; Crank–Nicolson is stable for every r. The classic double loop,
:func:`ftcs_textbook`, is kept as the reference the vectorised FTCS is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from scipy.linalg import lapack

from diffusion.errors import InputError, check_choice
from diffusion.lessons.heat.params import BOUNDARIES

BLOW_UP_FACTOR = 1e6


class TimeMarch(NamedTuple):
    """Snapshots of a time-stepping run; rows at or after ``blow_up_step`` are NaN."""

    frames: np.ndarray
    frame_steps: np.ndarray
    blow_up_step: int | None


def _march(u0: np.ndarray, n_steps: int, steps: np.ndarray | None,
           advance: Callable[[np.ndarray], None], check_every_step: bool) -> TimeMarch:
    """Run ``advance`` (in place) n_steps times, keep the frames at ``steps``, and stop
    as soon as max|u| passes the blow-up threshold (before float overflow)."""
    steps = np.array([n_steps] if steps is None else steps, dtype=np.int64)
    u = np.array(u0, dtype=np.float64)
    frames = np.full((len(steps), len(u)), np.nan)
    threshold = BLOW_UP_FACTOR * max(1.0, float(np.abs(u).max(initial=0.0)))
    wanted, index, blow_up = steps.tolist() + [-1], 0, None
    if wanted[0] == 0:
        frames[0], index = u, 1
    with np.errstate(all="ignore"):
        for n in range(1, n_steps + 1):
            advance(u)
            at_frame = n == wanted[index]
            if check_every_step or at_frame:
                if not max(u.max(), -u.min()) <= threshold:  # also catches NaN
                    blow_up = n
                    break
            if at_frame:
                frames[index], index = u, index + 1
    return TimeMarch(frames, steps, blow_up)


def _ftcs_advance(r: float, boundary: str, n: int) -> Callable[[np.ndarray], None]:
    lap = np.empty(n)

    def advance(u: np.ndarray) -> None:
        # Same operation order as the textbook loop, so both agree to the last bit.
        inner = lap[1:-1]
        np.multiply(u[1:-1], -2.0, out=inner)
        inner += u[2:]
        inner += u[:-2]
        if boundary == "dirichlet":
            lap[0] = lap[-1] = 0.0
        elif boundary == "neumann":  # ghost nodes u[-1] = u[1], u[N] = u[N-2]
            lap[0], lap[-1] = u[1] - 2.0 * u[0] + u[1], u[-2] - 2.0 * u[-1] + u[-2]
        else:
            lap[0], lap[-1] = u[1] - 2.0 * u[0] + u[-1], u[0] - 2.0 * u[-1] + u[-2]
        np.multiply(lap, r, out=lap)
        u += lap
        if boundary == "dirichlet":
            u[0] = u[-1] = 0.0

    return advance


def ftcs_step(u: np.ndarray, r: float, boundary: str = "dirichlet") -> np.ndarray:
    """One FTCS step: u_i^{n+1} = u_i^n + r (u_{i+1}^n - 2u_i^n + u_{i-1}^n), r = D dt/dx^2.

    Args:
        u: Values at step n (not modified).
        r: Mesh ratio D dt / dx^2.
        boundary: dirichlet (ends set to 0), neumann (ghost u_{-1} = u_1), periodic.

    Returns:
        A new array with the values at step n + 1.
    """
    check_choice("boundary", boundary, BOUNDARIES)
    new = np.array(u, dtype=np.float64)
    with np.errstate(all="ignore"):
        _ftcs_advance(r, boundary, len(new))(new)
    return new


def ftcs(u0: np.ndarray, r: float, n_steps: int, boundary: str = "dirichlet",
         steps: np.ndarray | None = None) -> TimeMarch:
    """FTCS time stepping, vectorised over the grid (see :func:`ftcs_step`).

    Stable only for r <= 1/2; above that the highest mode grows by |1 - 4r| per step,
    so the run is stopped once max|u| > 1e6 max(1, max|u0|), reported as ``blow_up_step``.

    Args:
        u0: Initial values. r: Mesh ratio. n_steps: Number of steps.
        boundary: One of ``BOUNDARIES``.
        steps: Step indices to store (default: only the last).

    Returns:
        :class:`TimeMarch` with one row per stored step.
    """
    check_choice("boundary", boundary, BOUNDARIES)
    return _march(u0, n_steps, steps, _ftcs_advance(r, boundary, len(u0)), r > 0.5)


def crank_nicolson(u0: np.ndarray, r: float, n_steps: int, boundary: str = "dirichlet",
                   steps: np.ndarray | None = None) -> TimeMarch:
    """Crank-Nicolson: (I - r/2 A) u^{n+1} = (I + r/2 A) u^n, A the second difference.

    The tridiagonal matrix is LU-factored once (LAPACK ``dgttrf``) and each step is one
    ``dgttrs`` solve. Dirichlet: N-2 interior unknowns. Neumann: N unknowns; the ghost
    nodes double the first super- and last sub-diagonal entry. Periodic: the matrix is
    cyclic tridiagonal, B = T + a b^T with a = (g, 0, ..., -r/2), b = (1, 0, ..., -r/(2g)),
    g = -(1 + r); T is factored once and Sherman-Morrison gives
    B^{-1} y = T^{-1} y - (b.T^{-1} y) / (1 + b.T^{-1} a) T^{-1} a.

    Args and Returns: as for :func:`ftcs`; stable for every r.
    """
    check_choice("boundary", boundary, BOUNDARIES)
    n, h = len(u0), r / 2
    size = n - 2 if boundary == "dirichlet" else n
    diag, lower, upper = np.full(size, 1.0 + r), np.full(size - 1, -h), np.full(size - 1, -h)
    if boundary == "neumann":
        upper[0] = lower[-1] = -r
    gamma = -(1.0 + r)
    if boundary == "periodic":
        diag[0] -= gamma
        diag[-1] -= h * h / gamma
    factors = lapack.dgttrf(lower, diag, upper)[:5]

    def solve(b: np.ndarray) -> np.ndarray:
        return lapack.dgttrs(*factors, b)[0]

    if boundary == "periodic":
        a_vec = np.zeros(n)
        a_vec[0], a_vec[-1] = gamma, -h
        z = solve(a_vec)
        b_last = -h / gamma
        z_scale = 1.0 / (1.0 + z[0] + b_last * z[-1])
    rhs = np.empty(n)

    def advance(u: np.ndarray) -> None:
        np.multiply(u, 1.0 - r, out=rhs)
        rhs[1:-1] += h * (u[2:] + u[:-2])
        if boundary == "dirichlet":
            u[1:-1] = solve(rhs[1:-1])
            u[0] = u[-1] = 0.0
            return
        if boundary == "neumann":
            rhs[0] += r * u[1]
            rhs[-1] += r * u[-2]
            u[:] = solve(rhs)
            return
        rhs[0] += h * (u[1] + u[-1])
        rhs[-1] += h * (u[0] + u[-2])
        y = solve(rhs)
        u[:] = y - (y[0] + b_last * y[-1]) * z_scale * z

    return _march(u0, n_steps, steps, advance, False)


def ftcs_textbook(u0: np.ndarray, r: float, n_steps: int) -> np.ndarray:
    """The classic FTCS loop over a full (n_steps+1, N) array, fixed zero ends.

    u[j+1, i] = u[j, i] + r (u[j, i+1] - 2 u[j, i] + u[j, i-1]); deliberately slow,
    kept as the reference for tests and the benchmark.

    Args:
        u0: Initial values. r: Mesh ratio D dt / dx^2. n_steps: Number of steps.

    Returns:
        The last row, u at step ``n_steps``.
    """
    n = len(u0)
    if (n_steps + 1) * n > 20_000_000:
        raise InputError("too_much_work", "The textbook loop is limited to {limit} values.",
                         limit=20_000_000)
    u = np.zeros((n_steps + 1, n))
    u[0] = u0
    for j in range(n_steps):
        for i in range(1, n - 1):
            u[j + 1, i] = u[j, i] + r * (u[j, i + 1] - 2 * u[j, i] + u[j, i - 1])
    return u[-1].copy()
