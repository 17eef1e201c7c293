"""Lesson 1: the 1-D heat equation u_t = D u_xx, solved three ways.

FTCS (explicit, stable only for r = D dt / dx^2 <= 1/2), Crank-Nicolson (implicit,
unconditionally stable) and the exact Fourier-series solution for the same
boundary condition. Every request is validated and capped so that no input can
hang a server or exhaust its memory.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import scipy.fft
from scipy.linalg import lapack

from diffusion.errors import InputError, check_choice, check_range
from diffusion.lessons.heat.expression import MAX_EXPRESSION_CHARS, parse_expression, too_long

INITIAL_CONDITIONS = ("spike", "gaussian", "step", "sine", "random", "custom")
SCHEMES = ("ftcs", "crank_nicolson", "exact")
BOUNDARIES = ("dirichlet", "neumann", "periodic")
LIMITS: dict[str, tuple[float, float]] = {
    "diffusivity": (1e-9, 100.0),
    "length": (1e-3, 1e4),
    "n_points": (8, 4001),
    "t_end": (1e-9, 1e6),
    "n_steps": (1, 100_000),
    "sine_mode": (1, 100),
    "seed": (0, 2**32 - 1),
    "n_frames": (2, 201),
}
INTEGER_FIELDS = ("n_points", "n_steps", "sine_mode", "seed", "n_frames")
MAX_WORK = 100_000_000          # n_points * n_steps: a few seconds of stepping at most
MAX_INITIAL_ABS = 1e12          # keeps 1e6 x max|u0| (the blow-up threshold) far from overflow
BLOW_UP_FACTOR = 1e6


@dataclass(frozen=True)
class HeatParams:
    """Everything that defines one heat-equation run (see ``LIMITS`` for ranges)."""

    initial_condition: str = "spike"
    custom_expression: str = "exp(-(x-50)**2/20) + 0.5*sin(x/5)"
    diffusivity: float = 0.1
    length: float = 100.0
    n_points: int = 1000
    t_end: float = 50.0
    n_steps: int = 5000
    scheme: str = "ftcs"
    boundary: str = "dirichlet"
    sine_mode: int = 1
    seed: int = 0
    n_frames: int = 101

    def validated(self) -> HeatParams:
        """Check every field (type, finiteness, range, choice, work cap, expression).

        Returns:
            A copy with numbers as ``float`` and whole-number fields as ``int``.

        Raises:
            InputError: codes ``bad_choice``, ``not_a_number``, ``not_an_integer``,
                ``out_of_range``, ``too_much_work``, ``not_text`` or any ``expr_*`` code.
        """
        changes: dict[str, Any] = {
            "initial_condition": check_choice("initial_condition", self.initial_condition,
                                              INITIAL_CONDITIONS),
            "scheme": check_choice("scheme", self.scheme, SCHEMES),
            "boundary": check_choice("boundary", self.boundary, BOUNDARIES),
        }
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, (str, bytes, np.bool_)):
                raise InputError("not_a_number", "{name} must be a number.", name=name)
            changes[name] = check_range(name, value, lo, hi, integer=name in INTEGER_FIELDS)
        work = changes["n_points"] * changes["n_steps"]
        if work > MAX_WORK:
            raise InputError(
                "too_much_work",
                "n_points × n_steps = {work} is more than the limit of {limit}; "
                "use fewer points or fewer time steps.", work=work, limit=MAX_WORK)
        if not isinstance(self.custom_expression, str):
            raise InputError("not_text", "{name} must be text.", name="custom_expression")
        if len(self.custom_expression) > MAX_EXPRESSION_CHARS:
            raise too_long(self.custom_expression)
        checked = dataclasses.replace(self, **changes)
        if checked.initial_condition == "custom":
            initial_condition(checked, make_grid(checked.length, checked.n_points,
                                                 checked.boundary)[0])
        return checked


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


class TimeMarch(NamedTuple):
    """Snapshots of a time-stepping run; rows at or after ``blow_up_step`` are NaN."""

    frames: np.ndarray
    frame_steps: np.ndarray
    blow_up_step: int | None


# ---------------------------------------------------------------- grid and data
def make_grid(length: float, n_points: int, boundary: str) -> tuple[np.ndarray, float]:
    """Nodes and spacing for a boundary condition.

    Args:
        length: L. n_points: N. boundary: One of ``BOUNDARIES``.

    Returns:
        ``(x, dx)``: ``linspace(0, L, N)`` and L/(N-1) for dirichlet/neumann;
        ``arange(N) L/N`` and L/N for periodic (a node at x = L would repeat x = 0).
    """
    if boundary == "periodic":
        return np.arange(n_points) * (length / n_points), length / n_points
    return np.linspace(0.0, length, n_points), length / (n_points - 1)


def frame_steps(n_steps: int, n_frames: int) -> np.ndarray:
    """``min(n_frames, n_steps + 1)`` evenly spaced step indices from 0 to ``n_steps``."""
    count = min(n_frames, n_steps + 1)
    return np.rint(np.linspace(0, n_steps, count)).astype(np.int64)


def initial_condition(params: HeatParams, x: np.ndarray) -> np.ndarray:
    """u(x, 0) for validated ``params`` on the grid ``x``; dirichlet ends are set to 0.

    spike: 1 at node N//2; gaussian: exp(-(x-L/2)^2 / (2 w^2)), w = L/20;
    step: 1 for x < L/2; sine: sin(k pi x / L); random: uniform [0, 1) from ``seed``;
    custom: :func:`parse_expression` of ``custom_expression``.

    Args:
        params: Validated parameters. x: Grid from :func:`make_grid`.

    Returns:
        A new float64 array shaped like ``x``.

    Raises:
        InputError: any ``expr_*`` code, or ``expr_too_large`` if |u0| > ``MAX_INITIAL_ABS``.
    """
    length, kind = params.length, params.initial_condition
    if kind == "spike":
        u0 = np.zeros_like(x)
        u0[len(x) // 2] = 1.0
    elif kind == "gaussian":
        u0 = np.exp(-((x - length / 2) ** 2) / (2 * (length / 20) ** 2))
    elif kind == "step":
        u0 = (x < length / 2).astype(np.float64)
    elif kind == "sine":
        u0 = np.sin(params.sine_mode * np.pi * x / length)
    elif kind == "random":
        u0 = np.random.default_rng(params.seed).random(len(x))
    else:
        u0 = parse_expression(params.custom_expression, length)(x)
        worst = int(np.argmax(np.abs(u0)))
        if abs(u0[worst]) > MAX_INITIAL_ABS:
            raise InputError("expr_too_large", "Initial values must stay within ±{limit} "
                             "(got {value} at x = {x}).", limit=MAX_INITIAL_ABS,
                             value=float(f"{u0[worst]:.6g}"), x=float(f"{x[worst]:.6g}"))
    if params.boundary == "dirichlet":
        u0[0] = u0[-1] = 0.0
    return u0


def total_mass(u: np.ndarray, dx: float, boundary: str) -> np.ndarray:
    """Total heat: the integral of u over the domain, along the last axis.

    Args:
        u: Values, shape (..., N). dx: Spacing. boundary: One of ``BOUNDARIES``.

    Returns:
        Trapezoid rule for dirichlet/neumann, sum * dx for periodic: the weights the
        schemes conserve exactly when no heat crosses the boundary.
    """
    if boundary == "periodic":
        return u.sum(axis=-1) * dx
    return (u.sum(axis=-1) - 0.5 * (u[..., 0] + u[..., -1])) * dx


# ---------------------------------------------------------------- schemes
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


def exact_solution(u0: np.ndarray, x: np.ndarray, times: np.ndarray, diffusivity: float,
                   length: float, boundary: str) -> np.ndarray:
    """Fourier-series solution of u_t = D u_xx for the sampled u0, at each of ``times``.

    Each mode decays as exp(-D k^2 t). Dirichlet: DST-I of the interior nodes,
    k = n pi / L (ends 0). Neumann: DCT-I of all nodes, k = n pi / L. Periodic: FFT,
    k = 2 pi n / L. These are the eigenvectors of the discrete Laplacian too.

    Args:
        u0: Initial values on ``x``. x: Grid from :func:`make_grid`. times: Output times.
        diffusivity: D. length: L. boundary: One of ``BOUNDARIES``.

    Returns:
        Array of shape (len(times), len(x)).
    """
    check_choice("boundary", boundary, BOUNDARIES)
    u0, times = np.asarray(u0, dtype=np.float64), np.asarray(times, dtype=np.float64)
    if u0.shape != np.shape(x):
        raise ValueError("u0 and x must have the same shape")
    n = len(u0)
    with np.errstate(all="ignore"):
        if boundary == "periodic":
            k = 2 * np.pi * np.arange(n // 2 + 1) / length
            decay = np.exp(-diffusivity * np.outer(times, k**2))
            return scipy.fft.irfft(scipy.fft.rfft(u0) * decay, n=n, axis=-1)
        if boundary == "neumann":
            k = np.pi * np.arange(n) / length
            decay = np.exp(-diffusivity * np.outer(times, k**2))
            return scipy.fft.idct(scipy.fft.dct(u0, type=1) * decay, type=1, axis=-1)
        k = np.pi * np.arange(1, n - 1) / length
        decay = np.exp(-diffusivity * np.outer(times, k**2))
        out = np.zeros((len(times), n))
        out[:, 1:-1] = scipy.fft.idst(scipy.fft.dst(u0[1:-1], type=1) * decay, type=1, axis=-1)
        return out


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


def heat_kernel(x: np.ndarray, t: float, diffusivity: float, center: float) -> np.ndarray:
    """Heat kernel exp(-(x-c)^2 / (4 D t)) / sqrt(4 pi D t).

    It is the Gaussian density with variance 2 D t: the solution of u_t = D u_xx on the
    real line from a unit-mass spike at ``center``.

    Args:
        x: Positions. t: Time (> 0). diffusivity: D. center: Position of the spike.

    Returns:
        The density at ``x``.
    """
    t = check_range("t", t, 1e-12, 1e12)
    diffusivity = check_range("diffusivity", diffusivity, *LIMITS["diffusivity"])
    variance = 2.0 * diffusivity * t
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-((x - center) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)
