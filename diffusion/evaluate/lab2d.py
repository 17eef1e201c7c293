"""``python -m diffusion.evaluate lab2d``: how well does the 2-D lab's model learn each built-in set?

Protocol, per built-in data set (:data:`~diffusion.lessons.lab2d.BUILTIN_DATASETS`):

1. Draw the training set with the lab's defaults (``n_points``, seed 0) and train a run
   with the defaults (or ``--steps``) on one CPU thread; the CPU time is reported.
2. Sample ``--n-samples`` (2000) points with each sampler (``ddpm:100,ddim:50``), from the
   learned network and from the exact score of the training set.
3. Compare in the data set's own coordinates with ``--n-fresh`` (5000) fresh points drawn
   with another seed (never the training points): the sliced Wasserstein distance SW_1
   (256 seeded directions, :func:`~diffusion.lessons.lab2d.metrics.sliced_wasserstein`).
4. The **floor** is the same distance for ``n_samples`` *other* fresh points: what a
   perfect sampler would score. The **ratio** is SW ÷ floor (1 is perfect).
5. Memorisation: the median distance of the samples to their nearest training point,
   next to that of fresh data (``copy`` = median ÷ fresh median: 0 means copies).

SW_1 of 2000 points is noisy (one draw of the floor varies by about ±35 %), so the
model's SW is averaged over ``--repeats`` sampling seeds (the exact sampler's over one)
and the floor over :data:`FLOOR_DRAWS` fresh draws. Fresh ``moons`` are independent draws of the moons distribution
(:func:`~diffusion.lessons.lab2d.data.moons_iid`): ``make_moons`` spaces its points
evenly, and two such stratified sets are 5× closer than any independent sampler can be.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion import cli
from diffusion.lessons import lab2d

DEFAULT_SAMPLERS = "ddpm:100,ddim:50"
LONG_STEPS = 20_000
FRESH_SEED = 1_000_003
SAMPLE_SEED = 7
FLOOR_DRAWS = 20


def parse_samplers(text: str) -> list[tuple[str, int]]:
    """``"ddpm:100,ddim:50"`` → ``[("ddpm", 100), ("ddim", 50)]``."""
    pairs = []
    for part in text.split(","):
        name, _, steps = part.strip().partition(":")
        if name not in lab2d.SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(f"{part!r} is not sampler:steps with sampler in {lab2d.SAMPLERS}")
        pairs.append((name, int(steps)))
    return pairs


def evaluate_set(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train, sample and measure one data set (the module docstring's protocol)."""
    data = lab2d.make_dataset(name, args.n_points, args.seed)
    fresh = data.fresh(args.n_fresh, FRESH_SEED)
    floors = [lab2d.sliced_wasserstein(data.fresh(args.n_samples, FRESH_SEED + 1 + k), fresh, 256, 0)
              for k in range(FLOOR_DRAWS)]
    reference = float(np.median(lab2d.nearest_distance(data.fresh(args.n_samples, FRESH_SEED + 1), data.points)))
    run = lab2d.new_run(data, hidden=args.hidden, depth=args.depth, schedule=args.schedule, seed=args.seed)
    cpu = time.process_time()
    summary = lab2d.train(run, args.steps)
    row: dict[str, Any] = {"dataset": name, "train_cpu_seconds": round(time.process_time() - cpu, 2),
                           "steps": run.step, "loss": round(summary.loss, 4), "floor": float(np.mean(floors)),
                           "fresh_nearest_median": reference, "samplers": {}}
    for predictor in ("learned", "exact"):
        for sampler, steps in args.samplers:
            sws, medians = [], []
            for r in range(args.repeats if predictor == "learned" else 1):
                result = lab2d.sample(run, sampler, steps, 0.0, args.n_samples, SAMPLE_SEED + r,
                                      predictor=predictor, record=False)
                sws.append(lab2d.sliced_wasserstein(result.samples, fresh, 256, 0))
                medians.append(float(np.median(lab2d.nearest_distance(result.samples, data.points))))
            sw = float(np.mean(sws))
            row["samplers"][f"{predictor} {sampler}-{steps}"] = {
                "sw": sw, "ratio": sw / row["floor"], "nearest_median": float(np.mean(medians)),
                "copy": float(np.mean(medians)) / reference}
        print(f"  {name} {predictor}: " + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in row["samplers"].items()
                                                   if k.startswith(predictor)), file=sys.stderr, flush=True)
    return row


def print_table(report: dict[str, Any]) -> None:
    """A Markdown table: one row per set, ratio to the floor and copy figure per sampler."""
    rows = report["sets"]
    keys = list(rows[0]["samplers"])
    print(f"\n**2-D lab**: {report['steps']} training steps ({report['settings']}), {report['n_samples']} samples "
          f"vs {report['n_fresh']} fresh points; SW_1 ÷ floor (copy = median nearest-training distance ÷ "
          "fresh data's)\n")
    print("| set | train CPU s | loss | floor | " + " | ".join(keys) + " |")
    print("|---" * (4 + len(keys)) + "|")
    for row in rows:
        cells = [f"{row['samplers'][k]['ratio']:.2f}× (copy {row['samplers'][k]['copy']:.2f})" for k in keys]
        print(f"| {row['dataset']} | {row['train_cpu_seconds']:.2f} | {row['loss']:.3f} | {row['floor']:.4f} | "
              + " | ".join(cells) + " |")
    worst = {k: max(r["samplers"][k]["ratio"] for r in rows) for k in keys}
    print("| **worst** | | | | " + " | ".join(f"{worst[k]:.2f}×" for k in keys) + " |")


def run_lab2d(args: argparse.Namespace) -> int:
    """Evaluate every chosen set; print the table, optionally write JSON."""
    torch.set_num_threads(args.threads or 1)
    if args.long:
        args.steps = LONG_STEPS
    started = time.perf_counter()
    settings = (f"hidden {args.hidden}, depth {args.depth}, {args.schedule}, n_points {args.n_points}, "
                f"EMA {lab2d.DEFAULTS['ema_decay']}, batch {lab2d.DEFAULTS['batch_size']}, "
                f"lr {lab2d.DEFAULTS['learning_rate']:g}")
    report: dict[str, Any] = {"steps": args.steps, "settings": settings, "n_samples": args.n_samples,
                              "n_fresh": args.n_fresh, "repeats": args.repeats,
                              "torch_threads": torch.get_num_threads(), "sets": []}
    for name in args.sets:
        report["sets"].append(evaluate_set(name, args))
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``lab2d`` with ``python -m diffusion.evaluate``."""
    d = lab2d.DEFAULTS
    p = sub.add_parser("lab2d", help="the 2-D lab's model on every built-in set: SW ÷ floor, memorisation")
    p.add_argument("--sets", type=lambda t: [s for s in t.split(",") if s], default=list(lab2d.BUILTIN_DATASETS),
                   help="default: " + ",".join(lab2d.BUILTIN_DATASETS))
    p.add_argument("--steps", type=cli.positive_int, default=d["steps"], help=f"training steps (default {d['steps']})")
    p.add_argument("--long", action="store_true", help=f"train {LONG_STEPS} steps instead")
    p.add_argument("--hidden", type=cli.positive_int, default=d["hidden"], help=f"default {d['hidden']}")
    p.add_argument("--depth", type=cli.positive_int, default=d["depth"], help=f"default {d['depth']}")
    p.add_argument("--schedule", choices=lab2d.SCHEDULES, default=d["schedule"], help=f"default {d['schedule']}")
    p.add_argument("--n-points", type=cli.positive_int, default=d["n_points"],
                   help=f"training points (default {d['n_points']})")
    p.add_argument("--samplers", type=parse_samplers, default=parse_samplers(DEFAULT_SAMPLERS),
                   help=f"sampler:steps list (default {DEFAULT_SAMPLERS})")
    p.add_argument("--n-samples", type=cli.positive_int, default=2000, help="default 2000")
    p.add_argument("--n-fresh", type=cli.positive_int, default=5000, help="default 5000")
    p.add_argument("--repeats", type=cli.positive_int, default=3, help="sampling seeds of the learned model (default 3)")
    p.add_argument("--seed", type=int, default=0, help="training set and run seed (default 0)")
    cli.add_threads_argument(p, help="torch CPU threads (default 1: the lab's one-core budget)")
    p.add_argument("--out", help="write the JSON report here")
    p.set_defaults(run=run_lab2d)
