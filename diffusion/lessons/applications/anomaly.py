"""Lesson 7, anomaly detection: is this picture a digit like the ones the models learnt?

Two scores, higher = more anomalous, each read against the same scores of the 1,000
held-out real digits that neither model was trained on:

**Diffusion score** (the digit DDPM). The per-example diffusion loss, the ELBO's
denoising term (Ho et al. 2020, eq. 14), for each digit class ``c``::

    1. x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε                       (eq. 4) for t ∈ {100, …, 500}, 2 ε each
    2. e_c = mean over (t, ε) and pixels of ‖ε - ε_θ(x_t, t, c)‖²
    3. s   = log e_(1) - λ log(e_(2) - e_(1)),   λ = 0.4

with ``e_(1) ≤ e_(2)`` the two smallest class errors. The first term is how well the best
digit class explains the picture; the second is the confidence of the diffusion model
as a classifier (Li et al. 2023, "Your diffusion model is secretly a zero-shot
classifier"): a real digit fits one class clearly better than all others, a letter or a
scribble fits none of them clearly (the max-softmax signal of Hendrycks & Gimpel 2017).
The ε's are the same seeded draws for every picture and every call (common random
numbers), so a score is deterministic, and all 10 pairs × 10 classes run as one batch of
100 network calls.

Choices, made on development sets only: 1,000 *training* digits as the normal class, and
other fonts, other characters and other seeds than the evaluation's (:mod:`.outliers`).
There the unconditional model's error alone reached at most 0.86 AUROC on letters for any
mix of timesteps, the best class's error 0.87 (t = 100…500), and adding the class margin
with λ = 0.4 (equal weights in standard units: the margin's log spreads 2.5× wider) 0.95,
with CJK characters, shapes and noise at 0.99, 0.95 and 1.00. Timesteps below 100 helped
only shapes; from t = 600 on, noise scored *lower* than digits; one ε per t instead of
two lost up to 0.09 on letters.

Measured afterwards with ``python -m diffusion.evaluate anomaly`` on the 1,000 held-out
digits, the AUROCs are lower (letters 0.82, CJK 0.95, shapes 0.94, noise 0.99, digits
upside down 0.81; the model card of ``assets/models/digit-autoencoder`` has the table):
held-out digits are denoised less well than the training digits the choices were made
on (a held-out digit outscores a training digit with probability 0.62), and printed
letters such as l, I, J, O and S are drawn like digits.

**Autoencoder score**, the classic baseline: the mean squared reconstruction error
``mean (x̂ - x)²`` on the [0, 1] scale of :class:`~diffusion.models.digit_autoencoder.DigitAutoencoder`.

What a student sees for the diffusion score: the best class's reconstruction from the
middle timestep (Tweedie's formula, DDPM eq. 15, ``x̂_0 = (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t``, averaged
over the ε's) and the per-pixel map of ``‖ε - ε̂‖²`` whose mean is ``e_(1)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion import images
from diffusion.datasets.digits import IMAGE_SIZE, NUM_CLASSES, to_model_range
from diffusion.errors import InputError, check_choice, check_range
from diffusion.models import registry

METHODS = ("diffusion", "autoencoder")
MODEL_OF = {"diffusion": "mnist", "autoencoder": registry.AUTOENCODER}
VERDICTS = ("normal", "anomalous")
DEFAULT_FALSE_ALARM = 0.05
FALSE_ALARM_LIMITS = (0.001, 0.5)
REFERENCE_FILE = Path(__file__).resolve().parents[3] / "assets" / "examples" / "anomaly" / "reference_scores.json"
DIGIT_BOX = 20  # MNIST: each digit scaled to fit 20×20, then centred by mass in 28×28
INK_LEVEL = 0.1  # share of the strongest ink that counts when finding the bounding box
MAX_BATCH = 4096


@dataclass(frozen=True)
class DiffusionSettings:
    """How the diffusion score is computed (see the module docstring); t is the lessons' t (τ + 1)."""

    timesteps: tuple[int, ...] = (100, 200, 300, 400, 500)
    draws: int = 2
    seed: int = 0
    margin_weight: float = 0.4
    reconstruction_t: int = 300

    def __post_init__(self) -> None:
        if not self.timesteps or not all(1 <= t <= 1000 for t in self.timesteps) or self.draws < 1:
            raise InputError("anomaly_bad_settings", "Timesteps must be within 1..1000 and draws at least 1.")
        if self.reconstruction_t not in self.timesteps:
            raise InputError("anomaly_bad_settings", "The reconstruction's timestep must be one of the timesteps.")

    def noise(self) -> torch.Tensor:
        """The fixed ε of every (t, draw) pair, ``(len(timesteps) · draws, 1, 28, 28)``, t-major."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((len(self.timesteps) * self.draws, 1, IMAGE_SIZE, IMAGE_SIZE), generator=generator)


DEFAULT_SETTINGS = DiffusionSettings()


@dataclass
class Scores:
    """Anomaly scores of a batch of digits with what explains them (arrays along axis 0).

    Attributes:
        method: ``"diffusion"`` or ``"autoencoder"``.
        scores: ``(N,)``, higher = more anomalous.
        reconstruction: ``(N, 28, 28)`` in [0, 1]: the autoencoder's output, or the diffusion
            model's x̂_0 from ``reconstruction_t`` for the best class.
        error_map: ``(N, 28, 28)``: squared pixel error (autoencoder) or ‖ε - ε̂‖² per pixel
            (diffusion, best class); its mean is the error term of the score.
        class_errors: ``(N, 10)`` e_c per digit class (diffusion only).
        timestep_errors: ``(N, len(timesteps))`` the best class's error at each t (diffusion only).
    """

    method: str
    scores: np.ndarray
    reconstruction: np.ndarray
    error_map: np.ndarray
    class_errors: np.ndarray | None = None
    timestep_errors: np.ndarray | None = None


def prepare_picture(picture: Any) -> np.ndarray:
    """An arbitrary picture → a 28×28 digit in the model's format (LeCun et al. 1998, MNIST).

    1. Decode safely (:func:`diffusion.images.load_image`, grey, long side ≤ 256).
    2. The background is the median of the border; ink is the distance from it,
       ``|g - background|``, scaled so the strongest ink is 1: white-on-black and
       black-on-white pictures (and coloured ones) give white ink on black.
    3. MNIST's framing: the ink's bounding box is scaled to fit 20×20 (aspect kept), then
       placed in 28×28 with its centre of mass at the centre. A real MNIST digit comes
       back practically unchanged (mean |difference| 0.14 of 255 on held-out digits).

    Args:
        picture: uint8 grey ``(H, W)`` / ``(H, W, 1)`` or RGB(A) ``(H, W, 3|4)`` array of
            any size (each side at least 8), or a ``PIL.Image.Image``.

    Returns:
        uint8 ``(28, 28)``, white ink on black.

    Raises:
        InputError: ``image_missing``, ``image_unreadable`` (not an image), ``image_too_small``,
            ``image_too_large``, or ``anomaly_blank`` (nothing drawn).
    """
    if picture is None:
        raise InputError("image_missing", "Please provide an image.")
    if not isinstance(picture, (np.ndarray, Image.Image)):
        raise InputError("image_unreadable", "The image could not be read: {detail}.",
                         detail=f"unsupported input type {type(picture).__name__}")
    grey, _ = images.load_image(picture, max_side=256, mode="L")
    g = (grey[:, :, 0].astype(np.float64) + 1.0) / 2.0
    ink = np.abs(g - np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])))
    if ink.max() <= 1.5 / 255:
        raise InputError("anomaly_blank", "The picture is blank: draw something or pick an example.")
    ink /= ink.max()
    rows, cols = np.flatnonzero((ink > INK_LEVEL).any(axis=1)), np.flatnonzero((ink > INK_LEVEL).any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = DIGIT_BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    box = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    box = np.clip(box, 0.0, 1.0)
    ys, xs = np.mgrid[0:box.shape[0], 0:box.shape[1]]
    mass = max(box.sum(), 1e-12)
    top = int(np.clip(round(IMAGE_SIZE / 2 - (ys * box).sum() / mass), 0, IMAGE_SIZE - box.shape[0]))
    left = int(np.clip(round(IMAGE_SIZE / 2 - (xs * box).sum() / mass), 0, IMAGE_SIZE - box.shape[1]))
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    out[top:top + box.shape[0], left:left + box.shape[1]] = box
    return np.rint(out * 255).astype(np.uint8)


def check_digits(digits: Any) -> np.ndarray:
    """``digits`` as uint8 ``(N, 28, 28)`` (one ``(28, 28)`` digit becomes N = 1), 1 ≤ N ≤ 4096.

    Raises:
        InputError: ``anomaly_bad_digits``.
    """
    array = np.asarray(digits) if isinstance(digits, np.ndarray) else None
    if array is not None and array.ndim == 2:
        array = array[None]
    if (array is None or array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)
            or not 1 <= len(array) <= MAX_BATCH):
        raise InputError("anomaly_bad_digits", "Digits must be a uint8 array of shape (N, 28, 28), "
                         "1 ≤ N ≤ {limit} (prepare other pictures with prepare_picture).", limit=MAX_BATCH)
    return array


@torch.inference_mode()
def diffusion_scores(unet: torch.nn.Module, scheduler_config: Any, digits: np.ndarray,
                     settings: DiffusionSettings = DEFAULT_SETTINGS) -> Scores:
    """The diffusion score of each digit (module docstring, steps 1-3), one network batch per digit.

    Args:
        unet: The class-conditional digit ε-network (lesson 4's model).
        scheduler_config: Its DDPM scheduler config (ᾱ_t).
        digits: uint8 ``(N, 28, 28)`` (or one ``(28, 28)``) in the model's format.
        settings: Timesteps, draws, seed and λ.

    Returns:
        :class:`Scores` with ``class_errors`` and ``timestep_errors``.
    """
    from diffusers import DDPMScheduler

    x0_all = to_model_range(check_digits(digits))
    device = next(unet.parameters()).device
    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
    tau = torch.tensor([t - 1 for t in settings.timesteps for _ in range(settings.draws)])  # diffusers' τ = t - 1
    a = alphas[tau].view(-1, 1, 1, 1).float()
    eps = settings.noise()
    k, c = len(tau), NUM_CLASSES
    labels = torch.arange(c).repeat_interleave(k).to(device)
    middle = [i for i, t in enumerate(tau.tolist()) if t + 1 == settings.reconstruction_t]
    out = {"class": [], "timestep": [], "map": [], "recon": []}
    for x0 in x0_all:
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps                      # 1. q(x_t | x_0), eq. 4
        eps_hat = unet(x_t.repeat(c, 1, 1, 1).to(device), tau.repeat(c).to(device),
                       class_labels=labels).sample.float().cpu().view(c, k, 1, IMAGE_SIZE, IMAGE_SIZE)
        sq = (eps_hat - eps) ** 2                                          # 2. ‖ε - ε_θ(x_t, t, c)‖²
        class_err = sq.mean(dim=(1, 2, 3, 4))
        best = int(class_err.argmin())
        x0_hat = (x_t[middle] - (1 - a[middle]).sqrt() * eps_hat[best, middle]) / a[middle].sqrt()  # eq. 15
        out["class"].append(class_err.numpy())
        out["timestep"].append(sq[best].view(len(settings.timesteps), -1).mean(1).numpy())
        out["map"].append(sq[best].mean(dim=(0, 1)).numpy())
        out["recon"].append(((x0_hat.mean(0)[0].clamp(-1, 1) + 1) / 2).numpy())
    class_errors = np.stack(out["class"]).astype(np.float64)
    ranked = np.sort(class_errors, axis=1)
    margin = np.maximum(ranked[:, 1] - ranked[:, 0], 1e-12)
    scores = np.log(ranked[:, 0]) - settings.margin_weight * np.log(margin)  # 3.
    return Scores("diffusion", scores, np.stack(out["recon"]), np.stack(out["map"]), class_errors,
                  np.stack(out["timestep"]))


@torch.inference_mode()
def autoencoder_scores(model: torch.nn.Module, digits: np.ndarray) -> Scores:
    """The autoencoder score ``mean (x̂ - x)²`` on the [0, 1] scale of each digit.

    Args:
        model: A :class:`~diffusion.models.digit_autoencoder.DigitAutoencoder`.
        digits: uint8 ``(N, 28, 28)`` (or one ``(28, 28)``) in the model's format.

    Returns:
        :class:`Scores` (no class or timestep errors).
    """
    x = to_model_range(check_digits(digits))
    device = next(model.parameters()).device
    x_hat = torch.cat([model(x[i:i + 512].to(device)).float().cpu() for i in range(0, len(x), 512)])
    recon = ((x_hat.clamp(-1, 1) + 1) / 2)[:, 0].numpy().astype(np.float64)
    error = (recon - (x[:, 0].numpy().astype(np.float64) + 1) / 2) ** 2
    return Scores("autoencoder", error.mean(axis=(1, 2)), recon, error)


def compute_scores(method: str, digits: np.ndarray, device: torch.device | str = "cpu") -> Scores:
    """:func:`diffusion_scores` or :func:`autoencoder_scores` with the shipped model (loaded once).

    Raises:
        InputError: ``bad_choice`` for an unknown method; ``model_unavailable`` when its model is.
    """
    method = check_choice("method", method, METHODS)
    if method == "diffusion":
        unet, scheduler_config = registry.load_unet_model("mnist", device)
        return diffusion_scores(unet, scheduler_config, digits)
    return autoencoder_scores(registry.load_autoencoder(device), digits)


def reference_key() -> dict[str, Any]:
    """What the reference scores depend on: the score settings and both models' weight digests."""
    return {"settings": json.loads(json.dumps(asdict(DEFAULT_SETTINGS))),  # as the file holds it: lists
            "weights": {method: registry.weights_digest(model) for method, model in MODEL_OF.items()}}


def reference_scores(method: str, path: Path | None = None) -> np.ndarray:
    """The scores of the 1,000 held-out real digits, ``(1000,)``, as shipped in ``reference_scores.json``.

    ``python -m diffusion.evaluate anomaly --write-reference`` computes and writes them
    (about 100,000 network calls for the diffusion score, minutes on a CPU, hence shipped).

    Raises:
        InputError: ``anomaly_reference_missing``, or ``anomaly_reference_stale`` when the file
            was computed with other settings or other weights than the models here.
    """
    method = check_choice("method", method, METHODS)
    path = Path(path or REFERENCE_FILE)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise InputError("anomaly_reference_missing", "The reference scores of real digits are missing at "
                         "{path}; run python -m diffusion.evaluate anomaly --write-reference.",
                         path=path.name) from None
    key = reference_key()
    if data.get("settings") != key["settings"] or data.get("weights", {}).get(method) != key["weights"][method]:
        raise InputError("anomaly_reference_stale", "The reference scores of real digits were computed with "
                         "another {method} model or other settings; run python -m diffusion.evaluate anomaly "
                         "--write-reference.", method=method)
    return np.asarray(data["heldout"][method], dtype=np.float64)


def threshold_at(reference: np.ndarray, false_alarm_rate: float = DEFAULT_FALSE_ALARM) -> float:
    """The smallest reference score τ with at most ``false_alarm_rate`` of the reference above it.

    A real digit is called anomalous when its score is > τ, so on the reference digits
    the false-alarm rate is at most the one asked for (the (1 - α) quantile, "higher").
    """
    ref = np.sort(_scores_array(reference))
    alpha = check_range("false_alarm_rate", false_alarm_rate, *FALSE_ALARM_LIMITS)
    return float(ref[max(0, math.ceil((1.0 - alpha) * len(ref)) - 1)])


def percentile_of(reference: np.ndarray, score: float) -> float:
    """Percentage of reference scores below ``score``, ties counted half (0 = lowest, 100 = highest)."""
    ref = _scores_array(reference)
    score = float(score)
    return float(100.0 * ((ref < score).sum() + 0.5 * (ref == score).sum()) / len(ref))


def _scores_array(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise InputError("anomaly_bad_scores", "Scores must be a non-empty 1-D array of finite numbers.")
    return array


@dataclass
class AnomalyResult:
    """One picture's verdict with what the tab shows (the JSON summary is :meth:`summary`)."""

    method: str
    score: float
    threshold: float
    false_alarm_rate: float
    is_anomaly: bool
    percentile: float
    verdict: str  # one of VERDICTS; the user interface translates it
    picture: np.ndarray  # uint8 (28, 28): the input as the model sees it
    reconstruction: np.ndarray  # (28, 28) in [0, 1]
    error_map: np.ndarray  # (28, 28)
    reference: np.ndarray  # the held-out real digits' scores, for the histogram
    class_errors: list[float] = field(default_factory=list)  # diffusion: e_c for c = 0..9
    timestep_errors: dict[int, float] = field(default_factory=dict)  # diffusion: best class, by t

    @property
    def best_class(self) -> int | None:
        """The digit class that explains the picture best (diffusion), else None."""
        return int(np.argmin(self.class_errors)) if self.class_errors else None

    def summary(self) -> dict[str, Any]:
        """The API's JSON summary: score (higher = more anomalous), threshold, is_anomaly, percentile, method."""
        return {"method": self.method, "score": round(self.score, 6), "threshold": round(self.threshold, 6),
                "is_anomaly": self.is_anomaly, "percentile": round(self.percentile, 2),
                "false_alarm_rate": self.false_alarm_rate, "verdict": self.verdict,
                "best_class": self.best_class}


def score_picture(picture: Any, method: str = "diffusion", false_alarm_rate: Any = DEFAULT_FALSE_ALARM,
                  device: torch.device | str = "cpu") -> AnomalyResult:
    """Score one picture against the held-out real digits: the ``/anomaly_score`` action.

    Args:
        picture: Any picture :func:`prepare_picture` accepts (canvas, upload, example).
        method: ``"diffusion"`` or ``"autoencoder"``.
        false_alarm_rate: Share of real held-out digits the threshold may call anomalous (0.001-0.5).
        device: Where the model runs.

    Returns:
        An :class:`AnomalyResult`; ``is_anomaly`` is ``score > threshold``.

    Raises:
        InputError: A bad picture, method or rate; a missing model or reference.
    """
    method = check_choice("method", method, METHODS)
    alpha = check_range("false_alarm_rate", false_alarm_rate, *FALSE_ALARM_LIMITS)
    reference = reference_scores(method)
    digit = prepare_picture(picture)
    scores = compute_scores(method, digit, device)
    score, threshold = float(scores.scores[0]), threshold_at(reference, alpha)
    is_anomaly = score > threshold
    result = AnomalyResult(method, score, threshold, alpha, is_anomaly, percentile_of(reference, score),
                           VERDICTS[int(is_anomaly)], digit, scores.reconstruction[0], scores.error_map[0],
                           reference)
    if scores.class_errors is not None:
        result.class_errors = [float(v) for v in scores.class_errors[0]]
        result.timestep_errors = {t: float(v) for t, v in zip(DEFAULT_SETTINGS.timesteps, scores.timestep_errors[0])}
    return result
