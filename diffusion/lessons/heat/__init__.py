"""Lesson 1: the heat equation u_t = D u_xx, the physics behind the word *diffusion*.

Solved three ways on a 1-D grid: FTCS (explicit, stable only for r = D dt / dx^2 <= 1/2),
Crank–Nicolson (implicit, unconditionally stable) and the exact Fourier-series solution
for the same boundary condition. In a notebook::

    from diffusion.lessons import heat
    result = heat.simulate(heat.HeatParams(scheme="crank_nicolson"))
    result.summary()

Modules: :mod:`~.params` (the request and its checks), :mod:`~.grid` (grid, initial
condition, total heat), :mod:`~.schemes` (FTCS, Crank–Nicolson), :mod:`~.exact`
(Fourier series, heat kernel), :mod:`~.simulation` (one run), :mod:`~.expression` (the
safe formula parser). The figures (:mod:`~.figures`, matplotlib) are imported on their own.
"""

from diffusion.lessons.heat.exact import exact_solution, heat_kernel
from diffusion.lessons.heat.expression import MAX_EXPRESSION_CHARS, parse_expression
from diffusion.lessons.heat.grid import MAX_INITIAL_ABS, frame_steps, initial_condition, make_grid, total_mass
from diffusion.lessons.heat.params import (
    BOUNDARIES, INITIAL_CONDITIONS, LIMITS, MAX_WORK, SCHEMES, HeatParams,
)
from diffusion.lessons.heat.schemes import (
    BLOW_UP_FACTOR, TimeMarch, crank_nicolson, ftcs, ftcs_step, ftcs_textbook,
)
from diffusion.lessons.heat.simulation import HeatResult, simulate

__all__ = [
    "BLOW_UP_FACTOR", "BOUNDARIES", "INITIAL_CONDITIONS", "LIMITS", "MAX_EXPRESSION_CHARS",
    "MAX_INITIAL_ABS", "MAX_WORK", "SCHEMES",
    "HeatParams", "HeatResult", "TimeMarch",
    "crank_nicolson", "exact_solution", "frame_steps", "ftcs", "ftcs_step", "ftcs_textbook",
    "heat_kernel", "initial_condition", "make_grid", "parse_expression", "simulate", "total_mass",
]
