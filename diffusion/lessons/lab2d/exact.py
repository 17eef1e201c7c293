"""The exact score of the noised training set: a Gaussian mixture, known in closed form.

For N training points {x_i} (standardised), the forward process (DDPM eq. 4) turns their
empirical distribution into a mixture of N equal Gaussians::

    p_t(x) = (1/N) Σ_i N(x; √ᾱ_t x_i, (1 - ᾱ_t) I)                                   (1)

whose score is a weighted pull towards the shrunken training points::

    ∇_x log p_t(x) = Σ_i w_i(x) (√ᾱ_t x_i - x) / (1 - ᾱ_t),                           (2)
    w_i(x) = softmax_i( -|x - √ᾱ_t x_i|² / (2 (1 - ᾱ_t)) )                              (3)

The weights (3) are the posterior p(x_0 = x_i | x_t = x), so Σ_i w_i x_i is E[x_0 | x_t],
Tweedie's formula (Efron 2011) in exact form. The noise prediction that has this score
(Song et al. 2021, score-based SDEs: ε = -√(1 - ᾱ_t) ∇ log p_t) is::

    ε*(x, t) = (x - √ᾱ_t Σ_i w_i x_i) / √(1 - ᾱ_t)                                      (4)

so a sampler can run the same DDPM / DDIM update with ε* in place of the network's ε_θ.
This ε* is the *minimiser of DDPM's training loss on the finite training set*: a network
that fitted the loss perfectly would reproduce it, and sampling with it only gives back
copies of the training points (memorisation), because as t → 0 the weights (3) pick out
the single nearest x_i.

Numerics: the softmax (3) is taken with log-sum-exp (the row maximum is subtracted
before ``exp``) and the query points are processed in
chunks of at most :data:`CHUNK_ELEMENTS` point pairs, so 5000 × 5000 pairs need tens of
megabytes, not gigabytes. Each block of logits is one matrix product (see ``_chunks``).
Everything is float64 by default (the reference the tests check). The sampler asks for
``dtype=torch.float32``, several times faster on a CPU: the logits then carry an absolute
error of about 1e-7 (|x|² + |c|²) / (1 - ᾱ_t), at most ~3e-3 even at t = 1
(1 - ᾱ_1 = 1e-4), which changes ε* by less than 0.1 % of its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

CHUNK_ELEMENTS = 2**21  # point pairs per chunk: a (chunk, N) float64 matrix is 16 MiB
LOG_WEIGHT_FLOOR = -80.0  # log of the smallest weight kept, relative to the largest


def _as(x: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(x).to(dtype)


def _check_alpha_bar(alpha_bar: float) -> float:
    alpha_bar = float(alpha_bar)
    if not 0.0 < alpha_bar < 1.0:
        # t = 0 (ᾱ = 1) is the empirical distribution itself: a sum of point masses, no score.
        raise ValueError(f"the exact score needs 0 < ᾱ_t < 1 (t ≥ 1), got ᾱ_t = {alpha_bar}")
    return alpha_bar


def _chunks(x: torch.Tensor, train: torch.Tensor, alpha_bar: float) -> Iterator[tuple[slice, torch.Tensor]]:
    """The logits of (3) plus |x|² / (2(1 - ᾱ)), one ``(chunk, N)`` block at a time.

    Expanding ``-|x - c_i|² = -|x|² + 2 x·c_i - |c_i|²`` (c_i = √ᾱ x_i), the first term is
    the same for every i, and a softmax over i does not change when a row is shifted, so
    the blocks are ``(x·c_i - |c_i|² / 2) / (1 - ᾱ)``: one matrix product per block.
    """
    centres = math.sqrt(alpha_bar) * train
    variance = 1.0 - alpha_bar
    bias = (centres * centres).sum(dim=1) / (-2.0 * variance)
    rows = max(1, CHUNK_ELEMENTS // max(1, centres.shape[0]))
    for start in range(0, x.shape[0], rows):
        yield slice(start, start + rows), torch.addmm(bias, x[start:start + rows], centres.T, alpha=1.0 / variance)


def posterior_mean(x: Any, train: Any, alpha_bar: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """E[x_0 | x_t = x] = Σ_i w_i(x) x_i under the mixture (1), weights (3).

    Args:
        x: Query points ``(M, 2)``.
        train: Training points ``(N, 2)`` (standardised).
        alpha_bar: ᾱ_t with ``0 < ᾱ_t < 1``.
        dtype: Precision of the computation (see the module docstring).

    Returns:
        ``(M, 2)`` in ``dtype``: the exact denoised points (Tweedie's formula).
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    x, train = _as(x, dtype), _as(train, dtype)
    out = torch.empty_like(x)
    for rows, shifted in _chunks(x, train, alpha_bar):
        # softmax by hand: subtract the row maximum (log-sum-exp), floor at e^-80 so exp never
        # makes subnormal numbers (several times slower on CPUs); the floor moves the mean
        # by less than N · e^-80 · max|x_i| ≈ 1e-31.
        weights = (shifted - shifted.amax(dim=1, keepdim=True)).clamp_min_(LOG_WEIGHT_FLOOR).exp_()
        out[rows] = (weights @ train) / weights.sum(dim=1, keepdim=True)
    return out


def exact_score(x: Any, train: Any, alpha_bar: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """∇_x log p_t(x) of the mixture (1), eq. (2).

    Args:
        x: Query points ``(M, 2)``.
        train: Training points ``(N, 2)`` (standardised).
        alpha_bar: ᾱ_t with ``0 < ᾱ_t < 1``.
        dtype: Precision of the computation.

    Returns:
        ``(M, 2)`` in ``dtype``.
    """
    x = _as(x, dtype)
    mean = math.sqrt(float(alpha_bar)) * posterior_mean(x, train, alpha_bar, dtype)
    return (mean - x) / (1.0 - float(alpha_bar))


def exact_eps(x: Any, train: Any, alpha_bar: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """ε*(x, t) = -√(1 - ᾱ_t) ∇ log p_t(x), eq. (4): the noise prediction of the exact score.

    Returns:
        ``(M, 2)`` in ``dtype`` (arguments as :func:`exact_score`).
    """
    x = _as(x, dtype)
    mean = math.sqrt(float(alpha_bar)) * posterior_mean(x, train, alpha_bar, dtype)
    return (x - mean) / math.sqrt(1.0 - float(alpha_bar))


def log_density(x: Any, train: Any, alpha_bar: float) -> torch.Tensor:
    """log p_t(x) of the mixture (1), with its normalisation (2-D Gaussians).

    ``log p_t(x) = logsumexp_i(logits_i) - log N - log(2π (1 - ᾱ_t))``.

    Returns:
        float64 ``(M,)``.
    """
    alpha_bar = _check_alpha_bar(alpha_bar)
    x, train = _as(x, torch.float64), _as(train, torch.float64)
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for rows, shifted in _chunks(x, train, alpha_bar):
        out[rows] = torch.logsumexp(shifted, dim=1)
    variance = 1.0 - alpha_bar
    return out - (x * x).sum(dim=1) / (2.0 * variance) - math.log(train.shape[0]) - math.log(2.0 * math.pi * variance)
