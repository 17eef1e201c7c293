"""``python -m diffusion.evaluate augment``: do generated digits help a classifier trained on few real ones?

Lesson 7's augmentation experiment (:mod:`diffusion.lessons.applications.augment`),
repeated over seeds:

1. For every seed, generate one pool of ``max(--synthetic)`` digits per class at each
   guidance (1, the plain conditional model, and the app's default), exactly as
   :func:`~diffusion.lessons.applications.augment.generate_dataset` does for the tab.
2. For every seed and k (real digits per class from the model's training part), train the
   real-only classifier and one classifier per (guidance, n > 0) on the k real digits plus
   the first n generated digits of each class of that seed's pool. All of them train
   identically: same initial weights, same number of gradient steps
   (:mod:`~diffusion.lessons.applications.classifier`).
3. Score every classifier on the 1,000 held-out digits (never trained on by the
   classifiers or the diffusion model).

Reported: held-out accuracy as mean ± standard deviation over the seeds, and the gain over
the real-only arm of the same seed (a paired difference: same real digits, same initial
weights). The verdict column says **helps** or **hurts** when the 95% confidence interval of
the mean paired gain (Student's t, seeds - 1 degrees of freedom) excludes 0, and **no clear
effect** otherwise, so a k at which generated data does not help is shown as such. A second
table compares guidance 1 with the default guidance in the same paired way.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.devices import resolve_device
from diffusion.lessons.applications import augment
from diffusion.lessons.applications.classifier import (
    TrainSettings, arm_seeds, arm_tensors, model_split, pick_real, train_arms,
)
from diffusion.models import registry

QUICK = {"seeds": 2, "k": [5], "synthetic": [0, 10], "classifier_steps": 100, "rounds": 2}


def first_per_class(generated: augment.GeneratedSet, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` digits of each class of ``generated``: ``(images, labels)``, in class order."""
    keep = np.sort(np.concatenate([np.flatnonzero(generated.labels == c)[:n] for c in range(data.NUM_CLASSES)]))
    return generated.images[keep], generated.labels[keep]


def paired(values: list[float], words: tuple[str, str] = ("helps", "hurts")) -> dict[str, Any]:
    """Mean, standard deviation and the 95% t interval of per-seed values, with a verdict on its sign.

    The verdict is ``words[0]`` when the interval lies above 0, ``words[1]`` when below, else
    ``"no clear effect"`` (``"one seed"`` when there is no interval).
    """
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    half = float(stats.t.ppf(0.975, len(x) - 1) * std / math.sqrt(len(x))) if len(x) > 1 else math.nan
    verdict = "no clear effect"
    if math.isfinite(half) and mean - half > 0:
        verdict = words[0]
    elif math.isfinite(half) and mean + half < 0:
        verdict = words[1]
    return {"mean": round(mean, 4), "std": None if math.isnan(std) else round(std, 4),
            "ci95": None if math.isnan(half) else round(half, 4), "verdict": verdict if len(x) > 1 else "one seed"}


def run_augment(args: argparse.Namespace) -> int:
    """Repeat the augmentation experiment over seeds; see the module docstring."""
    cli.use_threads(args.threads)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    device = resolve_device(args.device)
    unet, scheduler_config = registry.load_unet_model("mnist", device)
    default_guidance = augment.ExperimentRequest().guidance_scale if args.guidance is None else args.guidance
    guidances = sorted({1.0, float(default_guidance)})
    settings = TrainSettings(steps=args.classifier_steps, rounds=args.rounds).validated()
    pool_size = max(args.synthetic)
    split = model_split()
    heldout = arm_tensors(split.images[split.heldout_idx], split.labels[split.heldout_idx])
    print(f"device: {device} · torch threads: {torch.get_num_threads()} · seeds: {args.seeds} · k: {args.k} · "
          f"synthetic per class: {args.synthetic} · guidance: {guidances} · classifier steps: {settings.steps}",
          flush=True)
    start = time.perf_counter()
    runs, gen_seconds = [], {g: 0.0 for g in guidances}
    for seed in range(args.seeds):
        pools = {}
        if pool_size:
            for g in guidances:
                request = augment.ExperimentRequest(n_synthetic=pool_size, seed=seed, guidance_scale=g).export_request()
                pools[g] = augment.generate_dataset(unet, scheduler_config, request)
                gen_seconds[g] += pools[g].seconds
        init_seed, batch_seed = arm_seeds(seed)
        for k in args.k:
            real = pick_real(split, k, seed)
            real_x, real_y = arm_tensors(split.images[real], split.labels[real])
            keys, arms = [(None, 0)], [(real_x, real_y)]
            for g in guidances:
                for n in (n for n in args.synthetic if n > 0):
                    syn_x, syn_y = arm_tensors(*first_per_class(pools[g], n))
                    keys.append((g, n))
                    arms.append((torch.cat([real_x, syn_x]), torch.cat([real_y, syn_y])))
            trained = train_arms(arms, heldout, settings, init_seed, batch_seed)
            for (g, n), curve in zip(keys, trained.curves):
                runs.append({"seed": seed, "k": k, "guidance_scale": g, "n_synthetic": n,
                             "accuracy": round(curve.final_accuracy, 4)})
            print(f"  seed {seed} k {k:>3}: " + "  ".join(
                f"{'real' if g is None else f's={g:g} n={n}'}: {100 * c.final_accuracy:.1f}%"
                for (g, n), c in zip(keys, trained.curves)), flush=True)
    report = summarise(runs, args, guidances, float(default_guidance), settings, len(split.heldout_idx))
    report.update({"device": str(device), "torch_threads": torch.get_num_threads(),
                   "generate_seconds": {f"{g:g}": round(s, 1) for g, s in gen_seconds.items()},
                   "seconds": round(time.perf_counter() - start, 1), "runs": runs})
    print()
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def summarise(runs: list[dict[str, Any]], args: argparse.Namespace, guidances: list[float],
              default_guidance: float, settings: TrainSettings, heldout: int) -> dict[str, Any]:
    """Mean ± std and paired gains per (k, guidance, n), and guidance 1 against the default."""
    acc = {(r["seed"], r["k"], r["guidance_scale"], r["n_synthetic"]): r["accuracy"] for r in runs}
    seeds = range(args.seeds)
    rows, guidance_rows = [], []
    for k in args.k:
        base = [acc[(s, k, None, 0)] for s in seeds]
        rows.append({"k": k, "guidance_scale": None, "n_synthetic": 0, "accuracy": paired(base), "gain": None})
        for g in guidances:
            for n in (n for n in args.synthetic if n > 0):
                with_syn = [acc[(s, k, g, n)] for s in seeds]
                rows.append({"k": k, "guidance_scale": g, "n_synthetic": n, "accuracy": paired(with_syn),
                             "gain": paired([a - b for a, b in zip(with_syn, base)])})
        if default_guidance != 1.0:
            for n in (n for n in args.synthetic if n > 0):
                diff = [acc[(s, k, 1.0, n)] - acc[(s, k, default_guidance, n)] for s in seeds]
                guidance_rows.append({"k": k, "n_synthetic": n, "difference": paired(diff, ("better", "worse"))})
    return {"seeds": args.seeds, "k": list(args.k), "synthetic_per_class": list(args.synthetic),
            "guidances": guidances, "default_guidance": default_guidance, "heldout_digits": heldout,
            "classifier": {"steps": settings.steps, "batch_size": settings.batch_size,
                           "learning_rate": settings.learning_rate},
            "sampler": "ddim", "num_inference_steps": augment.ExportRequest().num_inference_steps,
            "rows": rows, "guidance_rows": guidance_rows}


def _pm(stat: dict[str, Any], scale: float = 100.0, sign: bool = False) -> str:
    mean = f"{scale * stat['mean']:+.1f}" if sign else f"{scale * stat['mean']:.1f}"
    return mean if stat["std"] is None else f"{mean} ± {scale * stat['std']:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report's tables in Markdown (accuracies in percent)."""
    lines = [f"Held-out accuracy (%) on {report['heldout_digits']} digits, mean ± std over {report['seeds']} "
             f"seeds; gain = with generated − real only, paired by seed (points); verdict from its 95% t interval.",
             "", "| real per class | generated per class | guidance | accuracy (%) | gain (points) | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        if r["gain"] is None:
            lines.append(f"| {r['k']} | 0 | – | {_pm(r['accuracy'])} | – | real only |")
        else:
            lines.append(f"| {r['k']} | {r['n_synthetic']} | {r['guidance_scale']:g} | {_pm(r['accuracy'])} | "
                         f"{_pm(r['gain'], sign=True)} | {r['gain']['verdict']} |")
    if report["guidance_rows"]:
        g = report["default_guidance"]
        lines += ["", f"Guidance 1 against guidance {g:g} (accuracy at 1 − accuracy at {g:g}, points, paired by "
                  "seed):",
                  "", "| real per class | generated per class | difference (points) | verdict for guidance 1 |",
                  "| --- | --- | --- | --- |"]
        for r in report["guidance_rows"]:
            lines.append(f"| {r['k']} | {r['n_synthetic']} | {_pm(r['difference'], sign=True)} | "
                         f"{r['difference']['verdict']} |")
    return "\n".join(lines)


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``augment`` with ``python -m diffusion.evaluate``."""
    p = sub.add_parser("augment", help="lesson 7: classifier accuracy with and without generated digits")
    p.add_argument("--seeds", type=cli.positive_int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--k", type=_k_list, default=[5, 10, 50],
                   help=f"real digits per class, at most {augment.MAX_K_REAL} (default 5,10,50)")
    p.add_argument("--synthetic", type=_synthetic_list, default=[0, 10, 50, 100],
                   help=f"generated digits per class, 0..{augment.MAX_SYNTHETIC} (default 0,10,50,100)")
    p.add_argument("--guidance", type=float, help="the guidance compared with 1 (default: the app's)")
    p.add_argument("--classifier-steps", type=cli.positive_int, default=TrainSettings.steps,
                   help=f"gradient steps of every classifier (default {TrainSettings.steps})")
    p.add_argument("--rounds", type=cli.positive_int, default=TrainSettings.rounds,
                   help=f"held-out evaluations per classifier (default {TrainSettings.rounds})")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run: 2 seeds, k = 5, 0 and 10 generated per class, 100 classifier steps")
    cli.add_device_argument(p)
    cli.add_threads_argument(p)
    p.add_argument("--json", metavar="PATH", help="write the JSON report here")
    p.set_defaults(run=run_augment)


def _k_list(text: str) -> list[int]:
    values = cli.positive_int_list(text)
    if not values or max(values) > augment.MAX_K_REAL:
        raise argparse.ArgumentTypeError(f"give numbers 1..{augment.MAX_K_REAL}, got {text}")
    return sorted(set(values))


def _synthetic_list(text: str) -> list[int]:
    values = [cli.non_negative_int(v) for v in text.split(",") if v.strip()]
    if not values or max(values) > augment.MAX_SYNTHETIC:
        raise argparse.ArgumentTypeError(f"give numbers 0..{augment.MAX_SYNTHETIC}, got {text}")
    return sorted(set(values))
