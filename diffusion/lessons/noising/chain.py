"""The forward process step by step: x_t reached by applying DDPM eq. 2 t times.

    q(x_s | x_{s-1}) = N(sqrt(1 - β_s) x_{s-1}, β_s I)      (Ho et al. 2020, eq. 2)

Lesson 2 shows this next to the one-jump closed form (eq. 4) to make the point that
both give the same distribution of x_t.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import torch

from diffusion.errors import check_range
from diffusion.lessons.noising.schedules import NoiseSchedule
from diffusion.lessons.noising.validation import check_image, check_seed, check_t

# The stepwise chain keeps at most this many checkpoints (plus the clean image),
# whatever T is, so its memory stays bounded for T up to 4000.
MAX_CHECKPOINTS = 40


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
    A fresh chain's first query costs t steps; calling ``x_at(T)`` once, for
    example right after an image is chosen, fills every checkpoint. Access is
    serialised with a lock, so one chain can serve concurrent requests.

    Args:
        x0: Clean image, float ``(H, W, C)`` array (``(H, W)`` works too).
        schedule: The β schedule.
        seed: Seed of the per-step noise, within ``LIMITS["seed"]``.
        checkpoint_every: Desired distance K between checkpoints (1..1000).
    """

    def __init__(self, x0: Any, schedule: NoiseSchedule, seed: int, checkpoint_every: int = 50) -> None:
        self.schedule = schedule
        self.seed = check_seed(seed)
        requested = int(check_range("checkpoint_every", checkpoint_every, 1, 1000, integer=True))
        self.checkpoint_every = max(requested, math.ceil(schedule.num_train_timesteps / MAX_CHECKPOINTS))
        start = check_image(x0).copy()
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
        # numpy's single-threaded loops, not torch's: on a busy machine torch's intra-op
        # thread pool stalls now and then, and a slider move waits for it.
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
        t = check_t(t, self.schedule.num_train_timesteps)
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
