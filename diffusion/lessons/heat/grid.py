"""The grid, the initial temperature u(x, 0) on it, and the total heat ∫u dx."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diffusion.errors import InputError
from diffusion.lessons.heat.expression import parse_expression

if TYPE_CHECKING:
    from diffusion.lessons.heat.params import HeatParams

MAX_INITIAL_ABS = 1e12          # keeps 1e6 x max|u0| (the blow-up threshold) far from overflow


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
