"""``python -m diffusion.bench denoise``: lesson 5's methods timed side by side on one photo.

Lesson 5's comparison on a colour photo (scikit-image's astronaut) at the tab's
working size, σ = 25: wall and CPU seconds of every method (best of ``--repeat``),
each also as a ratio to BM3D, plus the model's first-call (cold) time. Quality is
measured by ``python -m diffusion.evaluate denoise``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffusion import cli


def run_denoise(args: argparse.Namespace) -> int:
    """Time each method of lesson 5 on one photo, side by side, in one run."""
    import torch

    from diffusion import images
    from diffusion.lessons.denoising import METHODS, add_noise, load_denoiser, run_method
    from diffusion.lessons.denoising import classical

    cli.use_threads(args.threads)
    from skimage import data  # the 512x512 original of the bundled example

    pixels, _ = images.load_image(data.astronaut(), max_side=args.size)
    clean = np.clip(np.rint((pixels + 1) * 127.5), 0, 255).astype(np.uint8)
    noisy = add_noise(clean, 25.0, seed=0)
    start = time.perf_counter()
    denoiser = load_denoiser("cpu", args.model_dir)
    load_s = time.perf_counter() - start
    methods = [m for m in METHODS if m != "bm3d" or classical.bm3d_available()]
    rows = {}
    for method in methods:
        runs = [run_method(method, noisy, 25.0, clean=clean, denoiser=denoiser, steps=args.steps)
                for _ in range(args.repeat + (1 if method.startswith("diffusion") else 0))]
        cold = runs[0].seconds
        runs = runs[1:] if method.startswith("diffusion") else runs  # the first network call warms up
        best = min(runs, key=lambda r: r.seconds)
        rows[method] = (best.seconds, min(r.cpu_seconds for r in runs), best.psnr, cold)
    print(f"Lesson 5 on skimage's astronaut at {clean.shape[1]}x{clean.shape[0]}, sigma = 25, "
          f"torch threads {torch.get_num_threads()}; model load {load_s:.2f} s")
    ref = rows.get("bm3d")
    print(f"{'method':<22}{'wall s':>9}{'CPU s':>9}{'PSNR dB':>9}  {'BM3D CPU / this CPU':>20}")
    for method, (wall, cpu, psnr, cold) in rows.items():
        ratio = f"{ref[1] / cpu:.1f}x" if ref and cpu > 0 else "-"
        print(f"{method:<22}{wall:>9.3f}{cpu:>9.3f}{psnr:>9.2f}  {ratio:>20}")
    print(f"one click with every method: {sum(r[0] for r in rows.values()):.2f} s; "
          f"first one-step call (cold): {rows['diffusion_one_step'][3]:.2f} s")
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``denoise`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser(
        "denoise", help="time of every lesson-4 method on one photo",
        description="Lesson 5: wall and CPU time of each denoiser on a colour photo, with ratios to BM3D.")
    parser.add_argument("--size", type=cli.positive_int, default=384, help="longest side (default 384, the tab's)")
    parser.add_argument("--steps", type=cli.positive_int, default=10, help="multi-step DDIM steps (default 10)")
    parser.add_argument("--repeat", type=cli.positive_int, default=3, help="runs per method, best shown (default 3)")
    parser.add_argument("--model-dir", help="a denoiser folder instead of the shipped one")
    cli.add_threads_argument(parser)
    parser.set_defaults(func=run_denoise)
