"""Lesson 7's baseline for anomaly detection: a small convolutional autoencoder of 28×28 digits.

The classic recipe for spotting pictures unlike the training data (Sakurada & Yairi 2014;
Goodfellow et al. 2016, ch. 14): squeeze each image through a narrow code and rebuild it.
Digits like the training ones are rebuilt well; anything else is rebuilt as the nearest
digit-like picture, so its reconstruction error ``‖x̂ - x‖²`` is large.

Architecture (``channels = (c1, c2)``, ``latent_dim = d``)::

    encoder  1×28×28 ─conv3 s2→ c1×14×14 ─conv3 s2→ c2×7×7 ─linear→ d
    decoder  d ─linear→ c2×7×7 ─deconv4 s2→ c1×14×14 ─deconv4 s2→ 1×28×28 ─tanh

with SiLU between layers. Images are on the ``[-1, 1]`` scale of the digit DDPM
(``diffusion.datasets.digits.to_model_range``), so the two methods read the same input.
It is a diffusers ``ModelMixin`` + ``ConfigMixin``: ``save_pretrained`` writes
``config.json`` and ``diffusion_pytorch_model.safetensors``, and
``DigitAutoencoder.from_pretrained(folder, use_safetensors=True)`` loads it back.
``python -m diffusion.train autoencoder`` trains it; the shipped folder is
``assets/models/digit-autoencoder``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

from diffusion.datasets.digits import IMAGE_SIZE
from diffusion.errors import InputError, check_range

LATENT_LIMITS = (2, 256)
CHANNEL_LIMITS = (4, 128)


class DigitAutoencoder(ModelMixin, ConfigMixin):
    """Conv encoder → ``latent_dim`` code → deconv decoder, on 1×28×28 images in ``[-1, 1]``.

    Args:
        channels: Feature channels at 14×14 and 7×7, e.g. ``(16, 32)``.
        latent_dim: Size of the code.
        image_size: Image side; must be 28 (the decoder's shapes are fixed to it).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, channels: Sequence[int] = (16, 32), latent_dim: int = 16,
                 image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        c1, c2 = _check_channels(channels)
        latent_dim = int(check_range("latent_dim", latent_dim, *LATENT_LIMITS, integer=True))
        if image_size != IMAGE_SIZE:
            raise InputError("bad_image_size", "The digit autoencoder works on {size}×{size} images.",
                             size=IMAGE_SIZE)
        side = IMAGE_SIZE // 4
        self._hidden = (c2, side, side)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, stride=2, padding=1), nn.SiLU(),    # 28 → 14
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.SiLU(),   # 14 → 7
            nn.Flatten(), nn.Linear(c2 * side * side, latent_dim),
        )
        self.decoder_in = nn.Sequential(nn.Linear(latent_dim, c2 * side * side), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),  # 7 → 14
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1), nn.Tanh(),   # 14 → 28
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code ``(B, latent_dim)`` of images ``(B, 1, 28, 28)`` on the ``[-1, 1]`` scale."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 1, 28, 28)`` in ``[-1, 1]`` rebuilt from codes ``(B, latent_dim)``."""
        return self.decoder(self.decoder_in(z).view(z.shape[0], *self._hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction x̂ = decode(encode(x)), same shape as ``x``."""
        return self.decode(self.encode(x))


def _check_channels(channels: Sequence[int]) -> tuple[int, int]:
    try:
        widths = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        raise InputError("bad_channels", "channels must be two whole numbers.") from None
    if len(widths) != 2 or not all(CHANNEL_LIMITS[0] <= c <= CHANNEL_LIMITS[1] for c in widths):
        raise InputError("bad_channels", "channels must be two numbers, each {lo}..{hi}.",
                         lo=CHANNEL_LIMITS[0], hi=CHANNEL_LIMITS[1])
    return widths


def build_autoencoder(channels: Sequence[int] = (16, 32), latent_dim: int = 16) -> DigitAutoencoder:
    """An untrained :class:`DigitAutoencoder` (weights from torch's global generator: seed it first).

    Args:
        channels: Feature channels at 14×14 and 7×7.
        latent_dim: Size of the code (2..256).

    Raises:
        InputError: ``bad_channels`` or ``out_of_range``.
    """
    return DigitAutoencoder(channels=tuple(_check_channels(channels)), latent_dim=latent_dim)
