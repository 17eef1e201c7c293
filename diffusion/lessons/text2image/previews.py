"""Looking inside a run of lesson 6: latents as pictures, paced VAE previews, and where img2img starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffusion.lessons.text2image.pipeline import make_scheduler, to_uint8


PREVIEW_SHARE = 0.05  # at most ~5 % of a run's time goes into VAE-decoding live previews


class PreviewPacer:
    """Keeps the VAE decoding of live x̂₀ previews to a small share of the run's time.

    The latent preview (:func:`latent_picture`) is nearly free and shown every
    frame; decoding x̂₀ costs a VAE pass, which on a tiny model is as slow as the
    whole denoising step and on Stable Diffusion at 512² is not cheap either. The
    first preview is always decoded; after that a frame is decoded only while the
    decoding time so far stays within ``share`` × the time since the run started,
    so small models decode often and big ones every few seconds, without tuning.
    """

    def __init__(self, share: float = PREVIEW_SHARE, clock: Callable[[], float] = time.perf_counter) -> None:
        self.share, self._clock = share, clock
        self.start, self.spent, self.decoded = clock(), 0.0, 0

    def due(self) -> bool:
        """Whether the next preview may be decoded."""
        return self.spent <= self.share * (self._clock() - self.start)

    def decode(self, decoder: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor) -> np.ndarray:
        """``decoder(latents)`` as a uint8 strip, its time counted."""
        begin = self._clock()
        picture = to_uint8(decoder(latents))
        self.spent += self._clock() - begin
        self.decoded += 1
        return picture


def latent_picture(latents: torch.Tensor) -> np.ndarray:
    """A look inside latent space: the first three channels as RGB, each stretched to its ±3σ range.

    ``(B, C, h, w)`` → one ``(h, B·w, 3)`` uint8 strip.
    """
    z = latents.float()[:, :3]
    if z.shape[1] < 3:
        z = torch.cat([z, z[:, -1:].expand(-1, 3 - z.shape[1], -1, -1)], dim=1)
    spread = z.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    z = (z - z.mean(dim=(0, 2, 3), keepdim=True)) / (3 * spread)
    picture = ((z.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return torch.cat(list(picture), dim=2).permute(1, 2, 0).numpy()


def strength_to_timestep(pipe: Any, scheduler_name: str, num_inference_steps: int, strength: float) -> dict[str, Any]:
    """Where image-to-image starts: the first timestep and its ᾱ, exactly as the img2img pipeline picks them.

    diffusers keeps the last ``int(steps × strength)`` steps of the schedule, so
    the run starts from z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε at that step's t (lesson 2's closed form).
    """
    scheduler = make_scheduler(scheduler_name, pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = (num_inference_steps - kept) * getattr(scheduler, "order", 1)
    if kept == 0:
        return {"steps_run": 0, "t": None, "alpha_bar": None}
    t = float(scheduler.timesteps[start])
    cumprod = pipe.scheduler.alphas_cumprod if hasattr(pipe.scheduler, "alphas_cumprod") else None
    alpha_bar = float(cumprod[int(round(t))]) if cumprod is not None else None
    return {"steps_run": kept, "t": t, "alpha_bar": alpha_bar}
