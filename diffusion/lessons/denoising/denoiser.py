"""Lesson 5: denoise a photo with a diffusion model, side by side with the classics.

A diffusion model is a denoiser trained at every noise level. Given a noisy
photo ``y = x_0 + σ ε`` with known σ it can be used in two ways
(:mod:`diffusion.models.denoiser_net` has the σ ↔ timestep map):

**One step (Tweedie).** ``x̂_0 = y - σ ε_θ(√ᾱ y, τ*)``: the posterior mean
E[x_0 | y], the estimate with the least mean squared error, hence the best PSNR.

**Multi-step (DDIM).** Start the reverse process at ``x_{τ*} = √ᾱ_{τ*} y`` and
run DDIM (Song et al. 2021, eq. 12) down to the clean image::

    x̂_0 = (x_τ - √(1-ᾱ_τ) ε_θ(x_τ, τ)) / √ᾱ_τ                     (predicted x_0, clipped to [-1, 1])
    x_τ' = √ᾱ_τ' x̂_0 + √(1-ᾱ_τ' - s²) ε_θ + s z,   z ~ N(0, I)
    s = η √((1-ᾱ_τ') / (1-ᾱ_τ)) √(1 - ᾱ_τ / ᾱ_τ')

on a grid of timesteps from τ* to -1 (η = 0: deterministic DDIM; η = 1:
DDPM-like). Its first network pass, ε_θ(√ᾱ y, τ*), is exactly the one-step pass: the
denoiser remembers the latest few (:data:`FIRST_PASSES`), so a comparison that runs both
computes it once (``reused_passes`` of the run says so). Each step removes part of the noise and commits to one plausible
clean image. Its details are sharp, but they are a guess: where the guess
differs from the truth the squared error grows, so the PSNR is usually lower
than the one-step average (the perception–distortion trade-off, Blau &
Michaeli 2018).

Colour. The network sees one channel at a time. A colour image is either
split into R, G, B (``color="rgb"``) or first turned into an opponent colour
space (``color="opponent"``): brightness (R+G+B)/3 and two colour
differences (R-B)/2 and (R-2G+B)/4. The three rows are orthogonal, so the
channels keep independent Gaussian noise, with σ/√3, σ/√2 and σ√6/4; each
goes through the network at its own level. ``python -m diffusion.evaluate
denoise-color`` measures both; the default is the better one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion.devices import PRECISIONS, choose_precision
from diffusion.models import registry
from diffusion.reverse import Recorder, StepCallback, StepInfo, StopFlag, Trajectory, should_stop
from diffusion.models.denoiser_net import (
    SIGMA_MAX_255,
    NoiseLevels,
    predict_noise,
    sigma_to_model,
    tweedie,
    tweedie_input,
    unshuffle_factor,
)

COLOR_MODES = ("opponent", "rgb")
# One-step's network pass is also multi-step's first one (same input, same τ*): the denoiser
# remembers the latest such passes, so a comparison that runs both pays for it once.
FIRST_PASSES = 8             # passes remembered at most
FIRST_PASS_BYTES = 64 << 20  # and their ε in bytes at most
DEFAULT_COLOR = "opponent"
# rows of the opponent transform (orthogonal) and the noise scale each row gives i.i.d. noise
_OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0.0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])
_OPPONENT_NOISE = np.sqrt(np.square(_OPPONENT).sum(axis=1))
_OPPONENT_INV = np.linalg.inv(_OPPONENT)


@dataclass(eq=False, kw_only=True)
class MultiStepRun(Trajectory):
    """A multi-step run: the final image, and the path it took (the contract's trajectory).

    The recorded frames are the network's planes (float32, ``(steps, C, 1, H, W)``, the
    colour space of ``color``); the properties below turn them into pictures.

    Attributes:
        image: The result ``(H, W, C)`` on the ``[0, 1]`` scale.
        color: How the planes map to colours (see :func:`to_channels`).
        noisy: The photo the run started from, ``[0, 1]`` scale.
        taus: The timesteps visited, from τ* down to -1 (the first channel's, for colour).
        sigmas_255: The noise left at each visited step, on the 0–255 scale of the input.
        plane_alpha_bar: ᾱ of every plane at each visited τ, ``(len(taus), C)``: in colour each
            opponent plane runs on its own schedule.
    """

    image: np.ndarray
    color: str
    noisy: np.ndarray
    taus: list[float]
    sigmas_255: list[float]
    plane_alpha_bar: np.ndarray | None = None
    reused_passes: int = 0  # network passes taken from the one-step method's (not computed again)

    @functools.cached_property
    def frames(self) -> list[np.ndarray]:
        """``x_τ / √ᾱ_τ`` (the image with its remaining noise) at each visited τ, ``[0, 1]`` scale."""
        inner = []
        for i in range(1, len(self)):
            a = torch.from_numpy(self.plane_alpha_bar[i]).float().view(-1, 1, 1, 1)
            inner.append(from_channels((self.x_t[i] / a.sqrt())[:, 0].double().numpy(), self.color))
        return [self.noisy, *inner, self.image] if len(self) else [self.image]

    @functools.cached_property
    def predictions(self) -> list[np.ndarray]:
        """x̂_0 predicted at each step, ``[0, 1]`` scale."""
        return [from_channels(self.x0_pred[i][:, 0].double().numpy(), self.color) for i in range(len(self))]


def to_channels(image: np.ndarray, color: str) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W, C)`` on ``[0, 1]`` → ``(C, H, W)`` network planes in ``[-1, 1]`` and each plane's noise factor.

    Grey images and ``color="rgb"`` keep their channels (factor 1). ``"opponent"``
    applies the module docstring's transform to the centred image.
    """
    x = image.astype(np.float64) * 2.0 - 1.0
    planes = np.moveaxis(x, -1, 0)
    if image.shape[-1] == 3 and color == "opponent":
        return np.tensordot(_OPPONENT, planes, axes=1), _OPPONENT_NOISE.copy()
    return planes, np.ones(planes.shape[0])


def from_channels(planes: np.ndarray, color: str) -> np.ndarray:
    """Inverse of :func:`to_channels`: ``(C, H, W)`` planes → ``(H, W, C)`` on ``[0, 1]`` (not clipped)."""
    if planes.shape[0] == 3 and color == "opponent":
        planes = np.tensordot(_OPPONENT_INV, planes, axes=1)
    return (np.moveaxis(planes, 0, -1) + 1.0) / 2.0


class DiffusionDenoiser:
    """A trained noise-conditional ε-network with its schedule, used as a denoiser.

    Args:
        unet: The network (see :func:`diffusion.models.denoiser_net.build_denoiser_unet`).
        scheduler_config: Its DDPM scheduler's config (β schedule and T).
        sigma_max_255: The highest noise level it was trained on.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` for the network's
            matrix work (see :func:`choose_precision`); inputs and outputs stay float32.
    """

    def __init__(self, unet: UNet2DModel, scheduler_config: dict, sigma_max_255: float = SIGMA_MAX_255,
                 precision: str = "auto") -> None:
        unshuffle_factor(unet)  # refuses a network that is not a denoiser
        self.precision = choose_precision(unet.device, precision)
        # channels-last weights let oneDNN pick faster convolutions, with the same numbers
        self.unet = unet.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.levels = NoiseLevels.from_scheduler(DDPMScheduler.from_config(scheduler_config))
        self.sigma_max_255 = float(sigma_max_255)
        self._lock = threading.Lock()  # torch modules are not meant for concurrent forwards
        self._first_passes: OrderedDict[bytes, torch.Tensor] = OrderedDict()  # see FIRST_PASSES

    def _eps(self, x: torch.Tensor, tau: torch.Tensor, remember: bool = False) -> tuple[torch.Tensor, bool]:
        """ε_θ(x, τ) under the chosen precision as float32, and whether it was remembered, not computed.

        ``remember``: look the pass up among the latest remembered ones (keyed by the bytes
        of ``x`` and ``τ``) and remember it if it is new; the one-step pass and multi-step's
        first pass ask for this.
        """
        dtype = PRECISIONS[self.precision]
        mixed = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        key = None
        if remember:
            digest = hashlib.blake2b(digest_size=20)
            for part in (x, tau):
                digest.update(str((part.dtype, tuple(part.shape))).encode())
                digest.update(part.detach().contiguous().cpu().numpy().tobytes())
            key = digest.digest()
        with self._lock:
            if key is not None and key in self._first_passes:
                self._first_passes.move_to_end(key)
                return self._first_passes[key].clone(), True
            with mixed:
                eps = predict_noise(self.unet, x, tau).float()
            if key is not None and eps.numel() * 4 <= FIRST_PASS_BYTES:
                self._first_passes[key] = eps.clone()
                while (len(self._first_passes) > FIRST_PASSES
                       or sum(e.numel() * 4 for e in self._first_passes.values()) > FIRST_PASS_BYTES):
                    self._first_passes.popitem(last=False)
            return eps, False

    @classmethod
    def from_folder(cls, path: str | Path, device: torch.device | str = "cpu") -> DiffusionDenoiser:
        """Load ``unet/``, ``scheduler/`` and ``denoiser.json`` of a model folder (safetensors only).

        Raises:
            Exception: whatever diffusers or JSON raise for a missing or corrupt folder.
        """
        path = Path(path)
        unet = UNet2DModel.from_pretrained(path, subfolder="unet", use_safetensors=True, local_files_only=True)
        config = DDPMScheduler.load_config(path, subfolder="scheduler", local_files_only=True)
        meta = json.loads((path / "denoiser.json").read_text())
        return cls(unet.to(torch.device(device)), config, float(meta.get("sigma_max_255", SIGMA_MAX_255)))

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def _planes(self, noisy: np.ndarray, sigma_255: float, color: str) -> tuple[torch.Tensor, np.ndarray]:
        planes, factors = to_channels(noisy, color)
        x = torch.from_numpy(planes).float()[:, None].to(self.device)
        return x, sigma_to_model(sigma_255) * factors

    @torch.inference_mode()
    def one_step(self, noisy: np.ndarray, sigma_255: float, color: str = DEFAULT_COLOR) -> np.ndarray:
        """Tweedie's one-step estimate E[x_0 | y] (see :func:`diffusion.models.denoiser_net.tweedie`).

        Args:
            noisy: ``(H, W, C)`` on the ``[0, 1]`` scale.
            sigma_255: Its noise level on the 0–255 scale (at most ``sigma_max_255``).
            color: ``"opponent"`` or ``"rgb"`` (ignored for grey images).

        Returns:
            ``(H, W, C)`` on the ``[0, 1]`` scale, not clipped.
        """
        if sigma_255 <= 0:
            return noisy.astype(np.float64, copy=True)
        y, sigmas = self._planes(noisy, sigma_255, color)
        x0 = tweedie(self.unet, self.levels, y, sigmas, predict=lambda _, x, tau: self._eps(x, tau, remember=True)[0])
        return from_channels(x0[:, 0].double().cpu().numpy(), color)

    @torch.inference_mode()
    def multi_step(self, noisy: np.ndarray, sigma_255: float, steps: int = 10, eta: float = 0.0,
                   seed: int = 0, color: str = DEFAULT_COLOR, callback: StepCallback | None = None,
                   stop: StopFlag | None = None) -> MultiStepRun:
        """DDIM from τ* to the clean image (module docstring), ``steps`` network calls.

        Follows the run contract of :mod:`diffusion.reverse`: each step is reported to
        ``callback`` (network planes ``(C, 1, H, W)`` on the ``[-1, 1]`` scale) and ``stop``
        is polled after it.

        Args:
            noisy: ``(H, W, C)`` on the ``[0, 1]`` scale.
            sigma_255: Its noise level on the 0–255 scale.
            steps: Number of DDIM steps, on a grid of timesteps evenly spaced from τ* to -1.
            eta: 0 for deterministic DDIM, 1 for DDPM-like fresh noise at each step.
            seed: Seeds the fresh noise when ``eta > 0``.
            color: ``"opponent"`` or ``"rgb"``.
            callback: Called with each step's :class:`~diffusion.reverse.StepInfo`.
            stop: Polled after every step; True ends the run there (``stopped``).
        """
        start = time.perf_counter()
        if sigma_255 <= 0:
            image = noisy.astype(np.float64, copy=True)
            return MultiStepRun(**Recorder(dtype=torch.float32).fields(), seconds=0.0, image=image, color=color,
                                noisy=image, taus=[-1.0], sigmas_255=[0.0])
        y, sigmas = self._planes(noisy, sigma_255, color)
        grid, abars = multi_step_grid(self.levels, sigmas, steps)
        generator = torch.Generator().manual_seed(int(seed))
        x = tweedie_input(y, sigmas)  # √ᾱ_{τ*} y, computed exactly as the one-step method does
        recorder = Recorder(dtype=torch.float32)  # frames become pictures later: keep them exact
        stopped, done, reused = False, 0, 0
        for i in range(steps):
            a_t = torch.from_numpy(abars[i]).float().view(-1, 1, 1, 1).to(self.device)
            a_prev = torch.from_numpy(abars[i + 1]).float().view(-1, 1, 1, 1).to(self.device)
            eps, remembered = self._eps(x, torch.from_numpy(grid[i]).float().to(self.device), remember=i == 0)
            reused += remembered
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise that the clipped x̂_0 implies
            s = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
            x_next = a_prev.sqrt() * x0 + (1 - a_prev - s**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x_next = x_next + s * torch.randn(x.shape, generator=generator).to(self.device)
            info = StepInfo(step=i, total=steps, t=float(grid[i, 0]), alpha_bar=float(abars[i, 0]),
                            x_t=x, x0_pred=x0, eps_pred=eps, x_next=x_next)
            recorder.add(info)
            if callback is not None:
                callback(info)
            x = x_next
            done = i + 1
            if should_stop(stop, done, steps):
                stopped = True
                break
        run = finish_multi_step(recorder, x, y, grid, abars, done, self.levels, sigma_255, color,
                                seconds=time.perf_counter() - start, stopped=stopped, device=str(self.device))
        run.reused_passes = reused
        return run


def multi_step_grid(levels: NoiseLevels, sigmas: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The timesteps from τ* to -1 of each plane, ``(steps + 1, C)``, and their ᾱ."""
    grid = np.linspace(levels.tau(sigmas), -1.0, steps + 1)
    return grid, levels.alpha_bar(grid)


def finish_multi_step(recorder: Recorder, x: torch.Tensor, y: torch.Tensor, grid: np.ndarray, abars: np.ndarray,
                      done: int, levels: NoiseLevels, sigma_255: float, color: str, *, seconds: float,
                      stopped: bool, device: str) -> MultiStepRun:
    """The :class:`MultiStepRun` of a loop that ran ``done`` steps and reached ``x`` (planes, any device)."""
    a_last = torch.from_numpy(abars[done]).float().view(-1, 1, 1, 1).to(x.device)
    image = from_channels((x / a_last.sqrt())[:, 0].double().cpu().numpy(), color)
    remaining = levels.sigma(grid[:done + 1, 0]) / levels.sigma(grid[0, 0])
    return MultiStepRun(**recorder.fields(), seconds=seconds, stopped=stopped, device=device, image=image,
                        color=color, noisy=from_channels(y[:, 0].double().cpu().numpy(), color),
                        taus=grid[:done + 1, 0].tolist(), sigmas_255=(sigma_255 * remaining).tolist(),
                        plane_alpha_bar=abars[:done + 1])


def load_denoiser(device: torch.device | str = "cpu", path: str | Path | None = None) -> DiffusionDenoiser:
    """Lesson 5's denoiser from the registry (loaded once per device and shared), or from ``path``.

    Raises:
        ModelUnavailable: The registered folder is missing, incomplete or corrupt (remembered).
    """
    if path is not None and Path(path) != registry.MODELS[registry.DENOISER].path:
        return DiffusionDenoiser.from_folder(path, device)  # a benchmark's or a test's own folder
    return registry.load(registry.DENOISER, device, lambda folder, dev: DiffusionDenoiser.from_folder(folder, dev))
