"""Lesson 7's export and augmentation experiment as picklable calls: the digit model by name, a request.

A GPU call on a ZeroGPU Space runs in another process (:mod:`diffusion.serving.gpu`): it
gets plain arguments, loads the model there (the registry caches it per process) and
streams what it reports back. These are those calls, their expected seconds, and the
``rebuilt_*`` functions, which make the result of a call stopped after the records
received, in the main process.

What is streamed. Each record is an :class:`Update`: the core's
:class:`~diffusion.lessons.applications.classifier.Progress` (sampler steps while
generating, then the classifiers' rounds with their curves so far), numbered so that a
live stream (:class:`~diffusion.serving.live.LiveRun`, which tells records apart by
``step``) sees every one as new. An export also streams the digits of each class as
soon as that class is finished, so a stop across the process boundary keeps them.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from diffusion.datasets import digits as data
from diffusion.devices import choose_precision
from diffusion.lessons.applications.augment import (
    ExperimentRequest, ExperimentResult, ExportRequest, GeneratedSet, generate_dataset, run_experiment,
)
from diffusion.lessons.applications.classifier import Curve, Progress, TrainSettings, model_split, pick_real
from diffusion.models import registry

MODEL = "mnist"  # the registry's digit model
GPU_S_PER_CALL, GPU_S_PER_IMAGE = 0.01, 2e-4  # this small network on a GPU: ~10 ms of launches a call, then per image
CPU_S_PER_IMAGE = 1.4e-3  # one image-evaluation on this CPU (an export of 100 digits, DDIM-20 guided: ~5.5 s)
TRAIN_S_PER_STEP = 0.0145  # one gradient step of one classifier, with its share of the held-out scoring (CPU)


@dataclass(frozen=True)
class Update:
    """One streamed record of an export or an experiment.

    Attributes:
        step: 1, 2, 3, … in the order reported (the live stream's "is it new" test).
        progress: The core's progress record.
        elapsed: Seconds since the call began, when it was reported.
        digit: For an export, the class just finished (then ``images`` holds its digits).
        images: uint8 ``(per_class, 28, 28)``, the finished class's digits as the zip holds them.
    """

    step: int
    progress: Progress
    elapsed: float
    digit: int | None = None
    images: np.ndarray | None = None


def _evaluations(request: ExportRequest) -> int:
    """Network image-evaluations of an export: digits × steps × (2 with guidance, else 1)."""
    guided = request.guidance_scale not in (0.0, 1.0)
    return len(request.digits) * request.per_class * request.num_inference_steps * (2 if guided else 1)


def gpu_seconds(request: ExportRequest | ExperimentRequest, settings: TrainSettings = TrainSettings()) -> float:
    """GPU seconds of a call, for its ``duration``.

    An export is one network call per sampler step and class. An experiment adds the
    classifiers' training, which runs on the CPU of the GPU worker (a 100,000-parameter
    network: moving it to the GPU would not pay), so its CPU time counts in full.
    """
    if isinstance(request, ExperimentRequest):
        generate = gpu_seconds(request.export_request()) if request.n_synthetic else 0.0
        return generate + _train_seconds(request, settings)
    calls = len(request.digits) * request.num_inference_steps
    return calls * GPU_S_PER_CALL + GPU_S_PER_IMAGE * _evaluations(request)


def cpu_seconds(request: ExportRequest | ExperimentRequest, settings: TrainSettings = TrainSettings()) -> float:
    """A first guess of a call's seconds on a CPU (the job queue corrects it by measured runs)."""
    if isinstance(request, ExperimentRequest):
        generate = cpu_seconds(request.export_request()) if request.n_synthetic else 0.0
        return generate + _train_seconds(request, settings)
    return CPU_S_PER_IMAGE * _evaluations(request)


def _train_seconds(request: ExperimentRequest, settings: TrainSettings) -> float:
    return (2 if request.n_synthetic else 1) * settings.steps * TRAIN_S_PER_STEP


def _reporter(callback: Callable[[Update], None] | None) -> Callable[..., None]:
    """Number and time the records, and hand them to ``callback``."""
    count, start = itertools.count(1), time.perf_counter()

    def report(progress: Progress, digit: int | None = None, images: np.ndarray | None = None) -> None:
        if callback is not None:
            callback(Update(next(count), progress, time.perf_counter() - start, digit, images))
    return report


def export_call(*, request: ExportRequest, device: str, precision: str = "auto",
                callback: Callable[[Update], None] | None = None,
                stop: Callable[[], bool] | None = None) -> GeneratedSet:
    """:func:`~.augment.generate_dataset` with the shipped digit model on ``device``, class by class.

    Each class is its own :func:`~.augment.generate_dataset` of that one class: the core
    samples every class as one batch with its own seed (:func:`~.augment.class_seed`), so
    the digits are the same pixels as one call for all classes, and each finished class can
    be streamed (``Update.images``) before the next begins. Stop behaves as in the core: the
    class being sampled is dropped, the finished ones are kept.

    Returns:
        A :class:`~.augment.GeneratedSet` for the whole (validated) request.
    """
    unet, scheduler_config = registry.load_unet_model(MODEL, device)
    request = request.validated(scheduler_config["num_train_timesteps"])
    report = _reporter(callback)
    steps = request.num_inference_steps
    total = len(request.digits) * steps
    parts: list[GeneratedSet] = []
    for position, char in enumerate(request.digits):
        def progress(p: Progress, before: int = position * steps) -> None:
            report(Progress("generate", before + p.done, total))

        part = generate_dataset(unet, scheduler_config, replace(request, digits=char), stop=stop,
                                progress=progress, precision=precision)
        parts.append(part)
        if part.stopped:
            break
        report(Progress("generate", (position + 1) * steps, total), int(char), part.images)
    kept = [p for p in parts if not p.stopped]
    return _joined(request, [p.images for p in kept], [int(p.request.digits) for p in kept],
                   sum(p.seconds for p in parts), stopped=len(kept) < len(request.digits),
                   precision=parts[0].precision if parts else choose_precision(device, precision))


def _joined(request: ExportRequest, images: list[np.ndarray], digits: list[int], seconds: float, *,
            stopped: bool, precision: str) -> GeneratedSet:
    empty = np.zeros((0, data.IMAGE_SIZE, data.IMAGE_SIZE), dtype=np.uint8)
    labels = [np.full(len(block), digit, dtype=np.int64) for block, digit in zip(images, digits)]
    return GeneratedSet(images=np.concatenate(images) if images else empty,
                        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
                        seconds=seconds, request=request, stopped=stopped, precision=precision)


def rebuilt_export(kwargs: dict[str, Any], steps: list[Update], seconds: float) -> GeneratedSet:
    """The set of :func:`export_call` (its ``kwargs``, a validated request) stopped after ``steps``.

    It holds the digits of every class whose digits were streamed before the stop, which
    are exactly the classes a stop in-process keeps; the class being sampled when the stop
    came is dropped. Stopped before the first class was finished, it holds no digit.
    """
    request: ExportRequest = kwargs["request"]
    finished = [u for u in steps if u.images is not None]
    precision = choose_precision(kwargs["device"], kwargs.get("precision", "auto"))
    return _joined(request, [u.images for u in finished], [int(u.digit) for u in finished], seconds,
                   stopped=len(finished) < len(request.digits), precision=precision)


def experiment_call(*, request: ExperimentRequest, device: str, settings: TrainSettings = TrainSettings(),
                    precision: str = "auto", callback: Callable[[Update], None] | None = None,
                    stop: Callable[[], bool] | None = None) -> ExperimentResult:
    """:func:`~.augment.run_experiment` with the shipped digit model on ``device``."""
    unet, scheduler_config = registry.load_unet_model(MODEL, device)
    report = _reporter(callback)
    return run_experiment(unet, scheduler_config, request, stop=stop, progress=report,
                          settings=settings, precision=precision)


def rebuilt_experiment(kwargs: dict[str, Any], steps: list[Update], seconds: float) -> ExperimentResult:
    """The result of :func:`experiment_call` (its ``kwargs``, a validated request) stopped after ``steps``.

    The curves are those of the last training round streamed, as a stop in-process after
    that round keeps them; stopped while the digits were still being generated, both curves
    are empty, as in-process. The generated digits themselves are not streamed, so
    ``synthetic`` is None, and the seconds are split at the last generation record.
    """
    request: ExperimentRequest = kwargs["request"]
    settings = kwargs.get("settings", TrainSettings()).validated()
    split = model_split()
    real = pick_real(split, request.k_real, request.seed)
    last = steps[-1].progress if steps else None
    generating = [u.elapsed for u in steps if u.progress.phase == "generate"]
    generate_seconds = generating[-1] if generating else 0.0
    if last is not None and last.phase == "train" and last.curves:
        curves = [c.copy() for c in last.curves]
        real_only, with_synthetic = curves[0], curves[-1]
        stopped = last.done < last.total
    else:
        real_only, with_synthetic, stopped = Curve(len(real)), Curve(len(real)), True
    precision = choose_precision(kwargs["device"], kwargs.get("precision", "auto"))
    return ExperimentResult(request, real, real_only, with_synthetic, settings,
                            generate_seconds=generate_seconds, train_seconds=max(0.0, seconds - generate_seconds),
                            stopped=stopped, precision=precision, heldout_size=len(split.heldout_idx))
