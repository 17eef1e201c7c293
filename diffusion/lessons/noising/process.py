"""Forward (noising) process of DDPM for lesson 2.

The forward process of DDPM (Ho et al. 2020) adds Gaussian noise one step at a
time (eq. 2)::

    q(x_t | x_{t-1}) = N(sqrt(1 - β_t) x_{t-1}, β_t I)

and, because Gaussians compose, any step can be reached from the clean image in
one jump (eq. 4)::

    q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I),   ᾱ_t = Π_{s<=t} (1 - β_s)

The β schedules and the closed form come from :class:`diffusers.DDPMScheduler`
so that the lesson shows exactly what the library used for training does.

Timestep convention (:mod:`diffusion.schedule`, the same in every lesson): ``t``
runs over ``0..T``, ``t = 0`` is the clean image (ᾱ_0 = 1, no noise) and
``t = 1..T`` are the paper's timesteps, diffusers index ``t - 1``. Every array of
:class:`NoiseSchedule` has length ``T + 1`` and is indexed by the lesson's ``t``.

Images are float32 arrays ``(H, W, C)`` scaled to ``[-1, 1]`` (see
:func:`diffusion.images.load_image`); the noising is element-wise, so the
channel layout does not matter and the arrays keep the layout they came in.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffusion.errors import InputError, check_choice, check_range
from diffusion.images import save_gif
from diffusion.schedule import (  # noqa: F401 - SCHEDULES and make_scheduler are part of this lesson's API
    SCHEDULES, TIMESTEP_LIMITS, check_schedule, check_timesteps, make_scheduler,
)

LIMITS = {"num_train_timesteps": TIMESTEP_LIMITS, "seed": (0, 2**32 - 1)}

# The stepwise chain keeps at most this many checkpoints (plus the clean image),
# whatever T is, so its memory stays bounded for T up to 4000.
MAX_CHECKPOINTS = 40


_check_schedule = check_schedule
_check_timesteps = check_timesteps


def _check_seed(seed: Any) -> int:
    lo, hi = LIMITS["seed"]
    return int(check_range("seed", seed, lo, hi, integer=True))


def _check_t(t: Any, num_train_timesteps: int) -> int:
    return int(check_range("t", t, 0, num_train_timesteps, integer=True))


def _check_image(x0: Any) -> np.ndarray:
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


@functools.lru_cache(maxsize=32)
def _shared_scheduler(schedule: str, num_train_timesteps: int) -> DDPMScheduler:
    # Only ever used through add_noise, which reads the scheduler's tables.
    return make_scheduler(schedule, num_train_timesteps)


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Noise-level tables of one schedule, indexed by the lesson's t = 0..T.

    Index 0 is the clean image: ``betas[0] = 0``, ``alpha_bar[0] = 1`` and the
    signal-to-noise ratio there is ``inf``. The arrays are read-only because
    :func:`get_schedule` shares one instance between callers.
    """

    name: str
    num_train_timesteps: int
    betas: np.ndarray
    alpha_bar: np.ndarray
    sqrt_alpha_bar: np.ndarray
    sqrt_one_minus_alpha_bar: np.ndarray
    snr: np.ndarray
    log_snr: np.ndarray

    @classmethod
    def from_scheduler(cls, name: str, scheduler: DDPMScheduler) -> NoiseSchedule:
        """Tables built from a diffusers scheduler's ``betas`` and ``alphas_cumprod``.

        Args:
            name: Lesson name of the schedule (one of :data:`SCHEDULES`).
            scheduler: The scheduler whose tables are copied.

        Returns:
            A schedule whose ``alpha_bar[t]`` is ``scheduler.alphas_cumprod[t - 1]``
            for t >= 1 (eq. 4's ᾱ_t) and 1 for t = 0.
        """
        betas = np.concatenate([[0.0], scheduler.betas.double().cpu().numpy()])
        alpha_bar = np.concatenate([[1.0], scheduler.alphas_cumprod.double().cpu().numpy()])
        one_minus = 1.0 - alpha_bar
        with np.errstate(divide="ignore"):
            snr = alpha_bar / one_minus
            log_snr = np.log(alpha_bar) - np.log(one_minus)
        return cls(
            name=name,
            num_train_timesteps=len(betas) - 1,
            betas=_read_only(betas),
            alpha_bar=_read_only(alpha_bar),
            sqrt_alpha_bar=_read_only(np.sqrt(alpha_bar)),
            sqrt_one_minus_alpha_bar=_read_only(np.sqrt(one_minus)),
            snr=_read_only(snr),
            log_snr=_read_only(log_snr),
        )


@functools.lru_cache(maxsize=32)
def _cached_schedule(schedule: str, num_train_timesteps: int) -> NoiseSchedule:
    return NoiseSchedule.from_scheduler(schedule, _shared_scheduler(schedule, num_train_timesteps))


def get_schedule(schedule: str, num_train_timesteps: int) -> NoiseSchedule:
    """The validated, cached :class:`NoiseSchedule` for a schedule name and T.

    Args:
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T, within ``LIMITS``.

    Returns:
        A shared, read-only :class:`NoiseSchedule` with arrays of length T + 1.

    Raises:
        InputError: For an unknown schedule or a T outside ``LIMITS``.
    """
    return _cached_schedule(_check_schedule(schedule), _check_timesteps(num_train_timesteps))


def q_sample(x0: torch.Tensor, t: int, noise: torch.Tensor, scheduler: DDPMScheduler) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) in one jump, DDPM eq. 4, via ``scheduler.add_noise``.

    Computes ``sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise``.

    Args:
        x0: Clean image(s), any shape.
        t: Lesson timestep in ``0..T``; 0 returns ``x0`` unchanged.
        noise: ε ~ N(0, I), same shape as ``x0``.
        scheduler: The diffusers scheduler that defines ᾱ.

    Returns:
        The noisy tensor x_t, same shape and dtype as ``x0``.

    Raises:
        InputError: If ``t`` is not a whole number in ``[0, T]``.
    """
    t = _check_t(t, scheduler.config.num_train_timesteps)
    if t == 0:
        return x0
    # Lesson t counts the clean image as 0; diffusers' index 0 is paper step 1.
    return scheduler.add_noise(x0, noise, torch.tensor([t - 1], dtype=torch.long))


class StepwiseChain:
    """x_t reached by applying DDPM eq. 2 t times, one fresh ε_s per step.

    ``x_s = sqrt(1 - β_s) x_{s-1} + sqrt(β_s) ε_s``. Each ε_s comes from a
    generator seeded with ``(seed, s)``, so x_t is the same bit for bit whatever
    order the slider visits timesteps in.

    Every K-th state is kept as a checkpoint (K is ``checkpoint_every``, raised
    to ``ceil(T / MAX_CHECKPOINTS)`` for long schedules), together with the last
    state computed. Once the chain has been walked up to some t, any query at or
    below it costs fewer than K steps, and one step forward from the last query
    costs one step. Memory is bounded by ``(ceil(T / K) + 2) * x0.nbytes``: for a
    256×256 RGB image and T = 1000, K = 50 that is at most 22 × 0.79 MB ≈ 17 MB.
    A fresh chain's first query costs t steps (about 1 s for t = 1000 on a
    256×256 RGB image and two CPU cores); calling ``x_at(T)`` once, for example
    right after an image is chosen, fills every checkpoint. Access is serialised
    with a lock, so one chain can serve concurrent requests.

    Args:
        x0: Clean image, float ``(H, W, C)`` array (``(H, W)`` works too).
        schedule: The β schedule.
        seed: Seed of the per-step noise, within ``LIMITS["seed"]``.
        checkpoint_every: Desired distance K between checkpoints (1..1000).
    """

    def __init__(self, x0: Any, schedule: NoiseSchedule, seed: int, checkpoint_every: int = 50) -> None:
        self.schedule = schedule
        self.seed = _check_seed(seed)
        requested = int(check_range("checkpoint_every", checkpoint_every, 1, 1000, integer=True))
        self.checkpoint_every = max(requested, math.ceil(schedule.num_train_timesteps / MAX_CHECKPOINTS))
        start = _check_image(x0).copy()
        start.setflags(write=False)
        self._checkpoints: dict[int, np.ndarray] = {0: start}
        self._last: tuple[int, np.ndarray] = (0, start)
        # float32 coefficients, as the float32 image is multiplied by them.
        self._keep = np.sqrt(1.0 - schedule.betas).astype(np.float32)
        self._add = np.sqrt(schedule.betas).astype(np.float32)
        self._lock = threading.Lock()

    @property
    def x0(self) -> torch.Tensor:
        """The clean image the chain starts from, as a new tensor."""
        return torch.from_numpy(self._checkpoints[0].copy())

    def matches(self, x0: Any, schedule: NoiseSchedule, seed: int) -> bool:
        """Whether this chain was built for the same image, schedule and seed."""
        if schedule.name != self.schedule.name or schedule.num_train_timesteps != self.schedule.num_train_timesteps:
            return False
        if int(seed) != self.seed:
            return False
        other = np.asarray(x0, dtype=np.float32)
        return bool(np.array_equal(other, self._checkpoints[0]))

    def _step_(self, x: np.ndarray, s: int, noise: np.ndarray) -> None:
        """Advance ``x`` from step s-1 to step s in place (eq. 2)."""
        # SeedSequence mixes (seed, s) into a well-spread 64-bit seed, so streams
        # of neighbouring seeds and steps do not overlap.
        state = np.random.SeedSequence((self.seed, s)).generate_state(1, np.uint64)[0]
        torch.randn(x.shape, generator=torch.Generator().manual_seed(int(state)), out=torch.from_numpy(noise))
        # numpy's single-threaded loops, not torch's: on a busy 2-core machine the
        # intra-op thread pool stalled now and then, making a 50-step move take ~1 s.
        np.multiply(x, self._keep[s], out=x)
        np.multiply(noise, self._add[s], out=noise)
        np.add(x, noise, out=x)

    def x_at(self, t: int) -> torch.Tensor:
        """x_t after t applications of eq. 2 (t = 0 is the clean image).

        Args:
            t: Lesson timestep in ``0..T``.

        Returns:
            A new float32 tensor (a copy; the cache is not exposed).

        Raises:
            InputError: If ``t`` is not a whole number in ``[0, T]``.
        """
        t = _check_t(t, self.schedule.num_train_timesteps)
        k = self.checkpoint_every
        with self._lock:
            start_s = max(s for s in self._checkpoints if s <= t)
            start = self._checkpoints[start_s]
            if start_s < self._last[0] <= t:
                start_s, start = self._last
            if start_s == t:
                return torch.from_numpy(start.copy())
            # Two buffers per query, updated in place: allocating fresh image-sized
            # arrays at every step is slow where page faults are expensive.
            x = start.copy()
            noise = np.empty_like(x)
            for s in range(start_s + 1, t + 1):
                self._step_(x, s, noise)
                if s % k == 0 and s not in self._checkpoints:
                    self._checkpoints[s] = x.copy()
            x.setflags(write=False)
            self._last = (t, x)
            return torch.from_numpy(x.copy())


@dataclass
class ForwardResult:
    """One point of the forward process, as shown by lesson 2.

    Arrays are float32 ``(H, W, C)`` on the ``[-1, 1]`` pixel scale; ``noise`` is
    the ε of eq. 4 (standard normal, shown with :func:`to_display` lo=-3, hi=3).
    ``chain`` is the stepwise chain that produced ``x_t_stepwise``; pass it back
    to :func:`forward_noise` so the next slider move reuses its checkpoints.
    """

    t: int
    x0: np.ndarray
    x_t: np.ndarray
    noise: np.ndarray
    x_t_stepwise: np.ndarray
    schedule: str
    num_train_timesteps: int
    seed: int
    alpha_bar: float
    chain: StepwiseChain | None = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """JSON-safe numbers describing this step (finite floats or ``None``).

        ``snr`` and ``log_snr`` are ``None`` at t = 0, where they are infinite
        (the clean image has no noise); everything else is a finite float.

        Returns:
            ``t``, ``schedule``, ``num_train_timesteps``, ``seed``, ``alpha_bar``,
            ``snr``, ``log_snr``, ``signal_coef`` (sqrt ᾱ_t), ``noise_coef``
            (sqrt(1 - ᾱ_t)), ``mean`` and ``std`` of the x_t pixels, and
            ``stepwise_mean`` / ``stepwise_std`` of the stepwise x_t pixels.
        """
        alpha_bar = float(self.alpha_bar)
        if alpha_bar < 1.0:
            snr: float | None = alpha_bar / (1.0 - alpha_bar)
            log_snr: float | None = math.log(alpha_bar) - math.log1p(-alpha_bar)
        else:
            snr = log_snr = None
        return {
            "t": int(self.t),
            "schedule": self.schedule,
            "num_train_timesteps": int(self.num_train_timesteps),
            "seed": int(self.seed),
            "alpha_bar": alpha_bar,
            "snr": snr,
            "log_snr": log_snr,
            "signal_coef": math.sqrt(alpha_bar),
            "noise_coef": math.sqrt(max(0.0, 1.0 - alpha_bar)),
            "mean": float(np.mean(self.x_t, dtype=np.float64)),
            "std": float(np.std(self.x_t, dtype=np.float64)),
            "stepwise_mean": float(np.mean(self.x_t_stepwise, dtype=np.float64)),
            "stepwise_std": float(np.std(self.x_t_stepwise, dtype=np.float64)),
        }


def _standard_noise(shape: torch.Size, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def forward_noise(
    x0: np.ndarray,
    schedule: str,
    num_train_timesteps: int,
    t: int,
    seed: int,
    chain: StepwiseChain | None = None,
) -> ForwardResult:
    """Noise an image to step t both in one jump (eq. 4) and step by step (eq. 2).

    The one-jump ε is drawn from a ``torch.Generator`` seeded with ``seed`` and is
    the same for every t, so x_t moves smoothly as the slider moves.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        t: Lesson timestep in ``0..T`` (0 = clean image).
        seed: Noise seed, within ``LIMITS["seed"]``.
        chain: A chain from an earlier result for the same image, schedule and
            seed; reused when it matches, replaced by a new one otherwise.

    Returns:
        A :class:`ForwardResult`; its ``chain`` is the chain to pass next time.

    Raises:
        InputError: For a missing or malformed image, unknown schedule, or a T,
            t or seed that is not a whole number in range.
    """
    image = _check_image(x0)
    noise_schedule = get_schedule(schedule, num_train_timesteps)
    big_t = noise_schedule.num_train_timesteps
    t = _check_t(t, big_t)
    seed = _check_seed(seed)
    if chain is None or not chain.matches(image, noise_schedule, seed):
        chain = StepwiseChain(image, noise_schedule, seed)
    x0_tensor = chain.x0
    noise = _standard_noise(x0_tensor.shape, seed)
    x_t = q_sample(x0_tensor, t, noise, _shared_scheduler(noise_schedule.name, big_t))
    return ForwardResult(
        t=t,
        x0=image,
        x_t=x_t.numpy().copy(),
        noise=noise.numpy(),
        x_t_stepwise=chain.x_at(t).numpy(),
        schedule=noise_schedule.name,
        num_train_timesteps=big_t,
        seed=seed,
        alpha_bar=float(noise_schedule.alpha_bar[t]),
        chain=chain,
    )


def noise_strip(
    x0: np.ndarray, schedule: str, num_train_timesteps: int, seed: int, ts: Sequence[int]
) -> list[np.ndarray]:
    """x_t at several timesteps, all from the closed form (eq. 4) with one ε.

    Args:
        x0: Clean image, float ``(H, W, C)`` in ``[-1, 1]``.
        schedule: One of :data:`SCHEDULES`.
        num_train_timesteps: Number of diffusion steps T.
        seed: Seed of ε (the same ε as :func:`forward_noise` with this seed).
        ts: Lesson timesteps in ``0..T``, at most 64 of them.

    Returns:
        One float32 array per entry of ``ts``, in the same order.

    Raises:
        InputError: For bad inputs, as :func:`forward_noise`; ``too_many_steps``
            when more than 64 timesteps are asked for.
    """
    image = torch.from_numpy(_check_image(x0).copy())
    noise_schedule = get_schedule(schedule, num_train_timesteps)
    big_t = noise_schedule.num_train_timesteps
    seed = _check_seed(seed)
    ts = list(ts)
    if len(ts) > 64:
        raise InputError("too_many_steps", "At most {limit} timesteps can be shown at once.", limit=64)
    checked = [_check_t(t, big_t) for t in ts]
    noise = _standard_noise(image.shape, seed)
    scheduler = _shared_scheduler(noise_schedule.name, big_t)
    return [q_sample(image, t, noise, scheduler).numpy().copy() for t in checked]


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
