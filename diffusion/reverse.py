"""The one reverse-process contract: many loops, one way to report, stop and record.

Every loop in this app that walks from noise back to data (lesson 4's digit samplers,
lesson 5's multi-step denoiser, lesson 6's pipeline run, the training preview grids)
follows the same three rules, as k-diffusion's samplers do with their
``callback({'x', 'i', 'sigma', 'denoised'})``:

1. **Report.** After each step it calls ``callback(StepInfo(...))`` (:data:`StepCallback`)
   with the step index, the timestep, ᾱ_t, the x_t the network saw, the predicted clean
   x̂_0 (Tweedie's formula, DDPM eq. 15) and the noise prediction ε̂. Tensors may live on
   the device and must not be modified by the callback.
2. **Stop.** After each step it polls ``stop()`` (:data:`StopFlag`). When that returns True
   before the last step, the loop ends cleanly and its result says ``stopped``.
3. **Record.** It returns a :class:`Trajectory` (or a subclass that adds the lesson's own
   results), built by a :class:`Recorder`, so a finished run can be scrubbed step by step
   without computing anything again.

The serving layer (:mod:`diffusion.serving.live`) runs any such loop in a worker thread
and streams its steps, whatever the lesson.

Timesteps: ``StepInfo.t`` and ``Trajectory.timesteps`` hold the scheduler's own timestep
(diffusers' index τ, or σ-space values for Euler); what a student reads is
:func:`diffusion.schedule.display_t` of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from diffusion.errors import InputError, check_range


@dataclass
class StepInfo:
    """The callback payload of one step.

    Tensors are ``(B, C, H, W)`` (latents for lesson 6, network planes for lesson 5).

    Attributes:
        step: Index of this step, 0 .. total - 1.
        total: Number of steps of the run.
        t: The scheduler's timestep τ of this step (see the module docstring).
        alpha_bar: ᾱ of the noise level this step starts from (NaN where unknown).
        x_t: What the network saw at this step.
        x0_pred: The predicted clean sample x̂_0.
        eps_pred: The (guided) noise prediction ε̂.
        x_next: Where the loop goes from here (x_{t-1}), where a loop reports it: with it, the
            reported steps alone rebuild a stopped run (a GPU call in another process).
    """

    step: int
    total: int
    t: int | float
    alpha_bar: float
    x_t: torch.Tensor
    x0_pred: torch.Tensor
    eps_pred: torch.Tensor
    x_next: torch.Tensor | None = None

    def to_cpu(self) -> StepInfo:
        """A float32 CPU copy, safe to keep after the loop has moved on."""
        def copy(x: torch.Tensor) -> torch.Tensor:
            return x.detach().float().cpu()

        return replace(self, x_t=copy(self.x_t), x0_pred=copy(self.x0_pred), eps_pred=copy(self.eps_pred),
                       x_next=None if self.x_next is None else copy(self.x_next))


StepCallback = Callable[[StepInfo], None]
StopFlag = Callable[[], bool]


def should_stop(stop: StopFlag | None, done: int, total: int) -> bool:
    """Rule 2: whether a loop that has finished ``done`` of ``total`` steps ends here."""
    return stop is not None and done < total and bool(stop())


def as_number(value: Any) -> int | float:
    """A timestep as a plain ``int`` when it is whole, else ``float``."""
    v = float(value)
    return int(v) if v.is_integer() else v


@dataclass(eq=False, kw_only=True)
class Trajectory:
    """Rule 3: the recorded steps of one run (finished or stopped).

    Frames are CPU tensors ``(steps, B, C, H, W)``, float16 unless the recorder was told
    otherwise; a run made with ``record=False`` keeps empty frames (``x_t.shape[0] == 0``)
    and only the per-step numbers.
    """

    timesteps: torch.Tensor          # (steps,) float64, the scheduler's t of each step
    alpha_bar: torch.Tensor          # (steps,) float64, ᾱ of each step
    x_t: torch.Tensor                # (steps, B, C, H, W)
    x0_pred: torch.Tensor            # (steps, B, C, H, W)
    eps: torch.Tensor                # (steps, B, C, H, W)
    seconds: float
    stopped: bool = False
    device: str = "cpu"

    def __len__(self) -> int:
        """Number of steps that were run."""
        return int(self.timesteps.numel())

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded frames."""
        return sum(t.numel() * t.element_size() for t in (self.x_t, self.x0_pred, self.eps))

    @property
    def recorded(self) -> bool:
        """Whether the frames were kept (``record=True``) and at least one step ran."""
        return self.x_t.dim() > 0 and self.x_t.shape[0] > 0

    def frame(self, i: int) -> StepInfo:
        """The recorded step ``i`` as float32 CPU tensors.

        Raises:
            InputError: ``no_steps`` for a run stopped before its first step; ``i`` not a
                whole number in ``[0, len - 1]``.
            ValueError: The run was made with ``record=False``.
        """
        if not len(self):
            raise InputError("no_steps", "This run was stopped before its first step.")
        if not self.recorded:
            raise ValueError("this run was made with record=False, so it has no frames")
        i = int(check_range("step", i, 0, len(self) - 1, integer=True))
        return StepInfo(step=i, total=len(self), t=as_number(self.timesteps[i]),
                        alpha_bar=float(self.alpha_bar[i]), x_t=self.x_t[i].float(),
                        x0_pred=self.x0_pred[i].float(), eps_pred=self.eps[i].float())

    def scrub(self, step: Any) -> StepInfo:
        """The frame a 1-based step slider points at, clamped into the run (a slider may send 0 or more).

        Raises:
            InputError: ``not_a_number`` when ``step`` is not a finite number; see :meth:`frame`.
        """
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise InputError("not_a_number", "step must be a number.", name="step")
        return self.frame(int(min(max(step, 1), len(self))) - 1)


@dataclass
class Recorder:
    """Collects a loop's steps on the CPU; :meth:`fields` gives what a :class:`Trajectory` holds.

    Args:
        record: Keep every step's tensors; otherwise only timesteps and ᾱ (and ``latest``).
        dtype: Precision of the kept frames: float16 halves the memory of a scrubbable run,
            float32 keeps exact values where a lesson computes pictures from them later.
    """

    record: bool = True
    dtype: torch.dtype = torch.float16
    latest: StepInfo | None = None
    _timesteps: list[float] = field(default_factory=list)
    _alpha_bar: list[float] = field(default_factory=list)
    _frames: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, info: StepInfo) -> None:
        """Keep step ``info`` (CPU copies in :attr:`dtype`)."""
        self._timesteps.append(float(info.t))
        self._alpha_bar.append(float(info.alpha_bar))
        self.latest = info
        if self.record:
            self._frames.append(tuple(x.detach().to("cpu", self.dtype) for x in
                                      (info.x_t, info.x0_pred, info.eps_pred)))

    def __len__(self) -> int:
        return len(self._timesteps)

    def fields(self) -> dict[str, torch.Tensor]:
        """``timesteps``, ``alpha_bar``, ``x_t``, ``x0_pred`` and ``eps`` for a :class:`Trajectory`."""
        def stacked(k: int) -> torch.Tensor:
            return torch.stack([f[k] for f in self._frames]) if self._frames else torch.empty(0, dtype=self.dtype)

        return {"timesteps": torch.tensor(self._timesteps, dtype=torch.float64),
                "alpha_bar": torch.tensor(self._alpha_bar, dtype=torch.float64),
                "x_t": stacked(0), "x0_pred": stacked(1), "eps": stacked(2)}


def finite(value: float, digits: int) -> float | None:
    """``round(value, digits)``, or ``None`` for NaN and infinities (JSON has neither)."""
    return round(float(value), digits) if math.isfinite(value) else None
