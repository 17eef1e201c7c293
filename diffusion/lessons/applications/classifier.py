"""The classifier side of lesson 7's augmentation experiment: whose digits, which network, fair training.

**Data.** :func:`model_split` is the digit model's own train / held-out split of the shipped
digits (read from the model's ``train_info.json``); real training digits are only ever
picked from its training part (:func:`pick_real`), and the held-out part is for scoring only.

**Training.** The experiment asks: does a classifier trained on k real digits per class get better when
generated digits are added to its training set? Two *arms* answer it, trained here
identically except for their data:

* the same network (:class:`DigitCNN`) with the same initial weights (one seeded
  ``torch.Generator``, no global seed);
* the same optimiser (Adam, Kingma & Ba 2015) and learning rate;
* the same number of **gradient steps** of the same batch size, with the same evaluation
  points on the held-out digits.

Why equal gradient steps and not equal epochs: with k = 5 real digits per class (50 images)
and 100 generated ones per class (1,000 more), one epoch of the augmented set is 21 epochs
of the real one. Equal epochs would give the augmented arm 21 times more updates, so a gain
could come from more computation instead of more data. With equal steps both arms get the
same computation and see the same number of images; only *which* images differs. The
measured cost of this choice: the real-only arm has converged long before the last step
(its held-out accuracy is flat over the second half of its curve), so it is not starved.

Each step minimises the cross-entropy of a batch drawn uniformly, with replacement, from
the arm's training set (real and generated digits alike), on images on the ``[-1, 1]``
scale. No classical augmentation (shifts, rotations) is used, so the only difference
between the arms is the generated digits.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from diffusion.datasets import digits as data
from diffusion.datasets.digits import NUM_CLASSES
from diffusion.errors import InputError, check_range
from diffusion.models import registry
from diffusion.reverse import StopFlag, should_stop

# Streams of random numbers of one seed: real picks, initial weights, batches (1: augment.class_seed).
_PURPOSE_REAL, _PURPOSE_INIT, _PURPOSE_BATCH = 2, 3, 4
LIMITS = {"steps": (1, 5000), "batch_size": (1, 256), "learning_rate": (1e-5, 1.0), "rounds": (1, 100)}


@dataclass(frozen=True)
class DigitSplit:
    """The shipped digits and the digit model's own train / held-out split (read-only arrays).

    ``train_idx`` and ``heldout_idx`` index ``images`` and ``labels`` (the 5,000 digits of
    :func:`diffusion.datasets.digits.mnist_offline`).
    """

    images: np.ndarray
    labels: np.ndarray
    train_idx: np.ndarray
    heldout_idx: np.ndarray


@functools.lru_cache(maxsize=2)
def _load_split(model_dir: str) -> DigitSplit:
    info_path = Path(model_dir) / "train_info.json"
    settings = json.loads(info_path.read_text())["settings"] if info_path.is_file() else {}
    if settings.get("data", "offline") != "offline":
        raise InputError("augment_split_unknown", "The digit model was not trained on the built-in digits, so "
                         "its held-out digits are unknown.")
    images, labels = data.mnist_offline()
    split = data.split_train_heldout(images, labels, settings.get("heldout_fraction", 0.2),
                                     settings.get("split_seed", 0))
    arrays = [images, labels, split.train_idx, split.heldout_idx]
    for array in arrays:
        array.setflags(write=False)
    return DigitSplit(*arrays)


def model_split(model_dir: str | Path | None = None) -> DigitSplit:
    """The split the digit model was trained with, read from its ``train_info.json`` (cached).

    Args:
        model_dir: The model folder; default the registered ``mnist`` model's.

    Raises:
        InputError: ``augment_split_unknown`` when the model was trained on other data.
    """
    return _load_split(str(model_dir or registry.MODELS["mnist"].path))


def pick_real(split: DigitSplit, k: int, seed: int) -> np.ndarray:
    """k real digits of each class from the model's training part, chosen with a seeded generator.

    Per class, the training part's digits are permuted by ``numpy.random.default_rng`` seeded
    with ``(seed, purpose)`` and the first k are taken, so the choice for k is contained in
    the choice for any larger k with the same seed.

    Returns:
        Sorted int64 indices into ``split.images``, k per class.
    """
    rng = np.random.default_rng([int(seed), _PURPOSE_REAL])
    train_labels = split.labels[split.train_idx]
    picks = [rng.permutation(split.train_idx[train_labels == c])[:k] for c in range(data.NUM_CLASSES)]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def arm_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 28, 28)`` digits and labels as a classifier's ``[-1, 1]`` images and int64 labels."""
    return data.to_model_range(np.ascontiguousarray(images)), torch.as_tensor(np.asarray(labels), dtype=torch.long)


def arm_seeds(seed: int) -> tuple[int, int]:
    """``(init_seed, batch_seed)`` of the classifiers of an experiment seeded ``seed`` (shared by both arms)."""
    words = [np.random.SeedSequence([int(seed), p]).generate_state(1)[0] for p in (_PURPOSE_INIT, _PURPOSE_BATCH)]
    return int(words[0]), int(words[1])


class DigitCNN(nn.Module):
    """Two 3×3 convolution blocks and two linear layers: 28 → 14 → 7, then 64 units, then 10 logits.

    About 105,000 parameters; one step on a batch of 32 costs a few milliseconds on one CPU
    thread, so both arms of the experiment train in seconds.
    """

    def __init__(self, width: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),              # 28 → 14
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 14 → 7
            nn.Flatten(), nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, 10)`` of images ``(B, 1, 28, 28)`` on the ``[-1, 1]`` scale."""
        return self.head(self.features(x))


def build_classifier(generator: torch.Generator) -> DigitCNN:
    """A new :class:`DigitCNN` whose initial weights come from ``generator`` (no global seed).

    Every weight and bias gets PyTorch's default initialisation of ``nn.Conv2d`` and
    ``nn.Linear`` (Kaiming-uniform with a = √5, which is U(-1/√fan_in, 1/√fan_in)), drawn
    from the generator in the order of ``named_parameters``.

    Args:
        generator: A seeded CPU ``torch.Generator``.

    Returns:
        The network on the CPU.
    """
    with torch.device("meta"):  # no weights drawn from torch's global generator
        model = DigitCNN()
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
    return model


@dataclass(frozen=True)
class TrainSettings:
    """How every arm is trained (the same for all arms of one comparison).

    The defaults were chosen by measurement: with 400 steps the arms with 50-100
    generated digits per class still gained 2-4 points of held-out accuracy over 200
    steps, while the real-only arms were flat after 200.

    Attributes:
        steps: Gradient steps per arm.
        batch_size: Images per step.
        learning_rate: Adam's learning rate (constant).
        rounds: Evaluation points on the held-out digits, evenly spaced over the steps.
    """

    steps: int = 400
    batch_size: int = 32
    learning_rate: float = 1e-3
    rounds: int = 10

    def validated(self) -> TrainSettings:
        """A checked copy with plain Python types (``rounds`` at most ``steps``).

        Raises:
            InputError: ``not_a_number`` / ``not_an_integer`` / ``out_of_range`` naming the field.
        """
        steps = int(check_range("steps", self.steps, *LIMITS["steps"], integer=True))
        return TrainSettings(
            steps=steps,
            batch_size=int(check_range("batch_size", self.batch_size, *LIMITS["batch_size"], integer=True)),
            learning_rate=float(check_range("learning_rate", self.learning_rate, *LIMITS["learning_rate"])),
            rounds=min(steps, int(check_range("rounds", self.rounds, *LIMITS["rounds"], integer=True))))

    def round_ends(self) -> list[int]:
        """The step count after each round: ``round(steps · r / rounds)`` for r = 1 .. rounds."""
        return [int(round(self.steps * r / self.rounds)) for r in range(1, self.rounds + 1)]


@dataclass
class Curve:
    """One arm's training curve, one entry per evaluation round.

    Attributes:
        steps: Gradient steps done at the end of each round.
        epochs: The same in passes over the arm's training set, ``steps · batch / N``.
        train_loss: Mean cross-entropy (nats) of the round's training batches.
        heldout_accuracy: Share of the held-out digits classified correctly after the round.
        size: N, the number of training images of the arm.
    """

    size: int
    steps: list[int] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    heldout_accuracy: list[float] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        """Held-out accuracy after the last round that was run (NaN before the first)."""
        return self.heldout_accuracy[-1] if self.heldout_accuracy else math.nan

    def copy(self) -> Curve:
        """An independent copy (a running experiment keeps appending to its own curves)."""
        return Curve(self.size, list(self.steps), list(self.epochs), list(self.train_loss),
                     list(self.heldout_accuracy))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe copy, rounded for display."""
        return {"size": self.size, "steps": list(self.steps), "epochs": [round(e, 3) for e in self.epochs],
                "train_loss": [round(v, 5) for v in self.train_loss],
                "heldout_accuracy": [round(v, 4) for v in self.heldout_accuracy]}


@torch.inference_mode()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250) -> float:
    """Share of ``images`` whose predicted class (arg-max logit) equals ``labels``.

    Args:
        model: A classifier returning logits ``(B, 10)``.
        images: ``(N, 1, 28, 28)`` on the ``[-1, 1]`` scale.
        labels: ``(N,)`` int64 classes.
        batch_size: Images per forward pass (250 measured fastest on one CPU thread).

    Returns:
        The accuracy in ``[0, 1]`` (NaN for an empty set).
    """
    if len(labels) == 0:
        return math.nan
    correct = sum(int((model(images[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]).sum())
                  for i in range(0, len(labels), batch_size))
    return correct / len(labels)


@dataclass(frozen=True)
class Progress:
    """What a running export or experiment reports: ``done`` of ``total`` units of ``phase``.

    ``phase`` is ``"generate"`` (units: sampler steps, over all classes) or ``"train"``
    (units: gradient steps of each arm, with the curves so far in ``curves``).
    """

    phase: str
    done: int
    total: int
    curves: tuple[Curve, ...] = ()


ProgressCallback = Callable[[Progress], None]


@dataclass
class ArmsResult:
    """What :func:`train_arms` returns: the curves, the trained models and the time taken."""

    curves: list[Curve]
    models: list[DigitCNN]
    stopped: bool
    seconds: float


def train_arms(arms: Sequence[tuple[torch.Tensor, torch.Tensor]], heldout: tuple[torch.Tensor, torch.Tensor],
               settings: TrainSettings, init_seed: int, batch_seed: int, *,
               stop: StopFlag | None = None, progress: ProgressCallback | None = None) -> ArmsResult:
    """Train one classifier per arm, identically (see the module docstring), round by round.

    The arms advance together, one round at a time, so that a stopped run leaves every arm
    at the same number of steps and a live figure can show their curves side by side. Each
    arm has its own copy of the same initial weights and its own batch generator seeded
    with ``batch_seed``: an arm's result does not depend on which other arms train with it.

    Args:
        arms: ``(images (N, 1, 28, 28) on [-1, 1], labels (N,) int64)`` per arm, N ≥ 1.
        heldout: The held-out digits every round is evaluated on; never trained on.
        settings: Steps, batch size, learning rate and rounds (validated here).
        init_seed: Seed of the initial weights (:func:`build_classifier`).
        batch_seed: Seed of each arm's batch draws.
        stop: Polled after every round; True ends training there (``stopped``).
        progress: Called after every round with phase ``"train"`` and the curves so far.

    Returns:
        An :class:`ArmsResult` with one :class:`Curve` and one trained model per arm.

    Raises:
        ValueError: An arm is empty or its images and labels do not match.
    """
    settings = settings.validated()
    for x, y in arms:
        if len(x) == 0 or len(x) != len(y) or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError("each arm needs N >= 1 images of shape (N, 1, 28, 28) and N labels")
    start = time.perf_counter()
    initial = build_classifier(torch.Generator().manual_seed(int(init_seed)))
    models, optimisers, generators, curves = [], [], [], []
    for x, _ in arms:
        model = copy.deepcopy(initial)
        models.append(model)
        optimisers.append(torch.optim.Adam(model.parameters(), lr=settings.learning_rate))
        generators.append(torch.Generator().manual_seed(int(batch_seed)))
        curves.append(Curve(size=len(x)))
    done, stopped = 0, False
    for end in settings.round_ends():
        for (x, y), model, optimiser, generator, curve in zip(arms, models, optimisers, generators, curves):
            losses = []
            for _ in range(end - done):
                index = torch.randint(0, len(x), (settings.batch_size,), generator=generator)
                loss = F.cross_entropy(model(x[index]), y[index])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
            curve.steps.append(end)
            curve.epochs.append(end * settings.batch_size / len(x))
            curve.train_loss.append(float(np.mean(losses)))
            curve.heldout_accuracy.append(accuracy(model, *heldout))
        done = end
        if progress is not None:
            progress(Progress("train", done, settings.steps, tuple(c.copy() for c in curves)))
        if should_stop(stop, done, settings.steps):
            stopped = True
            break
    return ArmsResult(curves=curves, models=models, stopped=stopped, seconds=time.perf_counter() - start)
