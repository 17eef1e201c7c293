"""Lesson 4: denoise a photo with a diffusion model, side by side with the classics.

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
DDPM-like). Each step removes part of the noise and commits to one plausible
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
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion.models.denoiser_net import (
    SIGMA_MAX_255,
    NoiseLevels,
    predict_noise,
    sigma_to_model,
    tweedie,
    unshuffle_factor,
)

COLOR_MODES = ("opponent", "rgb")
DEFAULT_COLOR = "opponent"
# rows of the opponent transform (orthogonal) and the noise scale each row gives i.i.d. noise
_OPPONENT = np.array([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0.0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])
_OPPONENT_NOISE = np.sqrt(np.square(_OPPONENT).sum(axis=1))
_OPPONENT_INV = np.linalg.inv(_OPPONENT)


@dataclass
class MultiStepRun:
    """A multi-step run: the final image and the path it took.

    Attributes:
        image: The result ``(H, W, C)`` on the ``[0, 1]`` scale.
        taus: The timesteps visited, from τ* down to -1 (the first channel's, for colour).
        sigmas_255: The noise left at each visited step, on the 0–255 scale of the input.
        frames: ``x_τ / √ᾱ_τ`` (the image with its remaining noise) at each visited τ, ``[0, 1]`` scale.
        predictions: x̂_0 predicted at each step, ``[0, 1]`` scale.
    """

    image: np.ndarray
    taus: list[float]
    sigmas_255: list[float]
    frames: list[np.ndarray]
    predictions: list[np.ndarray]


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


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_precision(device: torch.device, precision: str = "auto") -> str:
    """The network's precision: ``auto`` takes bf16 where the hardware computes it natively.

    On a CPU with AVX-512 BF16 or AMX, bf16 convolutions take about half the time of fp32
    and change the denoised image by about 0.002 dB (measured on Set12); elsewhere bf16
    would be emulated and slower, so ``auto`` keeps fp32. On CUDA ``auto`` is fp16.
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}")
        return precision
    if device.type == "cuda":
        return "fp16"
    if device.type == "cpu":
        native = [getattr(torch.cpu, name, lambda: False) for name in
                  ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if any(check() for check in native):
            return "bf16"
    return "fp32"


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
        # channels-last weights let oneDNN pick faster convolutions: ~15% less CPU, same numbers
        self.unet = unet.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.levels = NoiseLevels.from_scheduler(DDPMScheduler.from_config(scheduler_config))
        self.sigma_max_255 = float(sigma_max_255)
        self._lock = threading.Lock()  # torch modules are not meant for concurrent forwards

    def _eps(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """ε_θ(x, τ) under the chosen precision, returned as float32."""
        dtype = PRECISIONS[self.precision]
        mixed = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with self._lock, mixed:
            return predict_noise(self.unet, x, tau).float()

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
        x0 = tweedie(self.unet, self.levels, y, sigmas, predict=lambda _, x, tau: self._eps(x, tau))
        return from_channels(x0[:, 0].double().cpu().numpy(), color)

    @torch.inference_mode()
    def multi_step(self, noisy: np.ndarray, sigma_255: float, steps: int = 10, eta: float = 0.0,
                   seed: int = 0, color: str = DEFAULT_COLOR,
                   on_step: Callable[[int, int], None] | None = None) -> MultiStepRun:
        """DDIM from τ* to the clean image (module docstring), ``steps`` network calls.

        Args:
            noisy: ``(H, W, C)`` on the ``[0, 1]`` scale.
            sigma_255: Its noise level on the 0–255 scale.
            steps: Number of DDIM steps, on a grid of timesteps evenly spaced from τ* to -1.
            eta: 0 for deterministic DDIM, 1 for DDPM-like fresh noise at each step.
            seed: Seeds the fresh noise when ``eta > 0``.
            color: ``"opponent"`` or ``"rgb"``.
            on_step: Called as ``on_step(i, steps)`` after step ``i`` (1-based); it may raise to stop the run.
        """
        if sigma_255 <= 0:
            image = noisy.astype(np.float64, copy=True)
            return MultiStepRun(image, [-1.0], [0.0], [image], [image])
        y, sigmas = self._planes(noisy, sigma_255, color)
        tau_star = self.levels.tau(sigmas)  # (C,)
        grid = np.linspace(tau_star, -1.0, steps + 1)  # (steps + 1, C)
        abars = self.levels.alpha_bar(grid)
        generator = torch.Generator().manual_seed(int(seed))
        x = y * torch.from_numpy(np.sqrt(abars[0])).float().view(-1, 1, 1, 1).to(self.device)
        frames, predictions = [from_channels(y[:, 0].double().cpu().numpy(), color)], []
        for i in range(steps):
            a_t = torch.from_numpy(abars[i]).float().view(-1, 1, 1, 1).to(self.device)
            a_prev = torch.from_numpy(abars[i + 1]).float().view(-1, 1, 1, 1).to(self.device)
            eps = self._eps(x, torch.from_numpy(grid[i]).float().to(self.device))
            x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1.0, 1.0)
            eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()  # the noise that the clipped x̂_0 implies
            s = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev - s**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + s * torch.randn(x.shape, generator=generator).to(self.device)
            predictions.append(from_channels(x0[:, 0].double().cpu().numpy(), color))
            frames.append(from_channels((x / a_prev.sqrt())[:, 0].double().cpu().numpy(), color))
            if on_step is not None:
                on_step(i + 1, steps)
        remaining = self.levels.sigma(grid[:, 0]) / self.levels.sigma(grid[0, 0])
        return MultiStepRun(frames[-1], grid[:, 0].tolist(), (sigma_255 * remaining).tolist(), frames, predictions)


# --- the side-by-side comparison -------------------------------------------------------------

METHODS = ("diffusion_one_step", "diffusion_multi_step", "gaussian_heat", "total_variation", "nl_means", "bm3d")
DIFFUSION_METHODS = METHODS[:2]


@dataclass
class MethodResult:
    """One method's output, scored.

    Attributes:
        name: A key of :data:`METHODS`.
        image: The returned image, uint8 ``(H, W, C)``: the very pixels PSNR and SSIM were computed on.
        seconds: Wall-clock time of the method.
        cpu_seconds: CPU time of the whole process during the method (all threads).
        psnr: PSNR in dB against the clean image, or None when it is unknown.
        ssim: SSIM against the clean image, or None.
        details: Method parameters worth showing (blur and diffusion time, steps, t*…).
        run: The multi-step path (for ``diffusion_multi_step``).
    """

    name: str
    image: np.ndarray
    seconds: float
    cpu_seconds: float
    psnr: float | None = None
    ssim: float | None = None
    details: dict | None = None
    run: MultiStepRun | None = None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats → uint8, clipped and rounded (what a saved PNG holds)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def add_noise(clean: np.ndarray, sigma_255: float, seed: int, quantise: bool = True) -> np.ndarray:
    """``clean + σ ε`` with ε ~ N(0, I) from a seeded generator, on the ``[0, 1]`` scale.

    Args:
        clean: uint8 ``(H, W, C)``.
        sigma_255: Noise standard deviation on the 0–255 scale.
        seed: Seed of ``numpy.random.default_rng``: the same seed gives the same noise.
        quantise: Clip and round to 8 bits, as a saved noisy photo would be. The
            benchmark protocol (:mod:`diffusion.evaluate.mnist`) keeps the raw floats.
    """
    rng = np.random.default_rng(int(seed))
    noisy = clean.astype(np.float64) + sigma_255 * rng.standard_normal(clean.shape)
    if quantise:
        noisy = np.clip(np.rint(noisy), 0, 255)
    return noisy / 255.0


def score(image: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of a uint8 image against the uint8 clean one (scikit-image, data range 255).

    SSIM is scikit-image's default (7×7 uniform window), averaged over channels for colour.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = peak_signal_noise_ratio(clean, image, data_range=255)
    if clean.shape[-1] == 1:
        ssim = structural_similarity(clean[:, :, 0], image[:, :, 0], data_range=255)
    else:
        ssim = structural_similarity(clean, image, data_range=255, channel_axis=-1)
    return float(psnr), float(ssim)


def run_method(name: str, noisy: np.ndarray, sigma_255: float, *, clean: np.ndarray | None = None,
               denoiser: DiffusionDenoiser | None = None, steps: int = 10, eta: float = 0.0, seed: int = 0,
               color: str = DEFAULT_COLOR, on_step: Callable[[int, int], None] | None = None) -> MethodResult:
    """Run one method on ``noisy`` (``[0, 1]`` scale) at noise level ``sigma_255`` and score it.

    Args:
        name: A key of :data:`METHODS`; the diffusion methods need ``denoiser``.
        clean: The uint8 clean image when known, for PSNR and SSIM.
        steps, eta, seed: Multi-step settings (see :meth:`DiffusionDenoiser.multi_step`).
        color: Colour handling of the diffusion methods.
        on_step: Progress callback of the multi-step method (see :meth:`DiffusionDenoiser.multi_step`).
    """
    from diffusion.lessons.denoising import classical  # scikit-image is slow to import

    if name in DIFFUSION_METHODS and denoiser is None:
        raise ValueError(f"{name} needs a trained denoiser")
    details: dict = {}
    run = None
    wall, cpu = time.perf_counter(), time.process_time()
    if name in DIFFUSION_METHODS:
        # t* on the lessons' scale (t = τ + 1, t = 0 is clean) for the image's σ; in colour
        # each opponent plane starts at its own, lower level.
        details = {"t_star": round(float(denoiser.levels.tau(sigma_to_model(sigma_255))) + 1.0, 2)}
    if name == "diffusion_one_step":
        out = denoiser.one_step(noisy, sigma_255, color)
    elif name == "diffusion_multi_step":
        run = denoiser.multi_step(noisy, sigma_255, steps=steps, eta=eta, seed=seed, color=color, on_step=on_step)
        out = run.image
        details.update(steps=steps, eta=eta)
    elif name == "gaussian_heat":
        std, diffusion_time = classical.heat_time(sigma_255)
        out = classical.gaussian_heat(noisy, sigma_255)
        details = {"blur_std_px": round(std, 3), "diffusion_time_px2": round(diffusion_time, 3)}
    elif name == "total_variation":
        out = classical.total_variation(noisy, sigma_255)
    elif name == "nl_means":
        out = classical.nl_means(noisy, sigma_255)
    elif name == "bm3d":
        out = classical.bm3d(noisy, sigma_255)
    else:
        raise ValueError(f"unknown method {name!r}")
    image = to_uint8(out)
    result = MethodResult(name, image, time.perf_counter() - wall, time.process_time() - cpu,
                          details=details, run=run)
    if clean is not None:
        result.psnr, result.ssim = score(image, clean)
    return result


def summary(sigma_255: float, sigma_estimated: float | None, results: list[MethodResult],
            noisy: MethodResult | None = None) -> dict:
    """The JSON summary: ``sigma``, ``sigma_estimated`` and ``methods: {name: {psnr, ssim, seconds}}``."""
    def entry(r: MethodResult) -> dict:
        return {"psnr": None if r.psnr is None else round(r.psnr, 3),
                "ssim": None if r.ssim is None else round(r.ssim, 4),
                "seconds": round(r.seconds, 3), **(r.details or {})}

    out = {"sigma": round(float(sigma_255), 3),
           "sigma_estimated": None if sigma_estimated is None else round(float(sigma_estimated), 3),
           "methods": {r.name: entry(r) for r in results}}
    if noisy is not None:
        out["noisy"] = {"psnr": noisy.psnr and round(noisy.psnr, 3), "ssim": noisy.ssim and round(noisy.ssim, 4)}
    return out
