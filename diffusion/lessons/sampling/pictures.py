"""Lesson 4's pictures: digit batches as one uint8 grid, and the pixel spread along a run."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion.datasets.digits import IMAGE_SIZE
from diffusion.lessons.sampling.sampler import Trajectory


def to_uint8_grid(batch: torch.Tensor | np.ndarray, nrow: int = 4, *, lo: float = -1.0, hi: float = 1.0,
                  pad: int = 2, crop: int = IMAGE_SIZE) -> np.ndarray:
    """Tile a batch of grey digits into one ``(H, W)`` uint8 picture.

    Values map linearly from ``[lo, hi]`` to ``[0, 255]`` (clipped; NaN is black).
    Images larger than ``crop`` (a model trained on digits padded to 32×32)
    are centre-cropped back to ``crop``×``crop``.

    Args:
        batch: ``(B, 1, H, W)`` or ``(B, H, W)`` floats.
        nrow: Images per row.
        lo: Value shown black; use -3 with ``hi=3`` for noise (x_t at large t, ε).
        hi: Value shown white.
        pad: Grey gap between the images, in pixels.
        crop: Largest image side kept.

    Returns:
        uint8 array ``(rows·(h + pad) + pad, nrow·(w + pad) + pad)``.
    """
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().float().cpu().numpy()
    array = np.asarray(batch, dtype=np.float32)
    if array.ndim == 4:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[0] == 0:
        raise ValueError(f"to_uint8_grid expects (B, 1, H, W) or (B, H, W), got {array.shape}")
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"to_uint8_grid needs finite lo < hi, got lo={lo}, hi={hi}")
    n, h, w = array.shape
    if isinstance(nrow, bool) or not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive integer, got {nrow!r}")
    nrow = min(n, int(nrow))
    top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
    array = array[:, top:top + min(h, crop), left:left + min(w, crop)]
    h, w = array.shape[1:]
    scaled = (np.nan_to_num(array, nan=lo) - lo) * (255.0 / (hi - lo))
    pixels = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    rows = -(-n // nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad), 64, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top:top + h, left:left + w] = pixels[k]
    return grid


def std_curve(trajectory: Trajectory) -> tuple[np.ndarray, np.ndarray]:
    """Pixel standard deviation of x_t against the lessons' t of each step (:func:`~diffusion.schedule.display_t`).

    Starts near 1 (pure noise) and falls towards the spread of real digits
    (about 0.6 on the [-1, 1] scale), sqrt(ᾱ_t · Var x_0 + 1 - ᾱ_t) if the model is good.

    Returns:
        ``(t, std)``, float64 arrays of length ``len(trajectory)``; ``t = τ + 1`` runs from T down to 1.
    """
    t = trajectory.timesteps.numpy().astype(np.float64) + 1.0  # display_t, for a whole array
    return t, trajectory.x_t_std.numpy().astype(np.float64)
