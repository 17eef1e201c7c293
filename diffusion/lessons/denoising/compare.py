"""Lesson 5's comparison: every method on the same noisy photo, scored against the clean one.

The methods are our diffusion denoiser in one step (Tweedie) and in many (DDIM), and the
classics (:mod:`~diffusion.lessons.denoising.classical`): Gaussian blur (the heat equation of
lesson 1), total variation, non-local means and BM3D. PSNR and SSIM come from scikit-image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from diffusion.lessons.denoising.denoiser import DEFAULT_COLOR, DiffusionDenoiser, MultiStepRun
from diffusion.models.denoiser_net import sigma_to_model
from diffusion.reverse import StepCallback, StepInfo, StopFlag

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
               color: str = DEFAULT_COLOR, callback: StepCallback | None = None,
               stop: StopFlag | None = None) -> MethodResult:
    """Run one method on ``noisy`` (``[0, 1]`` scale) at noise level ``sigma_255`` and score it.

    Args:
        name: A key of :data:`METHODS`; the diffusion methods need ``denoiser``.
        clean: The uint8 clean image when known, for PSNR and SSIM.
        steps, eta, seed: Multi-step settings (see :meth:`DiffusionDenoiser.multi_step`).
        color: Colour handling of the diffusion methods.
        callback, stop: The run contract of the multi-step method (see :meth:`DiffusionDenoiser.multi_step`);
            the other methods have no steps to report or stop between.
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
        run = denoiser.multi_step(noisy, sigma_255, steps=steps, eta=eta, seed=seed, color=color,
                                 callback=callback, stop=stop)
        out = run.image
        details.update(steps=steps, eta=eta, reused_passes=run.reused_passes)
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
            noisy: MethodResult | None = None, sigma_stderr: float | None = None) -> dict:
    """The JSON summary: ``sigma``, ``sigma_estimated``, ``sigma_stderr`` and ``methods: {name: {psnr, ssim, seconds}}``."""
    def entry(r: MethodResult) -> dict:
        return {"psnr": None if r.psnr is None else round(r.psnr, 3),
                "ssim": None if r.ssim is None else round(r.ssim, 4),
                "seconds": round(r.seconds, 3), **(r.details or {})}

    out = {"sigma": round(float(sigma_255), 3),
           "sigma_estimated": None if sigma_estimated is None else round(float(sigma_estimated), 3),
           "sigma_stderr": None if sigma_stderr is None else round(float(sigma_stderr), 3),
           "methods": {r.name: entry(r) for r in results}}
    if noisy is not None:
        out["noisy"] = {"psnr": noisy.psnr and round(noisy.psnr, 3), "ssim": noisy.ssim and round(noisy.ssim, 4)}
    return out


@dataclass
class Progress:
    """How far a comparison is: reported to the run contract's callback before and during each method.

    Attributes:
        step: A counter that grows with every report (the streaming side shows the newest).
        method: The index of the method running now (``len(done)`` of the methods asked for).
        inner: The running method's own step (the multi-step method reports its DDIM steps), or None.
        done: The methods finished so far.
    """

    step: int
    method: int
    inner: StepInfo | None
    done: list[MethodResult]


@dataclass
class Comparison:
    """Every asked method's result on one noisy photo (fewer when it was stopped)."""

    results: list[MethodResult]
    stopped: bool

    @property
    def nbytes(self) -> int:
        return sum(r.image.nbytes + (r.run.nbytes if r.run is not None else 0) for r in self.results)

    def __len__(self) -> int:
        return len(self.results)


def compare_methods(methods: list[str], noisy: np.ndarray, sigma_255: float, *, clean: np.ndarray | None = None,
                    denoiser: DiffusionDenoiser | None = None, steps: int = 10, eta: float = 0.0, seed: int = 0,
                    color: str = DEFAULT_COLOR, callback: StepCallback | None = None,
                    stop: StopFlag | None = None) -> Comparison:
    """:func:`run_method` for each of ``methods`` in turn, under the run contract.

    ``callback`` gets a :class:`Progress` before each method and at each multi-step step;
    ``stop`` is polled between methods and by the multi-step method after each step.
    """
    results: list[MethodResult] = []
    counter = iter(range(1 << 62))

    def report(inner: StepInfo | None = None) -> None:
        if callback is not None:
            callback(Progress(next(counter), len(results), inner, list(results)))

    for method in methods:
        if stop is not None and stop():
            return Comparison(results, stopped=True)
        report()
        results.append(run_method(method, noisy, sigma_255, clean=clean, denoiser=denoiser, steps=steps, eta=eta,
                                  seed=seed, color=color, callback=report, stop=stop))
    return Comparison(results, stopped=stop is not None and bool(stop()))  # a stopped multi-step run is partial
