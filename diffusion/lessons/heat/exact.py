"""Exact solutions of u_t = D u_xx: the Fourier series on the grid and the heat kernel."""

from __future__ import annotations

import numpy as np
import scipy.fft

from diffusion.errors import check_choice, check_range
from diffusion.lessons.heat.params import BOUNDARIES, LIMITS


def exact_solution(u0: np.ndarray, x: np.ndarray, times: np.ndarray, diffusivity: float,
                   length: float, boundary: str) -> np.ndarray:
    """Fourier-series solution of u_t = D u_xx for the sampled u0, at each of ``times``.

    Each mode decays as exp(-D k^2 t). Dirichlet: DST-I of the interior nodes,
    k = n pi / L (ends 0). Neumann: DCT-I of all nodes, k = n pi / L. Periodic: FFT,
    k = 2 pi n / L. These are the eigenvectors of the discrete Laplacian too.

    Args:
        u0: Initial values on ``x``. x: Grid from :func:`make_grid`. times: Output times.
        diffusivity: D. length: L. boundary: One of ``BOUNDARIES``.

    Returns:
        Array of shape (len(times), len(x)).
    """
    check_choice("boundary", boundary, BOUNDARIES)
    u0, times = np.asarray(u0, dtype=np.float64), np.asarray(times, dtype=np.float64)
    if u0.shape != np.shape(x):
        raise ValueError("u0 and x must have the same shape")
    n = len(u0)
    with np.errstate(all="ignore"):
        if boundary == "periodic":
            k = 2 * np.pi * np.arange(n // 2 + 1) / length
            decay = np.exp(-diffusivity * np.outer(times, k**2))
            return scipy.fft.irfft(scipy.fft.rfft(u0) * decay, n=n, axis=-1)
        if boundary == "neumann":
            k = np.pi * np.arange(n) / length
            decay = np.exp(-diffusivity * np.outer(times, k**2))
            return scipy.fft.idct(scipy.fft.dct(u0, type=1) * decay, type=1, axis=-1)
        k = np.pi * np.arange(1, n - 1) / length
        decay = np.exp(-diffusivity * np.outer(times, k**2))
        out = np.zeros((len(times), n))
        out[:, 1:-1] = scipy.fft.idst(scipy.fft.dst(u0[1:-1], type=1) * decay, type=1, axis=-1)
        return out


def heat_kernel(x: np.ndarray, t: float, diffusivity: float, center: float) -> np.ndarray:
    """Heat kernel exp(-(x-c)^2 / (4 D t)) / sqrt(4 pi D t).

    It is the Gaussian density with variance 2 D t: the solution of u_t = D u_xx on the
    real line from a unit-mass spike at ``center``.

    Args:
        x: Positions. t: Time (> 0). diffusivity: D. center: Position of the spike.

    Returns:
        The density at ``x``.
    """
    t = check_range("t", t, 1e-12, 1e12)
    diffusivity = check_range("diffusivity", diffusivity, *LIMITS["diffusivity"])
    variance = 2.0 * diffusivity * t
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-((x - center) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)
