"""One run of lesson 1: the chosen scheme next to the exact solution, with diagnostics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffusion.lessons.heat.exact import exact_solution
from diffusion.lessons.heat.grid import frame_steps, initial_condition, make_grid, total_mass
from diffusion.lessons.heat.params import HeatParams
from diffusion.lessons.heat.schemes import crank_nicolson, ftcs


@dataclass
class HeatResult:
    """Stored frames of one run, the exact solution at the same times, and diagnostics."""

    params: HeatParams
    x: np.ndarray
    times: np.ndarray
    u: np.ndarray
    u_exact: np.ndarray
    mass: np.ndarray
    dx: float
    dt: float
    r: float
    stable: bool
    blew_up: bool
    blow_up_time: float | None
    runtime_ms: float

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers for display; after a blow-up, errors and ``mass_end``
        come from the last frame before it (``last_finite_time``)."""
        finite = np.isfinite(self.u).all(axis=1)
        last = int(np.flatnonzero(finite)[-1])  # frame 0 is always finite
        error = np.abs(self.u[finite] - self.u_exact[finite]).max()
        return {
            "scheme": self.params.scheme, "boundary": self.params.boundary,
            "initial_condition": self.params.initial_condition,
            "r": float(self.r), "stable": bool(self.stable), "dt": float(self.dt),
            "dx": float(self.dx), "max_abs_error_vs_exact": float(error),
            "mass_start": float(self.mass[0]), "mass_end": float(self.mass[last]),
            "last_finite_time": float(self.times[last]), "blew_up": bool(self.blew_up),
            "blow_up_time": None if self.blow_up_time is None else float(self.blow_up_time),
            "runtime_ms": float(self.runtime_ms),
        }


def simulate(params: HeatParams) -> HeatResult:
    """Validate ``params``, run the chosen scheme and compare with the exact solution.

    Args:
        params: The request; validated here, so raw user input is fine.

    Returns:
        :class:`HeatResult` with ``min(n_frames, n_steps + 1)`` frames. ``runtime_ms`` is
        the time spent stepping (for "exact": evaluating the Fourier series).

    Raises:
        InputError: see :meth:`HeatParams.validated`.
    """
    p = params.validated()
    x, dx = make_grid(p.length, p.n_points, p.boundary)
    dt = p.t_end / p.n_steps
    r = p.diffusivity * dt / dx**2
    u0 = initial_condition(p, x)
    steps = frame_steps(p.n_steps, p.n_frames)
    times = steps * dt
    start = time.perf_counter()
    if p.scheme == "exact":
        u_exact = exact_solution(u0, x, times, p.diffusivity, p.length, p.boundary)
        u, blow_up = u_exact.copy(), None
    else:
        method = ftcs if p.scheme == "ftcs" else crank_nicolson
        u, _, blow_up = method(u0, r, p.n_steps, p.boundary, steps)
    runtime_ms = (time.perf_counter() - start) * 1000.0
    if p.scheme != "exact":
        u_exact = exact_solution(u0, x, times, p.diffusivity, p.length, p.boundary)
    return HeatResult(
        params=p, x=x, times=times, u=u, u_exact=u_exact, mass=total_mass(u, dx, p.boundary),
        dx=dx, dt=dt, r=r, stable=not (p.scheme == "ftcs" and r > 0.5),
        blew_up=blow_up is not None, blow_up_time=None if blow_up is None else blow_up * dt,
        runtime_ms=runtime_ms)
