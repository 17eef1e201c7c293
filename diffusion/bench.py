"""Benchmarks for the lessons, run from the command line.

Usage::

    python -m diffusion.bench heat [--repeat N]
    python -m diffusion.bench noising [--moves N]

Subcommands:

noising
    Lesson 2's slider on a 256x256 example image with T = 1000: a cold first query of
    the step-by-step chain, then seeded random jumps of t with a warm chain, timing the
    picture path (x_t both ways, noise, strip, display conversion) and the two plots
    (rendered to PNG as the app sends them). Prints median and worst times.

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


def run_noising(args: argparse.Namespace) -> int:
    """Time what one move of the forward-noising slider costs."""
    import io

    from diffusion import images, noising, noising_plots
    from diffusion.examples import list_examples

    path = next(p for p in list_examples() if p.stem == "astronaut")
    x0, _ = images.load_image(path, max_side=256)
    schedule, T, seed = "linear", 1000, 0
    chain = noising.StepwiseChain(x0, noising.get_schedule(schedule, T), seed)
    strip_ts = [0, 50, 100, 250, 500, 750, 1000]

    def pictures(t: int) -> noising.ForwardResult:
        result = noising.forward_noise(x0, schedule, T, t, seed, chain=chain)
        frames = noising.noise_strip(x0, schedule, T, seed, strip_ts)
        for image in (result.x_t, result.x_t_stepwise, *frames):
            noising.to_display(image)
        noising.to_display(result.noise, lo=-3.0, hi=3.0)
        return result

    def plots(result: noising.ForwardResult) -> None:
        for fig in (noising_plots.plot_schedules(schedule, T, result.t),
                    noising_plots.plot_histogram(result.x_t, result.x0, result.t)):
            fig.savefig(io.BytesIO(), format="png")

    cold_s, _ = _best_time(lambda: chain.x_at(T), 1)
    rng = np.random.default_rng(0)
    picture_s, plot_s = [], []
    for t in rng.integers(0, T + 1, size=args.moves):
        start = time.perf_counter()
        result = pictures(int(t))
        middle = time.perf_counter()
        plots(result)
        picture_s.append(middle - start)
        plot_s.append(time.perf_counter() - middle)
    total = np.add(picture_s, plot_s)
    print(f"noising: {x0.shape[1]}x{x0.shape[0]} image, T = {T}, {args.moves} random slider moves")
    print(f"{'step':<40}{'median s':>10}{'worst s':>10}")
    print(f"{'first query of a new chain (t = T)':<40}{cold_s:>10.3f}{cold_s:>10.3f}")
    for name, values in (("pictures + summary (warm chain)", picture_s), ("two plots to PNG", plot_s),
                         ("whole slider move", total)):
        print(f"{name:<40}{np.median(values):>10.3f}{np.max(values):>10.3f}")
    print(f"whole move vs a 1 s budget: median {np.median(total):.2f}x, worst {np.max(total):.2f}x")
    return 0


def _add_noising(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "noising", help="cost of one move of the forward-noising slider",
        description="Lesson 2: time the slider's picture path and plots on a 256x256 image.")
    parser.add_argument("--moves", type=_positive_int, default=30,
                        help="random slider positions to time (default 30)")
    parser.set_defaults(func=run_noising)


SUBCOMMANDS = (_add_heat, _add_noising)


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
