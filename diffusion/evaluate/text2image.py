"""``python -m diffusion.evaluate text2image``: does lesson 6's model follow its prompts?

Prompts are full captions of fresh random scenes (:mod:`diffusion.datasets.shapes`, a seed
the training never used), in two groups:

* **seen combinations**: no held-out pairing (each pairing occurred in training,
  though not necessarily this exact caption);
* **held-out combinations**: every prompt contains a colour–shape or shape–position
  pairing that never occurred together in training.

Each generated picture is read by :mod:`diffusion.evaluate.shape_checker`, which shares no code
or weights with the generator, and compared with the prompt word by word: colour,
shape, size, position, background. The same checker reads the ground-truth
renders of the same scenes first, so its own error rate is on the report too.
Every group runs at guidance scale 1 (the plain conditional model) and at the
app's default, with the app's default scheduler and steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffusion import cli
from diffusion.datasets import shapes
from diffusion.evaluate import shape_checker
from diffusion.lessons import text2image as t2i
from diffusion.models.registry import MODELS, T2I

DEFAULTS = t2i.T2IRequest()


def accuracy(readings: list[dict[str, Any]], scenes: list[shapes.Scene]) -> dict[str, float]:
    """Share of correct attributes (each, all together, and whole scenes right)."""
    hits = {a: [r[a] == getattr(s, a) for r, s in zip(readings, scenes)] for a in shapes.ATTRIBUTES}
    result = {a: float(np.mean(v)) for a, v in hits.items()}
    result["attributes"] = float(np.mean([np.mean(v) for v in hits.values()]))
    result["scenes"] = float(np.mean([all(h[i] for h in hits.values()) for i in range(len(scenes))]))
    return result


@torch.no_grad()
def generate_pictures(pipe: Any, prompts: list[str], request: t2i.T2IRequest, batch: int = 50) -> list[np.ndarray]:
    """One picture per prompt, prompt ``i`` seeded with ``request.seed + i`` (uint8 RGB arrays)."""
    pictures = []
    run = t2i.with_scheduler(pipe, request.scheduler)
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        generators = [torch.Generator("cpu").manual_seed(request.seed + start + i) for i in range(len(chunk))]
        images = run(prompt=chunk, num_inference_steps=request.num_inference_steps,
                     guidance_scale=request.guidance_scale, generator=generators,
                     width=request.width, height=request.height, output_type="np").images
        pictures += [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in images]
    return pictures


def run_text2image(args: argparse.Namespace) -> int:
    """Measure prompt accuracy; print a table and optionally write JSON."""
    cli.use_threads(args.threads)
    pipe = t2i.load_pipeline(str(args.model_dir), "cpu", safety=False)  # our shapes models need no filter
    side = t2i.default_side(pipe)
    report: dict[str, Any] = {"model": Path(args.model_dir).name, "seed": args.seed, "prompts": args.n,
                              "scheduler": args.scheduler, "steps": args.steps, "groups": {}}
    started = time.perf_counter()
    for group, heldout, offset in (("seen", False, 1_000_003), ("heldout", True, 2_000_003)):
        truth, scenes = shapes.dataset(args.n, args.seed + offset, heldout=heldout, size=side)
        prompts = [shapes.caption(s) for s in scenes]
        entry = {"checker_on_ground_truth": accuracy([shape_checker.read_scene(p) for p in truth], scenes),
                 "example_prompts": prompts[:3]}
        for guidance in args.guidance:
            request = t2i.T2IRequest(num_inference_steps=args.steps, guidance_scale=guidance,
                                     scheduler=args.scheduler, seed=args.seed).validated(side)
            tick = time.perf_counter()
            pictures = generate_pictures(pipe, prompts, request)
            seconds = (time.perf_counter() - tick) / len(prompts)
            entry[f"guidance_{guidance:g}"] = dict(accuracy([shape_checker.read_scene(p) for p in pictures], scenes),
                                                   seconds_per_image=round(seconds, 4))
            if args.save_grid and guidance == DEFAULTS.guidance_scale:
                grid = np.concatenate([np.concatenate(pictures[r * 8:(r + 1) * 8], axis=1) for r in range(4)])
                from PIL import Image
                Image.fromarray(grid).save(Path(args.save_grid).with_suffix(f".{group}.png"))
        report["groups"][group] = entry
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def print_report(report: dict[str, Any]) -> None:
    """Markdown tables: per group, the checker on ground truth and the model at each guidance scale."""
    columns = [*shapes.ATTRIBUTES, "attributes", "scenes"]
    print(f"\n**{report['model']}**: {report['prompts']} prompts per group, {report['scheduler']} "
          f"{report['steps']} steps, share correct\n")
    print("| group | pictures | " + " | ".join(columns) + " | s / image |")
    print("|---" * (len(columns) + 3) + "|")
    for group, entry in report["groups"].items():
        for key, row in entry.items():
            if key == "example_prompts":
                continue
            label = "ground truth (checker check)" if key.startswith("checker") else key.replace("_", " ")
            cells = " | ".join(f"{100 * row[c]:.1f} %" for c in columns)
            print(f"| {group} | {label} | {cells} | {row.get('seconds_per_image', '–')} |")


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``text2image`` with ``python -m diffusion.evaluate``."""
    p = sub.add_parser("text2image", help="prompt accuracy of lesson 6's embedded model")
    p.add_argument("--model-dir", default=str(MODELS[T2I].path), help="pipeline folder (default: the shipped one)")
    p.add_argument("--n", type=int, default=200, help="prompts per group (default 200)")
    p.add_argument("--guidance", type=cli.float_list,
                   default=[1.0, DEFAULTS.guidance_scale], help=f"default 1,{DEFAULTS.guidance_scale:g}")
    p.add_argument("--scheduler", default=DEFAULTS.scheduler, choices=tuple(t2i.SCHEDULERS))
    p.add_argument("--steps", type=int, default=DEFAULTS.num_inference_steps)
    p.add_argument("--seed", type=int, default=0)
    cli.add_threads_argument(p)
    p.add_argument("--save-grid", help="save 32 pictures per group at the default guidance (path stem)")
    p.add_argument("--out", help="write the JSON report here")
    p.set_defaults(run=run_text2image)
