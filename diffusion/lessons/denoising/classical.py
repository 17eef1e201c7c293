"""Classical denoisers of lesson 5, the baselines a diffusion denoiser must beat.

All take a noisy image ``(H, W, C)`` as floats on the ``[0, 1]`` scale (noise
may push values outside it), the noise level σ on the 0–255 scale, and return
a float image of the same shape. They are thin wrappers over scikit-image and
the ``bm3d`` package; only the choice of each method's strength is ours.

Strengths. A fair comparison tunes every method for the noise level. The
tables below were chosen by ``python -m diffusion.evaluate denoise-tune``: a
grid search for the best mean PSNR on 16 BSD400 training images at each σ > 0 of
:data:`TUNED_SIGMAS` (never on the test sets). Between the tabulated σ the
strength is interpolated linearly.

Gaussian blur is the heat equation. Blurring with a Gaussian of standard
deviation ``s`` pixels is exactly the solution of ``∂u/∂t = D ∇²u`` after time
``t`` with ``2 D t = s²`` (the heat kernel), so the blur is reported as the
diffusion time ``D t = s² / 2`` in pixels², the lesson-1 equation run on the
picture.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle, estimate_sigma

# σ (0–255) at which the strengths were tuned, and the tuned values (see module docstring).
# σ = 0 is no noise: nothing to remove, so no smoothing (not tuned). TV's optimum is very
# flat above σ = 50 (±0.05 dB over a factor of 3 in weight), hence its uneven steps there.
TUNED_SIGMAS = (0.0, 5.0, 15.0, 25.0, 50.0, 75.0, 100.0)
GAUSSIAN_STD_PX = (0.0, 0.4, 0.7, 1.0, 1.9, 2.6, 3.3)  # blur std in pixels
TV_WEIGHT = (0.0, 0.0084, 0.0398, 0.0944, 0.3166, 0.2663, 1.0616)  # skimage Chambolle weight, [0, 1] scale
NLM_H_FACTOR = (0.75, 0.75, 0.65, 0.65, 0.7, 0.85, 1.1)  # h = factor × σ, with sigma = σ passed to skimage


def _tuned(table: tuple[float, ...], sigma_255: float) -> float:
    return float(np.interp(sigma_255, TUNED_SIGMAS, table))


def heat_time(sigma_255: float) -> tuple[float, float]:
    """The Gaussian blur for noise σ: ``(std in pixels, diffusion time D·t = std² / 2 in pixels²)``."""
    std = _tuned(GAUSSIAN_STD_PX, sigma_255)
    return std, std * std / 2.0


def gaussian_heat(noisy: np.ndarray, sigma_255: float, std_px: float | None = None) -> np.ndarray:
    """Gaussian blur of each channel = the heat equation run for time ``D t = std² / 2``.

    Args:
        noisy: ``(H, W, C)`` image on the ``[0, 1]`` scale.
        sigma_255: Noise level, picks the tuned blur when ``std_px`` is None.
        std_px: Blur standard deviation in pixels (overrides the tuned one).
    """
    std = heat_time(sigma_255)[0] if std_px is None else float(std_px)
    if std <= 0:
        return noisy.astype(np.float64, copy=True)
    return ndimage.gaussian_filter(noisy.astype(np.float64), sigma=(std, std, 0), mode="reflect")


def total_variation(noisy: np.ndarray, sigma_255: float, weight: float | None = None) -> np.ndarray:
    """Total-variation denoising (Rudin, Osher & Fatemi 1992) by Chambolle's algorithm (scikit-image)."""
    weight = _tuned(TV_WEIGHT, sigma_255) if weight is None else float(weight)
    if weight <= 0:
        return noisy.astype(np.float64, copy=True)
    return denoise_tv_chambolle(noisy.astype(np.float64), weight=weight, channel_axis=-1)


def nl_means(noisy: np.ndarray, sigma_255: float, h_factor: float | None = None) -> np.ndarray:
    """Non-local means (Buades, Coll & Morel 2005), scikit-image's fast mode, 5×5 patches, 13×13 search."""
    sigma = sigma_255 / 255.0
    factor = _tuned(NLM_H_FACTOR, sigma_255) if h_factor is None else float(h_factor)
    if sigma <= 0:
        return noisy.astype(np.float64, copy=True)
    out = denoise_nl_means(noisy.astype(np.float64), h=factor * sigma, sigma=sigma, fast_mode=True,
                           patch_size=5, patch_distance=6, channel_axis=-1)
    return out.reshape(noisy.shape)  # scikit-image drops a single channel axis


def bm3d_available() -> bool:
    """Whether the optional ``bm3d`` package can be imported."""
    try:
        import bm3d  # noqa: F401  (optional dependency)
    except Exception:
        return False
    return True


def bm3d(noisy: np.ndarray, sigma_255: float) -> np.ndarray:
    """BM3D (Dabov et al. 2007) from the ``bm3d`` package; colour images use its opponent-colour CBM3D.

    Raises:
        ImportError: The package is not installed.
    """
    import bm3d as bm3d_package  # optional dependency, imported on use

    sigma = sigma_255 / 255.0
    image = noisy.astype(np.float64)
    if sigma <= 0:
        return image.copy()
    if image.shape[2] == 3:
        return np.asarray(bm3d_package.bm3d_rgb(image, sigma), dtype=np.float64)
    return np.asarray(bm3d_package.bm3d(image[:, :, 0], sigma), dtype=np.float64)[:, :, None]


def estimate_noise(noisy: np.ndarray) -> float:
    """Estimate the Gaussian noise σ (0–255 scale) of an image by the wavelet MAD rule.

    scikit-image's ``estimate_sigma`` (Donoho & Johnstone 1994): the median
    absolute finest-scale diagonal wavelet coefficient / 0.6745, averaged over channels.
    """
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a flat image has no detail: NaN, read as 0
        sigma = float(estimate_sigma(noisy.astype(np.float64), channel_axis=-1, average_sigmas=True))
    return sigma * 255.0 if np.isfinite(sigma) else 0.0
