"""Lesson 7, section 2: generated digits as training data, and a labelled data set to download.

Two uses of lesson 4's class-conditional digit model:

1. **Export.** :func:`generate_dataset` samples ``per_class`` digits of each chosen class
   with lesson 4's own sampler (:func:`diffusion.lessons.sampling.sample`, classifier-free
   guidance of Ho & Salimans 2022, eq. 6, DDIM-20 by default, Song et al. 2021 eq. 12), and
   :func:`to_zip` packs them as PNG files plus ``labels.csv`` for a student's notebook.
2. **Experiment.** :func:`run_experiment` trains the small CNN of
   :mod:`~diffusion.lessons.applications.classifier` twice, identically: on k real digits
   per class, and on the same k plus ``n_synthetic`` generated digits per class. Both are
   scored on the 1,000 held-out digits of the model's split, which neither the diffusion
   model nor either classifier ever trained on.

What the numbers mean. The diffusion model was trained on all 4,000 labelled digits of the
training part. A classifier that learns from its samples therefore learns, indirectly, from
those 4,000 digits, not from k per class alone: generated data transfers what the generator
knows. The held-out test stays honest (nobody trained on it); the question the experiment
answers is how much of that knowledge a classifier can get back from samples.

Determinism. Each class c of an export is one batch of ``sample`` with the seed
:func:`class_seed` ``(seed, c)``, so the 7s of a request are the same whichever other
classes are asked for. The experiment's generated digits are exactly the export with the
same seed and guidance, its real digits come from a seeded ``numpy.random.Generator``
(the first k of a per-class permutation, so k = 5 ⊂ k = 10 ⊂ k = 50 for one seed), and
the classifiers' weights and batches from seeded ``torch.Generator`` s.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion.datasets import digits as data
from diffusion.devices import choose_precision
from diffusion.errors import InputError, check_choice, check_range
from diffusion.lessons.applications.classifier import (
    Curve, DigitSplit, Progress, ProgressCallback, TrainSettings, arm_seeds, arm_tensors, model_split, pick_real,
    train_arms,
)
from diffusion.lessons.sampling import LIMITS, SAMPLERS, SampleRequest, sample
from diffusion.reverse import StepInfo, StopFlag

ALL_DIGITS = "".join(str(c) for c in range(data.NUM_CLASSES))
MAX_PER_CLASS = 100              # the export's cap per class (the UI's slider)
MAX_EXPORT_EVALS = 100_000       # network image-evaluations per export: ~2 min on one CPU thread
K_CHOICES = (5, 10, 50)          # the in-tab choices of real digits per class
MAX_K_REAL = 100                 # the training part has 400 digits of each class
MAX_SYNTHETIC_TAB = 50           # generated digits per class in the tab: the whole run ≲ 30 s on one thread
MAX_SYNTHETIC = MAX_PER_CLASS    # offline tools (python -m diffusion.evaluate augment)
_DEFAULT, _PURPOSE_CLASS = SampleRequest(), 1  # the app's sampler defaults (DDIM-20, guidance 1.5); a seed stream


def parse_digits(value: Any) -> str:
    """The classes of a request, ``"0123456789"`` style, in ascending order.

    Args:
        value: A string of distinct characters 0-9 (spaces and commas are ignored), or a
            list of such digits.

    Raises:
        InputError: ``bad_digits`` when it is empty, repeats a digit or holds anything else.
    """
    if isinstance(value, (list, tuple)):
        value = "".join(str(v) for v in value)
    text = value.replace(",", "").replace(" ", "") if isinstance(value, str) else None
    if not text or len(text) > data.NUM_CLASSES or any(ch not in ALL_DIGITS for ch in text) \
            or len(set(text)) != len(text):
        raise InputError("bad_digits", "digits must be distinct characters 0-9, e.g. 0123456789 (got {value}).",
                         value=str(value)[:40])
    return "".join(sorted(text))


@dataclass(frozen=True)
class ExportRequest:
    """A generated, labelled data set to download. Call :meth:`validated` before use."""

    digits: str = ALL_DIGITS
    per_class: int = 10
    guidance_scale: float = _DEFAULT.guidance_scale
    sampler: str = _DEFAULT.sampler
    num_inference_steps: int = _DEFAULT.num_inference_steps
    seed: int = 0

    def validated(self, num_train_timesteps: int, max_per_class: int = MAX_PER_CLASS) -> ExportRequest:
        """A checked copy with plain Python types and the digits in ascending order.

        Args:
            num_train_timesteps: T of the model's scheduler; at most T sampler steps.
            max_per_class: The cap on ``per_class``.

        Raises:
            InputError: ``bad_digits``, ``bad_choice`` (sampler), ``not_a_number`` /
                ``not_an_integer`` / ``out_of_range`` naming the field, or ``export_too_big``
                when the export would take more than :data:`MAX_EXPORT_EVALS` network evaluations.
        """
        big_t = int(check_range("num_train_timesteps", num_train_timesteps, 1, 100_000, integer=True))
        request = ExportRequest(
            digits=parse_digits(self.digits),
            per_class=int(check_range("per_class", self.per_class, 1, max_per_class, integer=True)),
            guidance_scale=float(check_range("guidance_scale", self.guidance_scale, *LIMITS["guidance_scale"])),
            sampler=check_choice("sampler", self.sampler, tuple(SAMPLERS)),
            num_inference_steps=int(check_range("num_inference_steps", self.num_inference_steps, 1, big_t,
                                                integer=True)),
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)))
        count = len(request.digits) * request.per_class
        # ε-network image-evaluations: digits × steps × (2 with guidance, else 1).
        evaluations = count * request.num_inference_steps * (1 if request.guidance_scale in (0.0, 1.0) else 2)
        if evaluations > MAX_EXPORT_EVALS:
            raise InputError("export_too_big", "{count} digits with {steps} steps are too much work for one "
                             "export; use fewer digits or steps (at most {cap} digit-steps with guidance).",
                             count=count, steps=request.num_inference_steps, cap=MAX_EXPORT_EVALS // 2)
        return request


@dataclass(eq=False)
class GeneratedSet:
    """Generated digits with their classes, as the exported PNGs hold them.

    ``stopped``: the run was stopped, and only the classes finished before that are kept.
    """

    images: np.ndarray         # uint8 (N, 28, 28), white on black like MNIST
    labels: np.ndarray         # int64 (N,), grouped by class in ascending order
    seconds: float             # wall time of the sampling
    request: ExportRequest     # validated
    stopped: bool = False
    precision: str = "fp32"    # the network's arithmetic (diffusion.devices.choose_precision)

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers: count, classes, settings, seconds."""
        r = self.request
        return {"count": int(len(self.labels)), "digits": r.digits, "per_class": r.per_class,
                "guidance_scale": r.guidance_scale, "sampler": r.sampler,
                "num_inference_steps": r.num_inference_steps, "seed": r.seed, "precision": self.precision,
                "stopped": bool(self.stopped), "seconds": round(float(self.seconds), 3)}


def class_seed(seed: int, digit: int) -> int:
    """The sampler seed of class ``digit`` in a request seeded ``seed`` (a 32-bit word of a SeedSequence)."""
    return int(np.random.SeedSequence([int(seed), _PURPOSE_CLASS, int(digit)]).generate_state(1)[0])


def generate_dataset(unet: torch.nn.Module, scheduler_config: Any, request: ExportRequest, *,
                     stop: StopFlag | None = None, progress: ProgressCallback | None = None,
                     precision: str = "auto") -> GeneratedSet:
    """``per_class`` digits of each requested class from lesson 4's sampler, one batch per class.

    Each batch is :func:`~diffusion.lessons.sampling.sample` with the class as ``labels``,
    η = 0 and the seed :func:`class_seed`, followed by rounding to 8 bits
    (:func:`diffusion.datasets.digits.from_model_range`), the PNGs' own pixels.

    Args:
        unet: The class-conditional ε-network, on its device.
        scheduler_config: The model's scheduler config.
        request: What to generate; validated here.
        stop: Polled after every sampler step; a class cut short is dropped.
        progress: Called after every sampler step with phase ``"generate"``.
        precision: ``"auto"`` (bf16 where the CPU computes it natively, fp16 on CUDA), or
            ``"fp32"`` / ``"bf16"`` / ``"fp16"``.

    Returns:
        A :class:`GeneratedSet`.

    Raises:
        InputError: For a bad request.
    """
    request = request.validated(scheduler_config["num_train_timesteps"])
    device = getattr(unet, "device", torch.device("cpu"))
    precision = choose_precision(device, precision)
    steps, total = request.num_inference_steps, len(request.digits) * request.num_inference_steps
    images, labels, seconds, stopped = [], [], 0.0, False
    for position, char in enumerate(request.digits):
        digit = int(char)
        sample_request = SampleRequest(sampler=request.sampler, num_inference_steps=steps, eta=0.0,
                                       seed=class_seed(request.seed, digit), batch_size=request.per_class,
                                       digit=char, guidance_scale=request.guidance_scale)

        def report(info: StepInfo, before: int = position * steps) -> None:
            if progress is not None:
                progress(Progress("generate", before + info.step + 1, total))

        run = sample(unet, scheduler_config, sample_request, device=device, callback=report, stop=stop,
                     record=False, labels=torch.full((request.per_class,), digit, dtype=torch.long),
                     max_batch_size=request.per_class, precision=precision)
        seconds += run.seconds
        if run.stopped:
            stopped = True
            break
        images.append(data.from_model_range(run.samples))
        labels.append(np.full(request.per_class, digit, dtype=np.int64))
    empty = np.zeros((0, data.IMAGE_SIZE, data.IMAGE_SIZE), dtype=np.uint8)
    return GeneratedSet(images=np.concatenate(images) if images else empty,
                        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
                        seconds=seconds, request=request, stopped=stopped, precision=precision)


def export_filename(request: ExportRequest) -> str:
    """A download name that records the settings, e.g. ``digits-0123456789-x10-ddim20-s1.5-seed0.zip``."""
    r = request
    return f"digits-{r.digits}-x{r.per_class}-{r.sampler}{r.num_inference_steps}-s{r.guidance_scale:g}-seed{r.seed}.zip"


def _write(archive: zipfile.ZipFile, name: str, payload: bytes, compression: int) -> None:
    # A fixed timestamp, system and mode: the same digits always give the same bytes.
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type, info.create_system, info.external_attr = compression, 3, 0o644 << 16
    archive.writestr(info, payload)


def to_zip(generated: GeneratedSet) -> bytes:
    """The set as a zip: one grey 28×28 PNG per digit (``00042_7.png``: index, class) and ``labels.csv``.

    ``labels.csv`` has the header ``file,label`` and one row per PNG, in index order. The
    bytes depend only on the pixels and labels (fixed timestamps), so one request always
    downloads the same file.

    Raises:
        ValueError: ``generated`` does not hold uint8 ``(N, 28, 28)`` images with N labels in 0..9.
    """
    images, labels = np.asarray(generated.images), np.asarray(generated.labels)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (data.IMAGE_SIZE,) * 2 \
            or labels.shape != (len(images),) or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
        raise ValueError("a generated set holds uint8 (N, 28, 28) images and N labels in 0..9")
    names = [f"{i:05d}_{int(label)}.png" for i, label in enumerate(labels)]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["file", "label"])
    writer.writerows([name, int(label)] for name, label in zip(names, labels))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _write(archive, "labels.csv", rows.getvalue().encode("utf-8"), zipfile.ZIP_DEFLATED)
        for name, image in zip(names, images):
            png = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(image)).save(png, format="PNG")
            _write(archive, name, png.getvalue(), zipfile.ZIP_STORED)  # PNG is compressed already
    return buffer.getvalue()


@dataclass(frozen=True)
class ExperimentRequest:
    """The in-tab experiment: k real digits per class, with and without generated ones.

    Attributes:
        k_real: Real digits per class from the model's training part (the tab offers
            :data:`K_CHOICES`; any 1..:data:`MAX_K_REAL` is accepted).
        n_synthetic: Generated digits per class added in the second arm (0 = none).
        seed: Seeds the real picks, the generated digits and both classifiers.
        guidance_scale: Guidance of the generated digits: 1 made better training data than 1.5
            (``evaluate augment``: +1.7 to +2.8 points at k = 5, 10 with 50-100 per class).
    """

    k_real: int = 5
    n_synthetic: int = 20
    seed: int = 0
    guidance_scale: float = 1.0

    def validated(self, max_synthetic: int = MAX_SYNTHETIC_TAB) -> ExperimentRequest:
        """A checked copy with plain Python types.

        Args:
            max_synthetic: The cap on ``n_synthetic``: :data:`MAX_SYNTHETIC_TAB` for the app,
                up to :data:`MAX_SYNTHETIC` for offline tools.

        Raises:
            InputError: ``not_a_number`` / ``not_an_integer`` / ``out_of_range`` naming the field.
        """
        cap = int(min(max_synthetic, MAX_SYNTHETIC))
        return ExperimentRequest(
            k_real=int(check_range("k_real", self.k_real, 1, MAX_K_REAL, integer=True)),
            n_synthetic=int(check_range("n_synthetic", self.n_synthetic, 0, cap, integer=True)),
            seed=int(check_range("seed", self.seed, *LIMITS["seed"], integer=True)),
            guidance_scale=float(check_range("guidance_scale", self.guidance_scale, *LIMITS["guidance_scale"])))

    def export_request(self) -> ExportRequest:
        """The export that produces exactly this experiment's generated digits."""
        return ExportRequest(digits=ALL_DIGITS, per_class=max(1, self.n_synthetic),
                             guidance_scale=self.guidance_scale, seed=self.seed)


@dataclass(eq=False)
class ExperimentResult:
    """Both arms of one experiment.

    ``with_synthetic`` is the same curve as ``real_only`` when ``n_synthetic`` is 0 (the two
    arms are then identical). A stopped run keeps the rounds that were run.
    """

    request: ExperimentRequest     # validated
    real_indices: np.ndarray       # k per class, indices into model_split().images, all in its training part
    real_only: Curve               # the classifier trained on the real digits only
    with_synthetic: Curve          # the classifier trained on the real + generated digits
    settings: TrainSettings        # how both arms were trained
    generate_seconds: float = 0.0  # sampling the generated digits
    train_seconds: float = 0.0     # training and scoring both arms
    stopped: bool = False
    precision: str = "fp32"        # the sampler's arithmetic
    heldout_size: int = 0          # digits scored on
    synthetic: GeneratedSet | None = field(default=None, repr=False)

    @property
    def accuracy_real_only(self) -> float:
        """Held-out accuracy of the real-only classifier after its last round."""
        return self.real_only.final_accuracy

    @property
    def accuracy_with_synthetic(self) -> float:
        """Held-out accuracy of the classifier with generated digits after its last round."""
        return self.with_synthetic.final_accuracy

    @property
    def seconds(self) -> float:
        """Wall time of the whole experiment."""
        return self.generate_seconds + self.train_seconds

    def summary(self) -> dict[str, Any]:
        """JSON-safe key numbers (non-finite accuracies become ``None``)."""
        def number(value: float) -> float | None:
            return round(value, 4) if math.isfinite(value) else None

        r = self.request
        gain = self.accuracy_with_synthetic - self.accuracy_real_only
        return {"k_real": r.k_real, "n_synthetic": r.n_synthetic, "seed": r.seed,
                "guidance_scale": r.guidance_scale, "sampler": _DEFAULT.sampler,
                "num_inference_steps": _DEFAULT.num_inference_steps, "precision": self.precision,
                "accuracy_real_only": number(self.accuracy_real_only),
                "accuracy_with_synthetic": number(self.accuracy_with_synthetic), "gain": number(gain),
                "heldout_digits": self.heldout_size, "classifier_steps": self.settings.steps,
                "batch_size": self.settings.batch_size, "stopped": bool(self.stopped),
                "seconds": round(self.seconds, 3), "generate_seconds": round(self.generate_seconds, 3),
                "train_seconds": round(self.train_seconds, 3),
                "curves": {"real_only": self.real_only.to_dict(), "with_synthetic": self.with_synthetic.to_dict()},
                "real_indices": [int(i) for i in self.real_indices]}


def run_experiment(unet: torch.nn.Module, scheduler_config: Any, request: ExperimentRequest, *,
                   stop: StopFlag | None = None, progress: ProgressCallback | None = None,
                   settings: TrainSettings = TrainSettings(), split: DigitSplit | None = None,
                   max_synthetic: int = MAX_SYNTHETIC_TAB, precision: str = "auto") -> ExperimentResult:
    """Train the classifier with and without generated digits and score both on the held-out digits.

    1. Pick k real digits per class from the model's training part (:func:`pick_real`).
    2. Generate ``n_synthetic`` digits per class (:func:`generate_dataset` of
       :meth:`ExperimentRequest.export_request`: DDIM-20, the request's guidance).
    3. Train both arms identically, round by round (:func:`~diffusion.lessons.applications.
       classifier.train_arms`: same initial weights, same number of gradient steps), and
       score every round on the held-out digits.

    Args:
        unet: The class-conditional ε-network, on its device.
        scheduler_config: The model's scheduler config.
        request: The experiment; validated here.
        stop: Polled after every sampler step and after every training round.
        progress: Called with phase ``"generate"`` per sampler step, then ``"train"`` per round.
        settings: How the classifiers train (default: :class:`TrainSettings`).
        split: The digits and the model's split (default: :func:`model_split`).
        max_synthetic: The cap on ``n_synthetic`` (see :meth:`ExperimentRequest.validated`).
        precision: The sampler's arithmetic (see :func:`generate_dataset`).

    Returns:
        An :class:`ExperimentResult`.

    Raises:
        InputError: For a bad request.
    """
    request = request.validated(max_synthetic)
    settings = settings.validated()
    split = split or model_split()
    real = pick_real(split, request.k_real, request.seed)
    real_x, real_y = arm_tensors(split.images[real], split.labels[real])
    heldout = arm_tensors(split.images[split.heldout_idx], split.labels[split.heldout_idx])
    init_seed, batch_seed = arm_seeds(request.seed)
    generated = None
    arms = [(real_x, real_y)]
    if request.n_synthetic:
        generated = generate_dataset(unet, scheduler_config, request.export_request(), stop=stop,
                                     progress=progress, precision=precision)
        if generated.stopped:
            return ExperimentResult(request, real, Curve(len(real)), Curve(len(real)), settings,
                                    generate_seconds=generated.seconds, stopped=True,
                                    precision=generated.precision, heldout_size=len(split.heldout_idx))
        syn_x, syn_y = arm_tensors(generated.images, generated.labels)
        arms.append((torch.cat([real_x, syn_x]), torch.cat([real_y, syn_y])))
    trained = train_arms(arms, heldout, settings, init_seed, batch_seed, stop=stop, progress=progress)
    curves = trained.curves + trained.curves[:1] * (2 - len(trained.curves))
    return ExperimentResult(request, real, curves[0], curves[1], settings,
                            generate_seconds=generated.seconds if generated else 0.0,
                            train_seconds=trained.seconds, stopped=trained.stopped,
                            precision=generated.precision if generated else choose_precision(
                                getattr(unet, "device", "cpu"), precision),
                            heldout_size=len(split.heldout_idx), synthetic=generated)
