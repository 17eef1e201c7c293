"""What lesson 5 receives: an uploaded photo, validated, and the noisy image every method starts from.

A photo is either clean (noise of a chosen σ is added here, with a seeded generator, so
PSNR and SSIM can be measured) or already noisy (σ = 0: its noise level is estimated, and
nothing can be scored). Every value comes through the API unchecked, so everything is
validated here and reported as an :class:`~diffusion.errors.InputError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffusion import images
from diffusion.errors import InputError, check_choice, check_range
from diffusion.lessons.denoising import classical, noise_level
from diffusion.lessons.denoising.compare import METHODS, add_noise
from diffusion.lessons.denoising.denoiser import DEFAULT_COLOR

LIMITS = {"sigma": (0, 100), "sigma_override": (0, 100), "seed": (0, 2**32 - 1), "steps": (1, 50),
          "eta": (0.0, 1.0), "max_side": (32, 768), "zoom_x": (0, 100), "zoom_y": (0, 100), "zoom_size": (8, 256)}
# Two DDIM steps: on Set12 they score higher than five (32.24 / 29.96 / 26.96 dB against 32.07 / 29.75 /
# 26.74 at σ = 15 / 25 / 50; the denoiser's card) for 2/5 of the network passes.
DEFAULTS = {"sigma": 25, "seed": 0, "sigma_override": 0, "steps": 2, "eta": 0.0, "color": DEFAULT_COLOR,
            "max_side": 384, "zoom_x": 50, "zoom_y": 50, "zoom_size": 64}
# BM3D is one click away, not in the default set: it costs most of a run (the tab says how much).
DEFAULT_METHODS = [m for m in METHODS if m != "bm3d"]
CLEAN_LOOKING_SIGMA = 3.0  # estimates below this come from texture and compression, not noise
MAX_DECODE_SIDE = 2048  # an already-noisy upload is decoded up to this size, then cropped


@dataclass
class Prepared:
    """The images a comparison starts from."""

    clean: np.ndarray | None  # uint8 (H, W, C), when the noise is added here
    noisy: np.ndarray  # [0, 1] floats, what every method receives
    sigma: float  # the σ the methods assume (0–255 scale)
    sigma_estimated: float
    sigma_stderr: float | None = None  # the estimate's jackknife standard error (None: the wavelet rule ran)
    notices: list[tuple[str, dict]] = field(default_factory=list)


def _is_grey(pixels: np.ndarray) -> bool:
    return pixels.shape[2] == 1 or bool(np.all(pixels[:, :, 0] == pixels[:, :, 1])
                                         and np.all(pixels[:, :, 1] == pixels[:, :, 2]))


def load_upload(path: Any, max_side: int, crop: bool) -> tuple[np.ndarray, list[tuple[str, dict]]]:
    """An upload as uint8 ``(H, W, 1|3)`` (grey pictures keep one channel), no side above ``max_side``.

    Args:
        path: The uploaded file's path in the server's cache.
        max_side: Longest side after loading.
        crop: Take the centre instead of shrinking (already-noisy photos: shrinking averages the noise away).

    Returns:
        The pixels and the notices to show (resized or cropped).
    """
    if not path:
        raise InputError("image_missing_denoise", "Please upload a photo or pick an example.")
    pixels, info = images.load_image(images.check_upload(path), max_side=MAX_DECODE_SIDE if crop else max_side)
    clean = np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if _is_grey(clean):
        clean = clean[:, :, :1]
    notices = []
    (w0, h0) = info["original_size"]
    if crop and max(clean.shape[:2]) > max_side:
        h, w = clean.shape[:2]
        ch, cw = min(h, max_side), min(w, max_side)
        top, left = (h - ch) // 2, (w - cw) // 2
        clean = clean[top:top + ch, left:left + cw]
        notices.append(("denoising.cropped", {"w0": w0, "h0": h0, "w": cw, "h": ch}))
    elif info["resized"]:
        w, h = info["size"]
        notices.append(("denoising.resized", {"w0": w0, "h0": h0, "w": w, "h": h, "max_side": max_side}))
    return clean, notices


def estimate_sigma(noisy: np.ndarray) -> tuple[float, float | None, str]:
    """σ̂, its standard error and how it reads as text ("24.6 ± 0.3").

    The patch estimate of :mod:`~diffusion.lessons.denoising.noise_level`; a picture too
    small for its patch covariance gets the wavelet rule, which has no standard error.
    """
    try:
        found = noise_level.estimate(noisy)
    except ValueError:
        sigma = classical.estimate_noise(noisy)
        return sigma, None, f"{sigma:.1f}"
    return found.sigma, found.stderr, f"{found.sigma:.1f} ± {found.stderr:.1f}"


def prepare(path: Any, sigma: Any, seed: Any, sigma_override: Any, max_side: Any) -> Prepared:
    """Validate the inputs, load the upload and make the noisy image every method receives."""
    sigma = check_range("sigma", sigma, *LIMITS["sigma"])
    seed = check_range("seed", seed, *LIMITS["seed"], integer=True)
    sigma_override = check_range("sigma_override", sigma_override or 0, *LIMITS["sigma_override"])
    max_side = check_range("max_side", max_side, *LIMITS["max_side"], integer=True)
    synthetic = sigma > 0
    pixels, notices = load_upload(path, max_side, crop=not synthetic)
    if synthetic:
        noisy = add_noise(pixels, sigma, seed, quantise=True)
        estimate, stderr, text = estimate_sigma(noisy)
        notices.insert(0, ("denoising.synthetic", {"sigma": sigma, "seed": seed, "estimate": text}))
        return Prepared(pixels, noisy, sigma, estimate, stderr, notices)
    noisy = pixels.astype(np.float64) / 255.0
    estimate, stderr, text = estimate_sigma(noisy)
    used = sigma_override if sigma_override > 0 else estimate
    if used > LIMITS["sigma"][1]:
        used = float(LIMITS["sigma"][1])
        notices.append(("denoising.clamped", {"sigma": used}))
    if sigma_override > 0:
        notices.insert(0, ("denoising.override", {"estimate": text, "sigma": used}))
    else:
        notices.insert(0, ("denoising.estimated", {"estimate": text}))
        if estimate < CLEAN_LOOKING_SIGMA:
            notices.append(("denoising.clean_looking", {"estimate": text}))
    notices.append(("denoising.no_truth", {}))
    return Prepared(None, noisy, used, estimate, stderr, notices)


def check_methods(methods: Any) -> list[str]:
    """The chosen methods in the lesson's order; unknown names are refused."""
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or len(methods) > len(METHODS):
        raise InputError("bad_choice", "{name} must be one of: {choices} (got {value}).", name="methods",
                         choices=", ".join(METHODS), value=str(methods)[:40])
    for method in methods:
        check_choice("methods", method, METHODS)
    if not methods:
        raise InputError("no_methods", "Choose at least one method.")
    return [m for m in METHODS if m in methods]


def check_zoom(zoom_x: Any, zoom_y: Any, zoom_size: Any) -> tuple[float, float, int]:
    """The zoom centre (percent of width and height) and crop side, validated."""
    return (check_range("zoom_x", zoom_x, *LIMITS["zoom_x"]), check_range("zoom_y", zoom_y, *LIMITS["zoom_y"]),
            int(check_range("zoom_size", zoom_size, *LIMITS["zoom_size"], integer=True)))
