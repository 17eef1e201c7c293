"""Benchmarks for the lessons, run from the command line.

Usage::

    python -m diffusion.bench heat [--repeat N]

Subcommands:

heat
    The textbook FTCS problem (L = 100, T = 50, N = 1000 points, M = 5000 steps,
    D = 0.1, a unit spike at the middle node, ends fixed at zero). Times the classic
    double Python loop once and the vectorised FTCS (best of ``--repeat`` runs),
    checks that they agree to 1e-12 (exit status 1 if not), prints both with the
    speed-up, and adds Crank-Nicolson on the same grid for comparison.

Each subcommand is a ``_add_<name>`` function that registers its parser and sets
``func``; further lessons add theirs to ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from diffusion.heat import (
    HeatParams, crank_nicolson, ftcs, ftcs_textbook, initial_condition, make_grid,
)

TOLERANCE = 1e-12


def _best_time(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Smallest wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value


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

    loop_s, reference = _best_time(lambda: ftcs_textbook(u0, r, params.n_steps), 1)
    fast_s, march = _best_time(lambda: ftcs(u0, r, params.n_steps, "dirichlet"), args.repeat)
    cn_s, _ = _best_time(lambda: crank_nicolson(u0, r, params.n_steps, "dirichlet"),
                         args.repeat)
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


def _add_heat(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "heat", help="textbook FTCS loop vs vectorised FTCS vs Crank-Nicolson",
        description="Lesson 1: time the heat-equation solvers on the textbook problem.")
    parser.add_argument("--repeat", type=_positive_int, default=5,
                        help="runs of each fast solver; the best time is shown (default 5)")
    parser.set_defaults(func=run_heat)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


SUBCOMMANDS = (_add_heat,)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m diffusion.bench",
                                     description="Diffusion Lab benchmarks.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
