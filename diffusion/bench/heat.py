"""``python -m diffusion.bench heat``: lesson 1's solvers on the textbook problem.

The textbook FTCS problem (L = 100, T = 50, N = 1000 points, M = 5000 steps,
D = 0.1, a unit spike at the middle node, ends fixed at zero). Times the classic
double Python loop once and the vectorised FTCS (best of ``--repeat`` runs),
checks that they agree to 1e-12 (exit status 1 if not), prints both with the
speed-up, and adds Crank-Nicolson on the same grid for comparison.
"""

from __future__ import annotations

import argparse

import numpy as np

from diffusion import cli
from diffusion.bench.timing import best_time
from diffusion.lessons.heat import (
    HeatParams, crank_nicolson, ftcs, ftcs_textbook, initial_condition, make_grid,
)

TOLERANCE = 1e-12


def run_heat(args: argparse.Namespace) -> int:
    """Time the textbook loop against the vectorised FTCS and Crank-Nicolson."""
    params = HeatParams(initial_condition="spike", diffusivity=0.1, length=100.0,
                        n_points=1000, t_end=50.0, n_steps=5000, scheme="ftcs",
                        boundary="dirichlet").validated()
    x, dx = make_grid(params.length, params.n_points, params.boundary)
    u0 = initial_condition(params, x)
    r = params.diffusivity * (params.t_end / params.n_steps) / dx**2
    print(f"heat: N = {params.n_points}, M = {params.n_steps}, D = {params.diffusivity}, "
          f"L = {params.length}, T = {params.t_end}, r = {r:.4f}")

    loop_s, reference = best_time(lambda: ftcs_textbook(u0, r, params.n_steps), 1)
    fast_s, march = best_time(lambda: ftcs(u0, r, params.n_steps, "dirichlet"), args.repeat)
    cn_s, _ = best_time(lambda: crank_nicolson(u0, r, params.n_steps, "dirichlet"), args.repeat)
    difference = float(np.max(np.abs(march.frames[-1] - reference)))

    rows = [("textbook loop (1 run)", loop_s),
            (f"vectorised FTCS (best of {args.repeat})", fast_s),
            (f"Crank-Nicolson (best of {args.repeat})", cn_s)]
    print(f"{'method':<34}{'seconds':>12}{'speed-up':>12}")
    for name, seconds in rows:
        print(f"{name:<34}{seconds:>12.4f}{loop_s / seconds:>11.1f}x")
    verdict = "ok" if difference <= TOLERANCE else "FAILED"
    print(f"max |vectorised - textbook| = {difference:.3e} (tolerance {TOLERANCE:g}): {verdict}")
    return 0 if difference <= TOLERANCE else 1


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``heat`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser(
        "heat", help="textbook FTCS loop vs vectorised FTCS vs Crank-Nicolson",
        description="Lesson 1: time the heat-equation solvers on the textbook problem.")
    parser.add_argument("--repeat", type=cli.positive_int, default=5,
                        help="runs of each fast solver; the best time is shown (default 5)")
    parser.set_defaults(func=run_heat)
