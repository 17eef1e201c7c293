"""The checks lesson 2 runs on every request: the image, the timestep t and the seed."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffusion.errors import InputError, check_range
from diffusion.schedule import TIMESTEP_LIMITS

LIMITS = {"num_train_timesteps": TIMESTEP_LIMITS, "seed": (0, 2**32 - 1)}


def check_seed(seed: Any) -> int:
    """``seed`` as an int within ``LIMITS["seed"]``, or :class:`InputError`."""
    lo, hi = LIMITS["seed"]
    return int(check_range("seed", seed, lo, hi, integer=True))


def check_t(t: Any, num_train_timesteps: int) -> int:
    """The lesson timestep ``t`` as an int in ``0..T``, or :class:`InputError`."""
    return int(check_range("t", t, 0, num_train_timesteps, integer=True))


def check_image(x0: Any) -> np.ndarray:
    """A non-empty, finite, numeric ``(H, W)`` or ``(H, W, C)`` image as float32.

    Raises:
        InputError: ``image_missing`` for ``None``, ``image_bad_array`` otherwise.
    """
    if x0 is None:
        raise InputError("image_missing", "Please provide an image.")
    array = np.asarray(x0)
    numeric = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    if array.ndim not in (2, 3) or array.size == 0 or not numeric:
        raise InputError(
            "image_bad_array",
            "The image must be a non-empty numeric array of shape (H, W) or (H, W, C).",
        )
    array = np.asarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise InputError("image_bad_array", "The image contains NaN or infinite values.")
    return array
