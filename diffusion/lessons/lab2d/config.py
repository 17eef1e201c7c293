"""Every parameter of the 2-D lab: its range (:data:`LIMITS`), its default (:data:`DEFAULTS`), its check.

A user interface builds its sliders from these two tables; the core checks every value
again at the boundary (house rule 7), because a slider can be bypassed through the API.
Ranges are inclusive ``(lo, hi)``; choices are tuples of names.

Why the defaults (measured on one CPU thread with ``python -m diffusion.bench lab2d`` and
``python -m diffusion.evaluate lab2d``; "ratio" is the sliced Wasserstein distance of
2000 samples to fresh data divided by that of 2000 other fresh points, worst set of six):

* 3000 steps of batch 256 train in about 3.7 s (1.2 ms a step) and reach a worst ratio
  of 1.3 (DDPM-100) and 1.6 (DDIM-50); 20,000 steps (25 s) do not lower the worst ratio
  but resolve thin structures (rings, spiral) instead of blurring them.
* The EMA of the weights matters most: sampling with the raw weights instead gave a
  worst ratio of 2.7 / 3.0. Decay 0.999 (capped by the warm-up (1 + s) / (10 + s), so it
  grows with training) beat 0.995 once training runs long.
* Fourier features of the input (model.py) took the mean ratio from 1.9 to 1.4; the
  cosine schedule from 1.4 to 1.2 for DDPM; a learning rate of 1e-3 instead of 3e-3 was
  worse (1.8), 1e-2 no better; batch 128 with more steps was worse; width 64 × depth 4,
  a learning-rate decay, and v-prediction were no better than run-to-run noise (±0.2).
"""

from __future__ import annotations

from typing import Any

from diffusion.errors import check_choice, check_range

BUILTIN_DATASETS = ("moons", "swiss_roll", "spiral", "gaussians", "checkerboard", "rings")
DATASETS = (*BUILTIN_DATASETS, "text", "drawing")
SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ddpm", "ddim")
PREDICTORS = ("learned", "exact")  # ε from the network, or ε* of the exact score (exact.py)

LIMITS: dict[str, Any] = {
    "dataset": DATASETS,
    "n_points": (20, 5000),
    "seed": (0, 2**32 - 1),
    "text_length": (1, 12),
    "hidden": (16, 512),
    "depth": (1, 6),
    "schedule": SCHEDULES,
    "num_train_timesteps": (10, 1000),
    "learning_rate": (1e-5, 1e-1),
    "batch_size": (16, 4096),
    "ema_decay": (0.0, 0.9999),
    "steps": (1, 50_000),
    "sampler": SAMPLERS,
    "predictor": PREDICTORS,
    "num_inference_steps": (1, 1000),
    "eta": (0.0, 1.0),
    "n_samples": (1, 5000),
    "t": (0, 1000),
    "grid": (5, 64),
    "field_extent": (0.5, 6.0),
}

DEFAULTS: dict[str, Any] = {
    "dataset": "moons",
    "n_points": 2000,
    "seed": 0,
    "text": "扩散",
    "hidden": 128,
    "depth": 3,
    "schedule": "cosine",
    "num_train_timesteps": 1000,
    "learning_rate": 3e-3,
    "batch_size": 256,
    "ema_decay": 0.999,
    "steps": 3000,
    "sampler": "ddim",
    "predictor": "learned",
    "num_inference_steps": 50,
    "eta": 0.0,
    "n_samples": 1000,
    "t": 100,
    "grid": 21,
    "field_extent": 2.5,
}


def check_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` within ``LIMITS[name]``; else ``InputError`` naming ``name``."""
    lo, hi = LIMITS[name]
    return int(check_range(name, value, lo, hi, integer=True))


def check_float(name: str, value: Any) -> float:
    """``value`` as a ``float`` within ``LIMITS[name]``; else ``InputError`` naming ``name``."""
    lo, hi = LIMITS[name]
    return float(check_range(name, value, lo, hi))


def check_name(name: str, value: Any) -> str:
    """``value`` if it is one of the choices ``LIMITS[name]``; else ``InputError("bad_choice")``."""
    return check_choice(name, value, LIMITS[name])


def check_t(t: Any, num_train_timesteps: int) -> int:
    """The lessons' timestep t (0 = clean data) as an ``int`` in ``0..T``; else ``InputError``."""
    return int(check_range("t", t, 0, int(num_train_timesteps), integer=True))
