"""``python -m diffusion.bench noising``: what one move of lesson 2's slider costs.

Lesson 2's slider on a 256x256 example image with T = 1000: a cold first query of
the step-by-step chain, then seeded random jumps of t with a warm chain, timing the
picture path (x_t both ways, noise, strip, display conversion) and the two plots
(rendered to PNG as the app sends them). Prints median and worst times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffusion import cli
from diffusion.bench.timing import best_time


def run_noising(args: argparse.Namespace) -> int:
    """Time what one move of the forward-noising slider costs."""
    import io

    from diffusion import images
    from diffusion.lessons import noising
    from diffusion.lessons.noising import figures as noising_plots
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
        noising_plots.schedules_png(schedule, T, result.t)  # as the tab draws it: curves once, then the marker
        noising_plots.plot_histogram(result.x_t, result.x0, result.t).savefig(io.BytesIO(), format="png")

    cold_s, _ = best_time(lambda: chain.x_at(T), 1)
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


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``noising`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser(
        "noising", help="cost of one move of the forward-noising slider",
        description="Lesson 2: time the slider's picture path and plots on a 256x256 image.")
    parser.add_argument("--moves", type=cli.positive_int, default=30,
                        help="random slider positions to time (default 30)")
    parser.set_defaults(func=run_noising)
