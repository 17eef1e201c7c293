"""``python -m diffusion.evaluate denoise``: lesson 5's denoisers on the standard test sets.

Protocol (the one behind the published BM3D and DnCNN figures): grey test
images (Set12, BSD68), Gaussian noise of σ = 15, 25, 50 added in floating
point without clipping, one seeded noise draw per image and σ (the same draw
for every method). Each method's output is clipped and rounded to 8 bits, and
PSNR and SSIM are measured on those pixels, averaged over the images of a set.
CPU seconds per image are the process CPU time of each call (all threads), so
methods are compared on the work they do, not on how many cores they use; the
network runs once untimed on the first image of each size (its kernels are built then).

Subcommands:

``denoise``
    The tables: PSNR, SSIM and CPU seconds per method, set and σ.
``denoise-tune``
    Grid search of the classical methods' strengths on BSD400 training images
    (the values in :mod:`diffusion.lessons.denoising.classical`).
``denoise-color``
    Colour handling of the diffusion denoiser on colour photos: per RGB channel
    versus the opponent colour space (see :mod:`diffusion.lessons.denoising.denoiser`).

Test sets are used for testing only; nothing here feeds back into training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.errors import InputError
from diffusion.lessons.denoising import classical
from diffusion.lessons.denoising import (
    METHODS,
    DiffusionDenoiser,
    add_noise,
    run_method,
    score,
    to_uint8,
)
from diffusion.models.registry import MODELS_DIR

DEFAULT_MODEL = MODELS_DIR / "photo-denoiser"
DEFAULT_DATA = Path("data/denoise")
TEST_SETS = ("Set12", "BSD68")
EXAMPLES_DIR = MODELS_DIR.parent / "examples"


def load_folder(folder: Path, mode: str = "L", limit: int = 0) -> list[tuple[str, np.ndarray]]:
    """``(name, uint8 (H, W, C))`` for each image of ``folder``, sorted by name."""
    try:
        return data.photo_folder(folder, mode=mode, limit=limit)
    except InputError as error:
        raise SystemExit(str(error)) from None


def noise_seed(seed: int, sigma: float, index: int) -> int:
    """The noise seed of image ``index`` at ``sigma``: shared by every method."""
    return int(np.random.SeedSequence([seed, int(round(sigma * 100)), index]).generate_state(1)[0])


def evaluate_set(images: list[tuple[str, np.ndarray]], sigmas: Sequence[float], methods: Sequence[str],
                 denoiser: DiffusionDenoiser | None, *, steps: int, seed: int, label: str = "") -> dict:
    """Mean PSNR, SSIM and CPU seconds per method and σ, plus the noisy input's PSNR.

    Returns:
        ``{sigma: {method: {"psnr", "ssim", "cpu_seconds", "seconds"}}}``.
    """
    table: dict = {}
    warm: set = set()
    for sigma in sigmas:
        rows: dict[str, list] = {name: [] for name in ("noisy", *methods)}
        for index, (name, clean) in enumerate(images):
            noisy = add_noise(clean, sigma, noise_seed(seed, sigma, index), quantise=False)
            if clean.shape not in warm:  # oneDNN builds its kernels on the first call of a size
                warm.add(clean.shape)
                for method in methods:
                    if method.startswith("diffusion"):
                        run_method(method, noisy, sigma, denoiser=denoiser, steps=1)
            rows["noisy"].append((*score(to_uint8(noisy), clean), 0.0, 0.0))
            for method in methods:
                result = run_method(method, noisy, sigma, clean=clean, denoiser=denoiser, steps=steps, seed=seed)
                rows[method].append((result.psnr, result.ssim, result.cpu_seconds, result.seconds))
            print(f"  {label} σ={sigma:g} {index + 1}/{len(images)} {name}: " + ", ".join(
                f"{m} {rows[m][-1][0]:.2f}" for m in methods), file=sys.stderr, flush=True)
        table[sigma] = {m: {"psnr": float(np.mean([r[0] for r in v])), "ssim": float(np.mean([r[1] for r in v])),
                            "cpu_seconds": float(np.mean([r[2] for r in v])),
                            "seconds": float(np.mean([r[3] for r in v]))} for m, v in rows.items()}
    return table


def markdown_tables(report: dict) -> str:
    """One Markdown table per set: rows are methods, columns PSNR / SSIM per σ, then CPU seconds."""
    lines = []
    for set_name, table in report["sets"].items():
        sigmas = list(table)
        methods = list(table[sigmas[0]])
        ref = 25 if 25 in sigmas else sigmas[0]
        lines += [f"**{set_name}** ({report['images'][set_name]} images): PSNR (dB) / SSIM; "
                  f"CPU seconds per image at σ = {ref:g}", "",
                  "| method | " + " | ".join(f"σ = {s:g}" for s in sigmas) + " | CPU s |",
                  "|---|" + "---|" * (len(sigmas) + 1)]
        for method in methods:
            cells = [f"{table[s][method]['psnr']:.2f} / {table[s][method]['ssim']:.3f}" for s in sigmas]
            cpu = table[ref][method]["cpu_seconds"]
            lines.append(f"| {method} | " + " | ".join(cells) + (" | – |" if method == "noisy" else f" | {cpu:.3f} |"))
        lines.append("")
    return "\n".join(lines)


def run_denoise(args: argparse.Namespace) -> int:
    """``denoise``: the tables of the module docstring."""
    cli.use_threads(args.threads)
    methods = [m for m in args.methods if m != "bm3d" or classical.bm3d_available()]
    denoiser = DiffusionDenoiser.from_folder(args.model_dir) if any(m.startswith("diffusion") for m in methods) else None
    report: dict = {"model": str(Path(args.model_dir).name), "seed": args.seed, "steps": args.steps,
                    "precision": denoiser.precision if denoiser else None,
                    "torch_threads": torch.get_num_threads(), "sets": {}, "images": {}}
    started = time.perf_counter()
    for set_name in args.sets:
        images = load_folder(Path(args.data_root) / set_name, limit=args.limit)
        report["images"][set_name] = len(images)
        report["sets"][set_name] = evaluate_set(images, args.sigmas, methods, denoiser, steps=args.steps,
                                                seed=args.seed, label=set_name)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    if "bm3d" in methods and "diffusion_one_step" in methods:
        report["cpu_ratio_bm3d_over_one_step"] = {
            s: {sigma: round(t[sigma]["bm3d"]["cpu_seconds"] / t[sigma]["diffusion_one_step"]["cpu_seconds"], 1)
                for sigma in t} for s, t in report["sets"].items()}
    print(f"network precision: {report['precision']}, torch threads: {report['torch_threads']}")
    print(markdown_tables(report))
    if "cpu_ratio_bm3d_over_one_step" in report:
        print("CPU time, BM3D ÷ one-step diffusion:", json.dumps(report["cpu_ratio_bm3d_over_one_step"]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


def run_tune(args: argparse.Namespace) -> int:
    """``denoise-tune``: best strength per σ for Gaussian blur, TV and NL-means on BSD400 images."""
    images = load_folder(Path(args.data_root) / "BSD400", limit=args.limit)
    grids = {"gaussian_std_px": np.round(np.arange(0.3, 4.01, 0.1), 2),
             "tv_weight": np.round(np.geomspace(0.005, 1.5, 34), 4),
             "nlm_h_factor": np.round(np.arange(0.4, 1.26, 0.05), 2)}
    methods = {"gaussian_std_px": lambda y, s, v: classical.gaussian_heat(y, s, std_px=v),
               "tv_weight": lambda y, s, v: classical.total_variation(y, s, weight=v),
               "nlm_h_factor": lambda y, s, v: classical.nl_means(y, s, h_factor=v)}
    best: dict = {name: [] for name in grids}
    for sigma in args.sigmas:
        noisy = [(clean, add_noise(clean, sigma, noise_seed(args.seed, sigma, i), quantise=False))
                 for i, (_, clean) in enumerate(images)]
        for name, grid in grids.items():
            means = [np.mean([score(to_uint8(methods[name](y, sigma, v)), c)[0] for c, y in noisy]) for v in grid]
            i = int(np.argmax(means))
            best[name].append(float(grid[i]))
            print(f"σ={sigma:g} {name}: best {grid[i]} ({means[i]:.2f} dB)", file=sys.stderr, flush=True)
    print(json.dumps({"sigmas": list(args.sigmas), "images": len(images), **best}))
    return 0


def run_color(args: argparse.Namespace) -> int:
    """``denoise-color``: one-step PSNR with per-RGB-channel vs opponent-space denoising on colour photos."""
    denoiser = DiffusionDenoiser.from_folder(args.model_dir)
    images = [(n, a) for n, a in load_folder(Path(args.folder), mode="RGB")  # clean colour photos only
              if not Path(n).stem.endswith("-noisy")
              and not (np.array_equal(a[:, :, 0], a[:, :, 1]) and np.array_equal(a[:, :, 1], a[:, :, 2]))]
    print("| image | σ | rgb PSNR | opponent PSNR |\n|---|---|---|---|")
    totals = {"rgb": [], "opponent": []}
    for sigma in args.sigmas:
        for index, (name, clean) in enumerate(images):
            noisy = add_noise(clean, sigma, noise_seed(args.seed, sigma, index), quantise=False)
            psnr = {mode: score(to_uint8(denoiser.one_step(noisy, sigma, mode)), clean)[0] for mode in totals}
            for mode in totals:
                totals[mode].append(psnr[mode])
            print(f"| {name} | {sigma:g} | {psnr['rgb']:.2f} | {psnr['opponent']:.2f} |")
    print(f"| mean | | {np.mean(totals['rgb']):.2f} | {np.mean(totals['opponent']):.2f} |")
    return 0


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Register ``denoise``, ``denoise-tune`` and ``denoise-color`` with ``python -m diffusion.evaluate``."""
    p = sub.add_parser("denoise", help="lesson 5's denoisers on Set12 and BSD68")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL), help="denoiser folder (default: the shipped one)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding Set12/ and BSD68/ (default data/denoise)")
    p.add_argument("--sets", type=lambda t: t.split(","), default=list(TEST_SETS), help="default Set12,BSD68")
    p.add_argument("--sigmas", type=cli.float_list, default=[15.0, 25.0, 50.0], help="default 15,25,50")
    p.add_argument("--methods", type=lambda t: t.split(","), default=list(METHODS),
                   help="default all: " + ",".join(METHODS))
    p.add_argument("--steps", type=int, default=10, help="multi-step DDIM steps (default 10)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images of each set (default all)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    cli.add_threads_argument(p)
    p.add_argument("--out", help="write the JSON report here")
    p.set_defaults(run=run_denoise)

    p = sub.add_parser("denoise-tune", help="tune the classical denoisers on BSD400 (training images)")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding BSD400/ (default data/denoise)")
    p.add_argument("--sigmas", type=cli.float_list, default=[s for s in classical.TUNED_SIGMAS if s > 0])
    p.add_argument("--limit", type=int, default=16, help="BSD400 images to use (default the first 16)")
    p.add_argument("--seed", type=int, default=1, help="noise seed (default 1)")
    p.set_defaults(run=run_tune)

    p = sub.add_parser("denoise-color", help="colour handling of the diffusion denoiser")
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL))
    p.add_argument("--folder", default=str(EXAMPLES_DIR), help="colour photos (default: the bundled examples)")
    p.add_argument("--sigmas", type=cli.float_list, default=[15.0, 25.0, 50.0])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_color)
