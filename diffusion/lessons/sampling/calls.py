"""Lesson 4's runs as picklable calls: the shipped model by name, a request, and the run contract.

A GPU call on a ZeroGPU Space runs in another process (:mod:`diffusion.serving.gpu`): it
gets plain arguments, loads the model there (the registry caches it per process), and
streams its steps back. These are those calls, and :func:`rebuilt`, which makes the
trajectory of a run stopped after the steps received, exactly as :func:`sample` would
have returned it had its stop flag been set at that step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffusion import reverse
from diffusion.lessons.sampling.batched import sample_batched
from diffusion.lessons.sampling.request import SampleRequest, class_labels
from diffusion.lessons.sampling.sampler import Trajectory, sample
from diffusion.models import registry
from diffusion.reverse import StepInfo

MODEL = "mnist"  # the registry's digit model


def _evaluations(request: SampleRequest) -> int:
    return request.batch_size * (1 if request.guidance_scale in (0.0, 1.0) else 2)


def gpu_seconds(request: SampleRequest) -> float:
    """GPU seconds of a run, for a GPU call's ``duration``: this small network costs ~10 ms of launches a step."""
    return request.num_inference_steps * (0.01 + 2e-4 * _evaluations(request))


def cpu_seconds(request: SampleRequest) -> float:
    """A first guess of a run's seconds on a CPU (the job queue corrects it by measured runs)."""
    return 1e-3 * request.num_inference_steps * _evaluations(request)


def run_request(*, request: SampleRequest, device: str, record: bool = True, precision: str = "fp32",
                callback: Callable[[StepInfo], None] | None = None,
                stop: Callable[[], bool] | None = None) -> Trajectory:
    """:func:`sample` of the shipped digit model on ``device`` (loaded once per process)."""
    unet, scheduler_config = registry.load_unet_model(MODEL, device)
    return sample(unet, scheduler_config, request, device=device, callback=callback, stop=stop, record=record,
                  precision=precision)


def run_requests(*, requests: Sequence[SampleRequest], device: str, record: bool = True, precision: str = "fp32",
                 callback: Callable[[tuple[int, StepInfo]], None] | None = None,
                 stop: Callable[[], bool] | None = None,
                 stops: Sequence[Callable[[], bool] | None] | None = None) -> list[Trajectory]:
    """:func:`sample_batched` of the shipped model; ``callback`` gets ``(index, step)``.

    ``stop`` ends every request; ``stops`` (in-process only) ends one request each.
    """
    unet, scheduler_config = registry.load_unet_model(MODEL, device)

    def member_callback(i: int) -> Callable[[StepInfo], None] | None:
        return None if callback is None else (lambda info: callback((i, info)))

    def member_stop(i: int) -> Callable[[], bool]:
        own = stops[i] if stops else None
        return lambda: bool((stop is not None and stop()) or (own is not None and own()))

    n = len(requests)
    return sample_batched(unet, scheduler_config, requests, device=device,
                          callbacks=[member_callback(i) for i in range(n)], stops=[member_stop(i) for i in range(n)],
                          record=record, precision=precision)


def rebuilt(kwargs: dict[str, Any], steps: list[StepInfo], seconds: float) -> Trajectory:
    """The trajectory of :func:`run_request` stopped after ``steps`` (CPU copies with ``x_next``)."""
    return rebuilt_member(kwargs["request"], steps, seconds, device=kwargs["device"],
                          record=kwargs.get("record", True), precision=kwargs.get("precision", "fp32"))


def rebuilt_member(request: SampleRequest, steps: list[StepInfo], seconds: float, *, device: str,
                   record: bool = True, precision: str = "fp32") -> Trajectory:
    """One request's trajectory from its reported steps (see :func:`rebuilt`).

    Raises:
        ValueError: No step, or a step without ``x_next``.
    """
    if not steps or steps[-1].x_next is None:
        raise ValueError("a run is rebuilt from at least one step that reports x_next")
    recorder = reverse.Recorder(record)
    for info in steps:
        recorder.add(info)
    return Trajectory(
        **recorder.fields(), request=request,
        x_t_std=torch.stack([info.x_t.float().std() for info in steps]).to(torch.float32),
        samples=steps[-1].x_next.to("cpu", torch.float32).clone(), labels=class_labels(request), seconds=seconds,
        stopped=len(steps) < steps[-1].total, device=str(torch.device(device)), precision=precision)
