"""``python -m diffusion.bench lab2d``: what the 2-D lab's live actions cost on one CPU core.

With one torch thread (a classroom server gives each student about one core): the CPU
and wall time of one default training (``DEFAULTS["steps"]`` steps on ``moons``), then
sampling 1000 points × 100 steps with DDPM and DDIM from the network and from the exact
score (2000 training points), recording the trajectories as the app does (best of
``--repeat``). Each figure is printed next to its budget (training 5 s, learned sampling
0.5 s) as a ratio; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion import cli
from diffusion.bench.timing import best_time

TRAIN_BUDGET_S = 5.0
SAMPLE_BUDGET_S = 0.5


def run_lab2d(args: argparse.Namespace) -> int:
    """Time a default training and each sampler's 1000 × 100 run."""
    from diffusion.lessons import lab2d

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or 1)
    try:
        d = lab2d.DEFAULTS
        data = lab2d.make_dataset("moons", d["n_points"], 0)
        run = lab2d.new_run(data)
        cpu, wall = time.process_time(), time.perf_counter()
        summary = lab2d.train(run, args.steps)
        train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"lab2d: torch threads {torch.get_num_threads()}, moons with {len(data)} points, "
              f"MLP hidden {d['hidden']} × depth {d['depth']}, batch {d['batch_size']}, {d['schedule']} schedule")
        print(f"{'action':<44}{'seconds':>10}{'budget':>9}{'ratio':>8}")
        print(f"{f'train {args.steps} steps (CPU time)':<44}{train_cpu:>10.3f}{TRAIN_BUDGET_S:>9.1f}"
              f"{train_cpu / TRAIN_BUDGET_S:>7.2f}x")
        print(f"{f'train {args.steps} steps (wall time)':<44}{train_wall:>10.3f}{TRAIN_BUDGET_S:>9.1f}"
              f"{train_wall / TRAIN_BUDGET_S:>7.2f}x")
        print(f"{'  time per training step (ms)':<44}{1000 * train_wall / summary.steps_run:>10.3f}")
        for predictor in ("learned", "exact"):
            for sampler in lab2d.SAMPLERS:
                seconds, _ = best_time(lambda: lab2d.sample(run, sampler, 100, 0.0, 1000, 0, predictor=predictor),
                                       args.repeat)
                label = f"sample 1000 × 100 steps, {sampler}, {predictor}"
                budget = (f"{SAMPLE_BUDGET_S:>9.1f}{seconds / SAMPLE_BUDGET_S:>7.2f}x" if predictor == "learned"
                          else f"{'–':>9}{'':>8}")  # the exact score's cost grows with the training set
                print(f"{label:<44}{seconds:>10.3f}{budget}")
        field_s, _ = best_time(lambda: lab2d.score_field(run, d["t"], d["grid"]), args.repeat)
        print(f"{'score fields on a {0}×{0} grid'.format(d['grid']):<44}{field_s:>10.3f}")
    finally:
        torch.set_num_threads(threads)
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``lab2d`` with ``python -m diffusion.bench``."""
    from diffusion.lessons.lab2d.config import DEFAULTS

    parser = subparsers.add_parser(
        "lab2d", help="2-D lab: default training time and 1000 × 100 sampling per sampler",
        description="2-D lab: time the default training and each sampler on one CPU thread.")
    parser.add_argument("--steps", type=cli.positive_int, default=DEFAULTS["steps"],
                        help=f"training steps (default {DEFAULTS['steps']})")
    parser.add_argument("--repeat", type=cli.positive_int, default=3,
                        help="runs of each sampler; the best time is shown (default 3)")
    cli.add_threads_argument(parser, help="torch CPU threads (default 1)")
    parser.set_defaults(func=run_lab2d)
