"""Training the lab's ε-predictor live: DDPM's simple loss, resumable, deterministic.

One step is DDPM's Algorithm 1 (Ho et al. 2020) on a batch of training points::

    x_0 ~ data,  t ~ Uniform{1, …, T},  ε ~ N(0, I)
    L_simple = ‖ε - ε_θ(√ᾱ_t x_0 + √(1 - ᾱ_t) ε, t)‖²                             (eq. 14)

followed by one AdamW update (Loshchilov & Hutter 2019) and an exponential moving average
of the weights (EMA, as DDPM's Appendix B), which is the model that samples::

    θ̄ ← d_s θ̄ + (1 - d_s) θ,   d_s = min(d, (1 + s) / (10 + s))                        (EMA)

The loss reported is the mean over the batch *and over the two coordinates*,
``‖ε - ε_θ‖² / 2``, so predicting ε = 0 scores 1.0. The learning rate warms up linearly
over :data:`WARMUP_STEPS` steps and then stays constant (:func:`learning_rate_at`): with
the EMA, a decaying learning rate gave no better samples in our measurements
(``python -m diffusion.evaluate lab2d``), and a constant one lets training continue for
as long as a student likes.

**Resumable and deterministic.** A :class:`Lab2DRun` holds everything that training
changes: the network, its EMA, the optimiser's moments, the step count, the losses and
the ``torch.Generator`` that draws every batch index, t and ε (no global seed is used).
:func:`train` advances it by some steps, so training 300 steps and then 200 more gives
the same weights, bit for bit, as 500 steps at once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from diffusion.lessons.lab2d.config import DEFAULTS, check_float, check_int, check_name
from diffusion.lessons.lab2d.data import Dataset
from diffusion.lessons.lab2d.forward import training_scheduler
from diffusion.lessons.lab2d.model import EpsMLP, ModelConfig, build_model
from diffusion.reverse import StopFlag, should_stop

WARMUP_STEPS = 100
LossCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainConfig:
    """How the run learns (fixed when the run is made).

    Attributes:
        learning_rate: AdamW's peak learning rate, within ``LIMITS["learning_rate"]``.
        batch_size: Points per step, within ``LIMITS["batch_size"]``.
        ema_decay: d of the EMA, within ``LIMITS["ema_decay"]`` (0: sample with θ itself).
        schedule: The β schedule, ``"linear"`` or ``"cosine"``.
        num_train_timesteps: T.
        seed: Seed of the run's generator (initial weights, then every batch).
        weight_decay: AdamW's decoupled weight decay.
    """

    learning_rate: float = DEFAULTS["learning_rate"]
    batch_size: int = DEFAULTS["batch_size"]
    ema_decay: float = DEFAULTS["ema_decay"]
    schedule: str = DEFAULTS["schedule"]
    num_train_timesteps: int = DEFAULTS["num_train_timesteps"]
    seed: int = DEFAULTS["seed"]
    weight_decay: float = 0.0

    def validated(self) -> TrainConfig:
        """A checked copy with plain Python types.

        Raises:
            InputError: A field out of range (named in the message) or an unknown schedule.
        """
        return TrainConfig(learning_rate=check_float("learning_rate", self.learning_rate),
                           batch_size=check_int("batch_size", self.batch_size),
                           ema_decay=check_float("ema_decay", self.ema_decay),
                           schedule=check_name("schedule", self.schedule),
                           num_train_timesteps=check_int("num_train_timesteps", self.num_train_timesteps),
                           seed=check_int("seed", self.seed),
                           weight_decay=float(min(max(float(self.weight_decay), 0.0), 1.0)))


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The learning rate of step s (from 0): ``lr · min(1, (s + 1) / WARMUP_STEPS)``."""
    return config.learning_rate * min(1.0, (step + 1) / WARMUP_STEPS)


@dataclass(eq=False)
class Lab2DRun:
    """A model being trained on one data set: everything that :func:`train` advances.

    Do not sample from a run while another thread trains it (the serving layer runs one
    job per run at a time).

    Attributes:
        dataset: The training set (the network sees its standardised points).
        model_config: The network's shape.
        train_config: How it learns.
        model: ε_θ, the weights the optimiser changes.
        ema: θ̄, their moving average (the model that samples when ``ema_decay > 0``).
        optimizer: AdamW over ``model``'s parameters.
        generator: Draws every batch (indices, t, ε) in order; its state is the run's.
        alphas_cumprod: ᾱ per diffusers index τ = t - 1, float32 ``(T,)`` (diffusers' own).
        step: Steps trained so far.
        losses: The loss of every step so far.
        seconds: Wall time spent training so far.
    """

    dataset: Dataset
    model_config: ModelConfig
    train_config: TrainConfig
    model: EpsMLP
    ema: EpsMLP
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    alphas_cumprod: torch.Tensor
    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sampling_model(self) -> EpsMLP:
        """The network that samples: the EMA θ̄, or θ itself when ``ema_decay == 0``."""
        return self.ema if self.train_config.ema_decay > 0 else self.model

    def summary(self) -> dict[str, Any]:
        """JSON-safe description: data set, network, training settings and progress."""
        recent = self.losses[-100:]
        return {**self.dataset.summary(), **self.model_config.to_dict(), **asdict(self.train_config),
                "step": self.step, "train_seconds": round(self.seconds, 3),
                "loss": round(float(np.mean(recent)), 6) if recent else None,
                "parameters": sum(p.numel() for p in self.model.parameters())}


def new_run(dataset: Dataset, hidden: int = DEFAULTS["hidden"], depth: int = DEFAULTS["depth"],
            schedule: str = DEFAULTS["schedule"], learning_rate: float = DEFAULTS["learning_rate"],
            seed: int = DEFAULTS["seed"], *, batch_size: int = DEFAULTS["batch_size"],
            ema_decay: float = DEFAULTS["ema_decay"],
            num_train_timesteps: int = DEFAULTS["num_train_timesteps"], fourier: int = ModelConfig.fourier,
            weight_decay: float = 0.0) -> Lab2DRun:
    """A fresh, untrained run: initial weights from ``seed``, the same for the same inputs.

    Args:
        dataset: The training set (:func:`~diffusion.lessons.lab2d.data.make_dataset`).
        hidden: Width of the hidden layers.
        depth: Number of hidden layers.
        schedule: The β schedule, ``"linear"`` or ``"cosine"``.
        learning_rate: AdamW's peak learning rate.
        seed: Seed of the run's ``torch.Generator``.
        batch_size: Points per training step.
        ema_decay: d of the weights' EMA (0 turns it off).
        num_train_timesteps: T.
        fourier: Fourier octaves of the input (see :mod:`~diffusion.lessons.lab2d.model`).
        weight_decay: AdamW's weight decay.

    Returns:
        A :class:`Lab2DRun` at step 0.

    Raises:
        InputError: Any setting out of its range in ``LIMITS``.
    """
    train_config = TrainConfig(learning_rate=learning_rate, batch_size=batch_size, ema_decay=ema_decay,
                               schedule=schedule, num_train_timesteps=num_train_timesteps, seed=seed,
                               weight_decay=weight_decay).validated()
    model_config = ModelConfig(hidden=hidden, depth=depth, num_train_timesteps=train_config.num_train_timesteps,
                               fourier=fourier).validated()
    generator = torch.Generator().manual_seed(train_config.seed)
    model = build_model(model_config, generator)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    # fused: one kernel for all parameters; on the CPU it is deterministic and a fifth faster.
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate_at(0, train_config),
                                  weight_decay=train_config.weight_decay, fused=True)
    scheduler = training_scheduler(train_config.schedule, train_config.num_train_timesteps)
    return Lab2DRun(dataset=dataset, model_config=model_config, train_config=train_config, model=model, ema=ema,
                    optimizer=optimizer, generator=generator,
                    alphas_cumprod=scheduler.alphas_cumprod.to(torch.float32).clone())


@dataclass
class TrainSummary:
    """What one call of :func:`train` did.

    Attributes:
        steps_run: Steps done by this call.
        total_steps: The run's step count afterwards.
        stopped: Whether the stop flag ended the call early.
        seconds: Wall time of this call.
        loss: Mean loss of the last (up to) 100 steps of the run.
        losses: The loss of each step of this call.
    """

    steps_run: int
    total_steps: int
    stopped: bool
    seconds: float
    loss: float | None
    losses: list[float]

    def to_dict(self) -> dict[str, Any]:
        """The key numbers as JSON-safe values (without the per-step losses)."""
        return {"steps_run": self.steps_run, "total_steps": self.total_steps, "stopped": self.stopped,
                "seconds": round(self.seconds, 3), "loss": None if self.loss is None else round(self.loss, 6)}


def train(run: Lab2DRun, steps: int = DEFAULTS["steps"], callback: LossCallback | None = None,
          stop: StopFlag | None = None) -> TrainSummary:
    """Advance ``run`` by ``steps`` steps of DDPM's Algorithm 1 (see the module docstring).

    Args:
        run: The run to train; changed in place (weights, EMA, optimiser, generator, losses).
        steps: Number of steps, within ``LIMITS["steps"]``.
        callback: Called as ``callback(step, loss)`` after every step, ``step`` counting from
            1 over the whole run (so a UI can stream the loss curve).
        stop: Polled after every step; returning True ends the call there (the run keeps
            every finished step and can continue later).

    Returns:
        A :class:`TrainSummary`.

    Raises:
        InputError: ``steps`` out of range.
    """
    steps = check_int("steps", steps)
    config = run.train_config
    data = torch.from_numpy(run.dataset.standardised)
    alphas_cumprod = run.alphas_cumprod
    big_t, n, g = config.num_train_timesteps, data.shape[0], run.generator
    params = list(run.model.parameters())
    ema_params = list(run.ema.parameters())
    new_losses: list[float] = []
    stopped = False
    run.model.train()
    start = time.perf_counter()
    for done in range(1, steps + 1):
        s = run.step
        for group in run.optimizer.param_groups:
            group["lr"] = learning_rate_at(s, config)
        index = torch.randint(0, n, (config.batch_size,), generator=g)
        tau = torch.randint(0, big_t, (config.batch_size,), generator=g)  # τ = t - 1, t ~ U{1..T}
        eps = torch.randn((config.batch_size, 2), generator=g)
        alpha_bar = alphas_cumprod[tau].unsqueeze(1)
        x_t = alpha_bar.sqrt() * data[index] + (1.0 - alpha_bar).sqrt() * eps     # eq. 4
        loss = (eps - run.model(x_t, tau)).square().mean()                        # eq. 14, per coordinate
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        with torch.no_grad():
            decay = min(config.ema_decay, (1.0 + s) / (10.0 + s))
            for average, weight in zip(ema_params, params):
                average.lerp_(weight, 1.0 - decay)
        value = float(loss.detach())
        run.losses.append(value)
        new_losses.append(value)
        run.step += 1
        if callback is not None:
            callback(run.step, value)
        if should_stop(stop, done, steps):
            stopped = True
            break
    seconds = time.perf_counter() - start
    run.seconds += seconds
    recent = run.losses[-100:]
    return TrainSummary(steps_run=len(new_losses), total_steps=run.step, stopped=stopped, seconds=seconds,
                        loss=float(np.mean(recent)) if recent else None, losses=new_losses)
