"""The lab's network: a small MLP ε-predictor ε_θ(x_t, t) for 2-D points.

Architecture (``hidden`` = H, ``depth`` = number of hidden layers)::

    e(t)   = [sin(ω_k t'), cos(ω_k t')]_k,   ω_k = 10000^(-k / (E/2)),  t' = τ · 1000 / T
    h_0    = act(W_in [γ(x_t), e(t)])                      input layer
    h_l    = h_{l-1} + act(W_l h_{l-1})                     hidden layers l = 1 .. depth - 1
    ε_θ    = W_out h_{depth-1}

* e(t) is the Transformer's sinusoidal position encoding (Vaswani et al. 2017) of the
  timestep, as in DDPM (Ho et al. 2020, Appendix B); τ = t - 1 is diffusers' index, and
  t' rescales it so the same frequencies cover any T.
* γ(x) = [x, sin(2π b_j x), cos(2π b_j x)]_j are Fourier features of the input
  (Tancik et al. 2020) with fixed octave frequencies b_j = 2^j / 4; they let a small
  network bend its output over distances much shorter than the data's spread, which the
  score needs at small t. ``fourier = 0`` feeds x_t alone.
* The residual connections keep a deeper net trainable in a few thousand steps. Feeding
  e(t) to every hidden layer again gave no better samples in our measurements
  (``python -m diffusion.evaluate lab2d``) and cost a tenth more time, so e(t) enters once.

The module is a plain :class:`torch.nn.Module` whose output has the shape of ``x``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from diffusion.lessons.lab2d.config import DEFAULTS, check_int

TIME_FEATURES = 32


@dataclass(frozen=True)
class ModelConfig:
    """The network's shape (everything :func:`build_model` needs to rebuild it).

    Attributes:
        hidden: Width H of each hidden layer, within ``LIMITS["hidden"]``.
        depth: Number of hidden layers, within ``LIMITS["depth"]``.
        num_train_timesteps: T, for the time encoding's scale.
        fourier: Number of Fourier octaves of the input (0: none).
        time_features: Size E of the sinusoidal time encoding.
    """

    hidden: int = DEFAULTS["hidden"]
    depth: int = DEFAULTS["depth"]
    num_train_timesteps: int = DEFAULTS["num_train_timesteps"]
    fourier: int = 4
    time_features: int = TIME_FEATURES

    def validated(self) -> ModelConfig:
        """A checked copy with plain ints.

        Raises:
            InputError: ``hidden``, ``depth`` or ``num_train_timesteps`` out of range.
        """
        fourier = int(self.fourier)
        features = int(self.time_features)
        if not 0 <= fourier <= 8 or not 2 <= features <= 256 or features % 2:
            raise ValueError("fourier must be 0..8 and time_features an even number 2..256")
        return ModelConfig(hidden=check_int("hidden", self.hidden), depth=check_int("depth", self.depth),
                           num_train_timesteps=check_int("num_train_timesteps", self.num_train_timesteps),
                           fourier=fourier, time_features=features)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-safe dict."""
        return asdict(self)


def timestep_encoding(tau: torch.Tensor, features: int, num_train_timesteps: int) -> torch.Tensor:
    """Sinusoidal encoding [sin(ω_k t'), cos(ω_k t')] of diffusers' timestep τ (``(B,)`` → ``(B, E)``)."""
    half = features // 2
    omega = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / half)
    scaled = tau.to(torch.float32) * (1000.0 / num_train_timesteps)
    angle = scaled[:, None] * omega[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class EpsMLP(nn.Module):
    """ε_θ(x_t, t): the MLP of the module docstring.

    Args:
        config: The network's shape (validated here).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config.validated()
        c = self.config
        self.register_buffer("frequencies", 2.0 * math.pi * 2.0 ** torch.arange(c.fourier, dtype=torch.float32) / 4.0,
                             persistent=False)
        inputs = 2 * (1 + 2 * c.fourier) + c.time_features
        self.inp = nn.Linear(inputs, c.hidden)
        self.hidden = nn.ModuleList(nn.Linear(c.hidden, c.hidden) for _ in range(c.depth - 1))
        self.out = nn.Linear(c.hidden, 2)
        self.act = nn.SiLU()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """γ(x) = [x, sin(2π b_j x), cos(2π b_j x)]: ``(B, 2)`` → ``(B, 2 (1 + 2 · fourier))``."""
        if not self.config.fourier:
            return x
        angle = (x[:, :, None] * self.frequencies).flatten(1)
        return torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t).

        Args:
            x: Noisy points ``(B, 2)``.
            tau: diffusers' timestep index τ = t - 1, ``(B,)`` or a scalar.

        Returns:
            The predicted noise, ``(B, 2)``.
        """
        tau = torch.as_tensor(tau, device=x.device).reshape(-1).expand(x.shape[0])
        e = timestep_encoding(tau, self.config.time_features, self.config.num_train_timesteps)
        h = self.act(self.inp(torch.cat([self.features(x), e], dim=1)))
        for layer in self.hidden:
            h = h + self.act(layer(h))
        return self.out(h)


def build_model(config: ModelConfig, generator: torch.Generator) -> EpsMLP:
    """A new :class:`EpsMLP` whose initial weights come from ``generator`` (no global seed).

    Each weight gets PyTorch's default ``nn.Linear`` initialisation, U(-1/√fan_in, 1/√fan_in),
    drawn from the generator in the order of ``named_parameters``; the output layer starts
    at zero, so the untrained net predicts ε = 0 (the data's mean at every step).

    Args:
        config: The network's shape.
        generator: A seeded CPU ``torch.Generator``.

    Returns:
        The network in training mode on the CPU.
    """
    model = EpsMLP(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("out."):
                parameter.zero_()
                continue
            fan_in = parameter.shape[-1] if parameter.dim() == 2 else _fan_in(model, name)
            bound = 1.0 / math.sqrt(fan_in)
            parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2.0 * bound - bound)
    return model


def _fan_in(model: nn.Module, bias_name: str) -> int:
    weight = model.get_parameter(bias_name.rsplit(".", 1)[0] + ".weight")
    return int(weight.shape[1])
