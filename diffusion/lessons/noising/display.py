"""Showing the forward process: float images as pixels, and the whole process as a GIF."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffusion.errors import check_range
from diffusion.images import save_gif
from diffusion.lessons.noising.forward import noise_strip
from diffusion.lessons.noising.schedules import get_schedule


def to_display(x: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Map a float image to uint8 ``(H, W, 3)`` for showing.

    Values are scaled linearly from ``[lo, hi]`` to ``[0, 255]`` and clipped;
    NaN becomes ``lo``. Use ``lo=-3, hi=3`` for noise images, whose values are
    standard normal. Single-channel images are repeated into grey RGB.

    Args:
        x: Float array ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
        lo: Value shown as black.
        hi: Value shown as white.

    Returns:
        A uint8 array ``(H, W, 3)``.
    """
    lo = float(lo)
    hi = float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"to_display needs finite lo < hi, got lo={lo}, hi={hi}")
    array = np.asarray(x, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"to_display expects (H, W[, 1|3|4]), got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = array[:, :, :3]
    scaled = (np.nan_to_num(array, nan=lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def export_gif(
    x0: np.ndarray,
    schedule: str,
    num_train_timesteps: int,
    seed: int,
    path: str | Path,
    n_frames: int = 40,
    duration_ms: int = 80,
) -> Path:
    """Write the forward process as an animated GIF, from t = 0 to t = T.

    Frames use the closed form (eq. 4) with one ε, at timesteps spaced evenly
    from 0 to T (repeated timesteps are dropped when T < ``n_frames``). The last
    frame (t = T) is held for at least 1.5 s before the animation loops.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        seed: Seed of ε.
        path: Where to write the ``.gif``.
        n_frames: Number of frames, 2..64.
        duration_ms: Display time of each frame in milliseconds, 20..2000.

    Returns:
        The path written.
    """
    n_frames = int(check_range("n_frames", n_frames, 2, 64, integer=True))
    duration_ms = int(check_range("duration_ms", duration_ms, 20, 2000, integer=True))
    big_t = get_schedule(schedule, num_train_timesteps).num_train_timesteps
    ts = list(dict.fromkeys(int(round(v)) for v in np.linspace(0, big_t, n_frames)))
    frames = [to_display(x) for x in noise_strip(x0, schedule, big_t, seed, ts)]
    return save_gif(frames, path, duration_ms=duration_ms)


def forward_frames(
    x0: np.ndarray,
    schedule: str,
    num_train_timesteps: int,
    seed: int,
    n_frames: int = 33,
    max_side: int = 128,
) -> tuple[list[int], list[np.ndarray]]:
    """x_t by the closed form (eq. 4) at timesteps spread from 0 to T, as small pictures.

    The same ε (from ``seed``) as :func:`forward_noise` and :func:`export_gif`. Pictures
    longer than ``max_side`` keep every s-th pixel of each row and column, with
    s = ceil(longest side / max_side), instead of averaging s × s blocks: an average of
    s² noisy pixels has 1/s of their noise, and x_t would look cleaner than it is.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        seed: Seed of ε.
        n_frames: Number of timesteps, 2..64 (fewer when T is smaller).
        max_side: Longest side of a picture in pixels, 16..1024.

    Returns:
        The timesteps and one uint8 ``(h, w, 3)`` picture per timestep.
    """
    n_frames = int(check_range("n_frames", n_frames, 2, 64, integer=True))
    max_side = int(check_range("max_side", max_side, 16, 1024, integer=True))
    big_t = get_schedule(schedule, num_train_timesteps).num_train_timesteps
    ts = list(dict.fromkeys(int(round(v)) for v in np.linspace(0, big_t, n_frames)))
    stride = math.ceil(max(np.shape(x0)[:2]) / max_side)
    return ts, [to_display(x[::stride, ::stride]) for x in noise_strip(x0, schedule, big_t, seed, ts)]
