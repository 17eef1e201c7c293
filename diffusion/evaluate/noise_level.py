"""``python -m diffusion.evaluate noise-level``: how well lesson 5 estimates the σ of a noisy photo.

Each test photo gets seeded Gaussian noise of σ = 5, 15, 25 and 50 (0–255 scale), rounded
and clipped to 8 bits as an uploaded noisy photo would be (:func:`add_noise`), and both
estimators read it: the patch-PCA estimate of :mod:`diffusion.lessons.denoising.noise_level`
and the wavelet rule it is compared with. The table gives the mean absolute error in % of
σ, the mean signed error, and the mean reported standard error of the PCA estimate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from diffusion import cli
from diffusion.datasets.digits import photo_folder
from diffusion.lessons.denoising import classical, noise_level
from diffusion.lessons.denoising.compare import add_noise

DEFAULT_DATA = Path("data/denoise")  # as evaluate denoise: pass --data-root for another place
SETS = {"Set12": "L", "BSD68": "L", "CBSD68": "RGB"}


def evaluate(images: list[np.ndarray], sigmas: list[float], seed: int = 0) -> dict[str, dict[str, float]]:
    """Per σ: MAE (% of σ) and mean signed error of both estimators, PCA's mean stderr, seconds per photo."""
    out = {}
    for sigma in sigmas:
        pca, wavelet, stderr, seconds = [], [], [], 0.0
        for i, image in enumerate(images):
            noisy = add_noise(image, sigma, seed * 100_003 + int(sigma) * 1_000 + i)
            start = time.perf_counter()
            found = noise_level.estimate(noisy)
            seconds += time.perf_counter() - start
            pca.append(found.sigma - sigma)
            stderr.append(found.stderr)
            wavelet.append(classical.estimate_noise(noisy) - sigma)
        pca, wavelet = np.array(pca), np.array(wavelet)
        out[f"{sigma:g}"] = {"pca_mae_pct": round(100 * float(np.abs(pca).mean()) / sigma, 2),
                             "pca_bias": round(float(pca.mean()), 3),
                             "pca_stderr": round(float(np.mean(stderr)), 3),
                             "wavelet_mae_pct": round(100 * float(np.abs(wavelet).mean()) / sigma, 2),
                             "wavelet_bias": round(float(wavelet.mean()), 3),
                             "seconds_per_photo": round(seconds / max(len(images), 1), 4)}
    return out


def run(args: argparse.Namespace) -> int:
    """Print one table per test set (and write the JSON report with ``--out``)."""
    report = {}
    for name in args.sets:
        mode = SETS.get(name, "RGB")
        photos = [p for _, p in photo_folder(Path(args.data_root) / name, mode=mode, limit=args.limit)]
        report[name] = evaluate(photos, args.sigmas, args.seed)
        print(f"\n{name} ({len(photos)} photos): MAE in % of σ (bias in 0–255 units)")
        print("| σ | patch PCA | wavelet MAD | PCA stderr | s / photo |\n|---|---|---|---|---|")
        for sigma, row in report[name].items():
            print(f"| {sigma} | {row['pca_mae_pct']:.1f} % ({row['pca_bias']:+.2f}) | "
                  f"{row['wavelet_mae_pct']:.1f} % ({row['wavelet_bias']:+.2f}) | {row['pca_stderr']:.2f} | "
                  f"{row['seconds_per_photo']:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def add_subcommand(sub: argparse._SubParsersAction) -> None:
    """Register ``noise-level``."""
    p = sub.add_parser("noise-level", help="lesson 5's noise-level estimate on the test sets")
    p.add_argument("--data-root", default=str(DEFAULT_DATA), help="folder holding Set12/, BSD68/, CBSD68/ (default data/denoise)")
    p.add_argument("--sets", type=lambda t: t.split(","), default=list(SETS), help="default Set12,BSD68,CBSD68")
    p.add_argument("--sigmas", type=cli.float_list, default=[5.0, 15.0, 25.0, 50.0], help="default 5,15,25,50")
    p.add_argument("--limit", type=int, default=0, help="only the first N photos of each set (default all)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", help="write the JSON report here")
    p.set_defaults(run=run)
