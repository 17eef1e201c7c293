"""Lesson 4's network: the class-conditional ε-network of the digit DDPM (Ho et al. 2020).

A diffusers ``UNet2DModel`` on 1-channel 28×28 digits with 11 class embeddings: the
ten digits and :data:`NULL_CLASS`, "no class", the unconditional model that
classifier-free guidance (Ho & Salimans 2022) needs from the same network.
``python -m diffusion.train mnist`` trains it; the shipped folder is
``assets/models/mnist-ddpm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from diffusers import UNet2DModel

from diffusion.datasets.digits import IMAGE_SIZE, NUM_CLASSES
from diffusion.errors import InputError

NULL_CLASS = NUM_CLASSES  # label index 10: "no class", the unconditional model
NUM_CLASS_EMBEDS = NUM_CLASSES + 1


def build_unet(channels: Sequence[int], layers_per_block: int = 1, attention: bool = True,
               sample_size: int = IMAGE_SIZE) -> UNet2DModel:
    """The class-conditional ε-network: a diffusers ``UNet2DModel`` on 1-channel images.

    One down block per entry of ``channels``; all but the last halve the size
    (28 → 14 → 7 for three). With ``attention`` the lowest resolution gets
    self-attention (down, middle and up block), as in DDPM's 16×16 attention.

    Args:
        channels: Feature channels per resolution, e.g. ``(16, 32, 64)``.
        layers_per_block: ResNet blocks per down block (up blocks get one more).
        attention: Self-attention at the lowest resolution.
        sample_size: Image side; must be divisible by ``2 ** (len(channels) - 1)``.

    Returns:
        An untrained model with ``num_class_embeds = 11`` (10 digits + :data:`NULL_CLASS`).

    Raises:
        InputError: ``sample_size`` cannot be halved ``len(channels) - 1`` times.
    """
    channels = tuple(int(c) for c in channels)
    if sample_size % 2 ** (len(channels) - 1):
        raise InputError("bad_channels", "{n} resolutions need an image side divisible by {d}.",
                         n=len(channels), d=2 ** (len(channels) - 1))
    group = math.gcd(*channels)
    groups = max(g for g in range(1, 9) if group % g == 0)
    down = ["DownBlock2D"] * len(channels)
    up = ["UpBlock2D"] * len(channels)
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size, in_channels=1, out_channels=1, block_out_channels=channels,
        layers_per_block=layers_per_block, down_block_types=tuple(down), up_block_types=tuple(up),
        norm_num_groups=groups, num_class_embeds=NUM_CLASS_EMBEDS, add_attention=attention,
        attention_head_dim=min(32, channels[-1]) if attention else None,
    )
