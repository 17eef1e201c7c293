"""What a student asks lesson 4's sampler for: a validated request, its classes and its x_T.

Determinism: the initial noise x_T is drawn on the CPU from a ``torch.Generator`` seeded
with ``request.seed`` (so the CPU and a GPU start from the same picture), and random
digits come from a second generator derived from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
)

from diffusion.datasets.digits import NUM_CLASSES
from diffusion.errors import InputError, check_choice, check_range

SAMPLERS: dict[str, type] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler_ancestral": EulerAncestralDiscreteScheduler,
    "dpm_solver": DPMSolverMultistepScheduler,
}
NULL_CLASS = NUM_CLASSES  # label 10: "no class", the unconditional model
DIGITS = ("random",) + tuple(str(d) for d in range(NUM_CLASSES))
LIMITS = {"batch_size": (1, 16), "guidance_scale": (0.0, 10.0), "eta": (0.0, 1.0),
          "seed": (0, 2**32 - 1)}


@dataclass(frozen=True)
class SampleRequest:
    """What the student asks for. Call :meth:`validated` before use.

    ``eta`` (DDIM's η) is used by ``ddim`` only; ``digit`` is ``"0"``-``"9"`` or
    ``"random"`` (each image gets its own random class).
    """

    sampler: str = "ddim"
    num_inference_steps: int = 20  # DDIM-20 matches DDIM-50's quality (the model card) at 2.5 times less work
    eta: float = 0.0
    seed: int = 0
    batch_size: int = 16
    digit: str = "random"
    guidance_scale: float = 1.5

    def validated(self, num_train_timesteps: int, max_batch_size: int = LIMITS["batch_size"][1]) -> SampleRequest:
        """A checked copy with plain Python types.

        Args:
            num_train_timesteps: T of the model's scheduler; at most T steps can be run.
            max_batch_size: Largest batch accepted; the app's cap unless an offline tool
                (evaluation) asks for more.

        Returns:
            A new request. For samplers other than ``ddim`` its ``eta`` is 0.0,
            since η has no effect there (a hidden slider may still send a value).

        Raises:
            InputError: ``bad_choice`` (sampler), ``bad_digit``, or ``not_a_number`` /
                ``not_an_integer`` / ``out_of_range`` naming the field.
        """
        big_t = int(check_range("num_train_timesteps", num_train_timesteps, 1, 100_000, integer=True))
        sampler = check_choice("sampler", self.sampler, tuple(SAMPLERS))
        eta = check_range("eta", self.eta, *LIMITS["eta"])
        return SampleRequest(
            sampler=sampler,
            num_inference_steps=int(check_range("num_inference_steps", self.num_inference_steps,
                                                1, big_t, integer=True)),
            eta=float(eta) if sampler == "ddim" else 0.0,
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)),
            batch_size=int(check_range("batch_size", self.batch_size, LIMITS["batch_size"][0],
                                       max(1, int(max_batch_size)), integer=True)),
            digit=_parse_digit(self.digit),
            guidance_scale=float(check_range("guidance_scale", self.guidance_scale,
                                             *LIMITS["guidance_scale"])),
        )


def _parse_digit(value: Any) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = str(int(value))
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in DIGITS:
        raise InputError("bad_digit", "digit must be 'random' or one of 0-9 (got {value}).",
                         value=str(value)[:40])
    return text


def _seed_generator(seed: int, purpose: int) -> torch.Generator:
    # SeedSequence spreads (seed, purpose) so the label stream does not mirror the noise stream.
    word = np.random.SeedSequence([seed, purpose]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(word))


def class_labels(request: SampleRequest) -> torch.Tensor:
    """The class of each image: the chosen digit, or seeded random digits for ``"random"``.

    Args:
        request: A validated request.

    Returns:
        int64 ``(B,)`` tensor on the CPU.
    """
    if request.digit == "random":
        return torch.randint(0, NUM_CLASSES, (request.batch_size,), generator=_seed_generator(request.seed, 1))
    return torch.full((request.batch_size,), int(request.digit), dtype=torch.long)


def initial_noise(request: SampleRequest, shape: tuple[int, ...]) -> torch.Tensor:
    """x_T ~ N(0, I) from a CPU ``torch.Generator`` seeded with ``request.seed``.

    This is exactly the x_T that :func:`sample` draws for the request, so two
    runs (say DDPM and DDIM side by side) given this tensor as ``noise=`` start
    from the same picture.

    Returns:
        float32 CPU tensor of ``shape``.
    """
    seed = int(check_range("seed", request.seed, *LIMITS["seed"], integer=True))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def request_from_summary(summary: dict[str, Any]) -> SampleRequest:
    """The request that reproduces a run from its :meth:`Trajectory.summary`."""
    fields = ("sampler", "num_inference_steps", "eta", "seed", "batch_size", "digit", "guidance_scale")
    return replace(SampleRequest(), **{k: summary[k] for k in fields})
