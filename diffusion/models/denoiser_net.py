"""The noise-conditional denoising network of lesson 5 and its noise-level map.

The network is a diffusion model's ε-predictor, trained on *every* noise level
the way DDPM trains (Ho et al. 2020, Algorithm 1): draw a level, add Gaussian
noise, learn to predict the noise. Only the levels differ: DDPM draws a
timestep uniformly, we draw σ uniformly on the 0–255 scale up to
:data:`SIGMA_MAX_255` and map it to a (fractional) timestep.

Noise levels. For ``x_t = √ᾱ x_0 + √(1-ᾱ) ε`` (DDPM eq. 4) the rescaled image
``y = x_t / √ᾱ = x_0 + σ ε`` is the clean image plus Gaussian noise of
standard deviation::

    σ = √((1 - ᾱ) / ᾱ)          ⇔          ᾱ = 1 / (1 + σ²)

in model units (images in ``[-1, 1]``, so σ_model = 2 σ_255 / 255). A noisy
photo with known σ is therefore ``x_{t*}`` after scaling by ``√ᾱ_{t*}``, where
``t*`` solves σ(t*) = σ.

Continuous timesteps. diffusers numbers the DDPM timesteps ``τ = 0..T-1``
(``ᾱ_τ = scheduler.alphas_cumprod[τ]``). We extend them to real ``τ ∈ [-1, T-1]``:
``log ᾱ`` is linear between the integer knots and ``τ = -1`` is the clean image
(ᾱ = 1, the lesson's ``t = 0``; lesson step ``t`` is ``τ = t - 1``). The UNet's
sinusoidal timestep embedding takes real τ, so any σ gets its exact level.

Architecture. A diffusers :class:`~diffusers.UNet2DModel` without attention,
so it is fully convolutional and works on any image size. For speed it runs
at half resolution: the ``C×H×W`` image is folded into ``C·r²`` channels of
``H/r × W/r`` (pixel unshuffle, as in FFDNet, Zhang et al. 2018) and the
predicted noise unfolded back. ``C`` and ``r`` are read from the saved model:
``in_channels = C·r²`` with ``C = 1`` (grey) or ``C = 3`` (RGB); the two never
collide, because ``3 k²`` is never a square. A grey network sees colour images
one plane at a time (see :mod:`diffusion.lessons.denoising.denoiser`); a colour
network sees all three planes together, so it can use their correlation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

SIGMA_MAX_255 = 100.0  # the highest noise level trained, on the 0–255 scale


def sigma_to_model(sigma_255: float | np.ndarray | torch.Tensor):
    """σ on the 0–255 pixel scale → σ in model units (images in ``[-1, 1]``): ``2 σ / 255``."""
    return sigma_255 * (2.0 / 255.0)


class NoiseLevels:
    """σ ↔ τ for a DDPM schedule, on continuous timesteps ``τ ∈ [-1, T-1]`` (see the module docstring).

    Args:
        alphas_cumprod: ``ᾱ_τ`` for ``τ = 0..T-1``, e.g. ``scheduler.alphas_cumprod``.
    """

    def __init__(self, alphas_cumprod: Sequence[float] | torch.Tensor) -> None:
        abar = np.asarray(torch.as_tensor(alphas_cumprod, dtype=torch.float64))
        self.knots = np.arange(-1, len(abar), dtype=np.float64)  # τ = -1, 0, ..., T-1
        self.log_abar = np.concatenate([[0.0], np.log(abar)])  # ᾱ_{-1} = 1
        self.sigmas = np.sqrt(np.expm1(-self.log_abar))  # σ = √(1/ᾱ - 1), increasing in τ

    @classmethod
    def from_scheduler(cls, scheduler: DDPMScheduler) -> NoiseLevels:
        """The levels of a diffusers scheduler (its ``alphas_cumprod``)."""
        return cls(scheduler.alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.knots) - 1

    def alpha_bar(self, tau: float | np.ndarray) -> np.ndarray:
        """ᾱ(τ): log-linear interpolation between the scheduler's integer timesteps."""
        return np.exp(np.interp(tau, self.knots, self.log_abar))

    def sigma(self, tau: float | np.ndarray) -> np.ndarray:
        """σ(τ) = √((1 - ᾱ(τ)) / ᾱ(τ)) in model units."""
        return np.sqrt(np.expm1(-np.interp(tau, self.knots, self.log_abar)))

    def tau(self, sigma_model: float | np.ndarray) -> np.ndarray:
        """The timestep τ* with σ(τ*) = σ (model units); σ = 0 gives τ* = -1, the clean image.

        Exact for the interpolated schedule: between two knots ``log ᾱ`` is linear
        in τ, so τ* solves ``log ᾱ(τ*) = -log(1 + σ²)`` by linear interpolation.
        """
        target = -np.log1p(np.square(np.asarray(sigma_model, dtype=np.float64)))
        if np.any(target < self.log_abar[-1]):
            raise ValueError(f"σ above the schedule's largest level {self.sigmas[-1]:.3g}")
        # log ᾱ decreases with τ: interpolate on the reversed (increasing) arrays
        return np.interp(target, self.log_abar[::-1], self.knots[::-1])


IMAGE_CHANNELS = (1, 3)  # grey, RGB


def _channels_and_factor(unet: UNet2DModel) -> tuple[int, int]:
    """``(C, r)`` with ``in_channels = out_channels = C·r²`` from the saved config (see the module docstring)."""
    n = int(unet.config.in_channels)
    if unet.config.out_channels == n:
        for c in IMAGE_CHANNELS:
            r = math.isqrt(n // c)
            if n % c == 0 and r >= 1 and c * r * r == n:
                return c, r
    raise ValueError("a denoiser UNet needs in_channels = out_channels = C·r² "
                     "(C = 1 grey or 3 colour planes, pixel unshuffle by r)")


def image_channels(unet: UNet2DModel) -> int:
    """``C``, the image planes the network denoises together: 1 (grey) or 3 (RGB), from ``in_channels = C·r²``."""
    return _channels_and_factor(unet)[0]


def unshuffle_factor(unet: UNet2DModel) -> int:
    """``r`` of the pixel (un)shuffle, from the saved config: ``in_channels = C·r²`` (C = 1 or 3)."""
    return _channels_and_factor(unet)[1]


def size_multiple(unet: UNet2DModel) -> int:
    """Image sides must be multiples of this: the unshuffle times one halving per lower resolution."""
    return unshuffle_factor(unet) * 2 ** (len(unet.config.block_out_channels) - 1)


def build_denoiser_unet(channels: Sequence[int] = (32, 64, 128), layers_per_block: int = 1,
                        unshuffle: int = 2, sample_size: int = 48, image_channels: int = 1) -> UNet2DModel:
    """An untrained denoiser: ``UNet2DModel`` with ``C·r²`` in/out channels, no attention, no classes.

    Args:
        channels: Feature channels per resolution (each but the last halves the size).
        layers_per_block: ResNet blocks per down block (up blocks get one more).
        unshuffle: Pixel-unshuffle factor ``r`` (1: full resolution).
        sample_size: Nominal training size at the network's resolution (informational;
            the network is fully convolutional).
        image_channels: ``C``, 1 for grey images or 3 for RGB.
    """
    if image_channels not in IMAGE_CHANNELS:
        raise ValueError(f"image_channels must be one of {IMAGE_CHANNELS}")
    channels = tuple(int(c) for c in channels)
    groups = max(g for g in range(1, 9) if math.gcd(*channels) % g == 0)
    n = len(channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=image_channels * unshuffle**2,
        out_channels=image_channels * unshuffle**2,
        block_out_channels=channels, layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
        norm_num_groups=groups, add_attention=False,
    )


def predict_noise(unet: UNet2DModel, x_t: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """ε_θ(x_t, τ) for ``(N, C, H, W)`` images of any size, ``C`` = :func:`image_channels`.

    The image is mirror-padded to a multiple of :func:`size_multiple`, folded
    by pixel unshuffle, passed through the UNet and unfolded; the padding is
    cut off again.

    Args:
        unet: The denoiser network.
        x_t: Noisy images ``(N, C, H, W)`` at the network's scale ``√ᾱ (x_0 + σ ε)``.
        tau: Continuous timesteps, shape ``(N,)`` or a scalar.

    Raises:
        ValueError: ``x_t`` does not have the network's ``C`` planes.
    """
    c, r = _channels_and_factor(unet)
    m = size_multiple(unet)
    n, planes, h, w = x_t.shape
    if planes != c:
        raise ValueError(f"this denoiser takes {c}-plane images, not {planes}")
    ph, pw = (-h) % m, (-w) % m
    x = x_t
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    tau = torch.as_tensor(tau, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
    eps = F.pixel_shuffle(unet(F.pixel_unshuffle(x, r), tau).sample, r)
    return eps[:, :, :h, :w]


@torch.no_grad()
def tweedie(unet: UNet2DModel, levels: NoiseLevels, y: torch.Tensor, sigma_model: float | np.ndarray,
            predict: Callable[[UNet2DModel, torch.Tensor, torch.Tensor], torch.Tensor] = predict_noise,
            ) -> torch.Tensor:
    """One-step MMSE denoising by Tweedie's formula (Efron 2011; DDPM eq. 15 solved for x_0).

    For ``y = x_0 + σ ε`` the posterior mean is ``E[x_0 | y] = y + σ² ∇ log p(y)``,
    and a trained ε-network gives the score ``∇ log p(y) ≈ -ε_θ / σ``. With
    ``x_{τ*} = √ᾱ y`` (ᾱ = 1 / (1 + σ²)) this is the familiar::

        x̂_0 = (x_{τ*} - √(1-ᾱ) ε_θ(x_{τ*}, τ*)) / √ᾱ  =  y - σ ε_θ(√ᾱ y, τ*)

    Args:
        unet: The denoiser network.
        levels: The σ ↔ τ map of its schedule.
        y: Noisy images ``(N, C, H, W)`` in model units (``[-1, 1]`` plus noise).
        sigma_model: The noise level σ in model units (``2 σ_255 / 255``), one for all
            images or one per image (shape ``(N,)``).
        predict: Computes ε_θ(x, τ); :func:`predict_noise` unless the caller wraps it
            (precision, locking).

    Returns:
        x̂_0, same shape as ``y`` (not clipped).
    """
    sigmas = np.broadcast_to(np.asarray(sigma_model, dtype=np.float64), (y.shape[0],)).copy()
    if np.all(sigmas <= 0):
        return y.clone()
    s = torch.from_numpy(sigmas).float().view(-1, 1, 1, 1).to(y.device)
    tau = torch.from_numpy(levels.tau(sigmas)).float().to(y.device)
    eps = predict(unet, tweedie_input(y, sigmas), tau)
    return y - s * eps


def tweedie_input(y: torch.Tensor, sigma_model: float | np.ndarray) -> torch.Tensor:
    """``x_{τ*} = √ᾱ y`` with ``√ᾱ = 1 / √(1 + σ²)``: the network's input for ``y = x_0 + σ ε``.

    ``sigma_model`` as for :func:`tweedie`. Multi-step DDIM starts from the same tensor, so
    its first network pass is the one-step pass.
    """
    sigmas = np.broadcast_to(np.asarray(sigma_model, dtype=np.float64), (y.shape[0],)).copy()
    s = torch.from_numpy(sigmas).float().view(-1, 1, 1, 1).to(y.device)
    return y * (1.0 + s**2).rsqrt()
