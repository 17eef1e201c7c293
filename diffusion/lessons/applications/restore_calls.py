"""Lesson 7's inpainting and super-resolution runs as picklable calls: the digit model by name, a request.

A GPU call on a ZeroGPU Space runs in another process (:mod:`diffusion.serving.gpu`): it
gets plain arguments, loads the model there (the registry caches it per process) and
streams its steps back. These are those calls, their expected seconds, and the
``rebuilt_*`` functions, which make the run of a call stopped after the steps received,
exactly as :func:`~.inpaint.inpaint` or :func:`~.superres.super_resolve` returns it when
its stop flag is set at that step: the recorded frames are the steps' own, and the last
x reached is the last step's ``x_next``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffusion import reverse
from diffusion.lessons.applications import inpaint as inpainting
from diffusion.lessons.applications import superres
from diffusion.lessons.applications.inpaint import InpaintRequest, InpaintRun, class_labels
from diffusion.lessons.applications.superres import SuperResRequest, SuperResRun, SuperResStep
from diffusion.models import registry
from diffusion.reverse import StepInfo

MODEL = "mnist"  # the registry's digit model
GPU_S_PER_CALL, GPU_S_PER_IMAGE = 0.01, 2e-4  # this small network: ~10 ms of launches a call, then per image
CPU_S_PER_IMAGE = 1e-3  # a first guess on a CPU; the job queue corrects it by measured runs


def network_calls(request: InpaintRequest | SuperResRequest, steps: int | None = None) -> int:
    """Network calls of the first ``steps`` steps (default all): RePaint's U passes a step but the last, DDNM one."""
    total = request.num_inference_steps
    done = total if steps is None else steps
    if isinstance(request, SuperResRequest):
        return done
    return sum(request.resample if i < total - 1 else 1 for i in range(done))


def images_per_call(request: InpaintRequest | SuperResRequest) -> int:
    """Pictures the network sees in one call: each fill, twice under classifier-free guidance."""
    guided = request.digit is not None and request.guidance_scale not in (0.0, 1.0)
    return request.fills * (2 if guided else 1)


def gpu_seconds(request: InpaintRequest | SuperResRequest) -> float:
    """GPU seconds of a run, for a GPU call's ``duration``."""
    return network_calls(request) * (GPU_S_PER_CALL + GPU_S_PER_IMAGE * images_per_call(request))


def cpu_seconds(request: InpaintRequest | SuperResRequest) -> float:
    """A first guess of a run's seconds on a CPU."""
    return CPU_S_PER_IMAGE * network_calls(request) * images_per_call(request)


def inpaint_call(*, request: InpaintRequest, device: str, record: bool = True, precision: str = "fp32",
                 callback: Callable[[StepInfo], None] | None = None,
                 stop: Callable[[], bool] | None = None) -> InpaintRun:
    """:func:`~.inpaint.inpaint` with the shipped digit model on ``device`` (loaded once per process)."""
    unet, scheduler_config = registry.load_unet_model(MODEL, device)
    return inpainting.inpaint(unet, scheduler_config, request, callback=callback, stop=stop, device=device,
                              record=record, precision=precision)


def super_resolve_call(*, request: SuperResRequest, device: str, record: bool = True, precision: str = "fp32",
                       callback: Callable[[StepInfo], None] | None = None,
                       stop: Callable[[], bool] | None = None) -> SuperResRun:
    """:func:`~.superres.super_resolve` with the shipped digit model on ``device``."""
    unet, scheduler_config = registry.load_unet_model(MODEL, device)
    return superres.super_resolve(unet, scheduler_config, request, callback=callback, stop=stop, device=device,
                                  record=record, precision=precision)


def _recorded(steps: list[StepInfo], record: bool) -> reverse.Recorder:
    if not steps or steps[-1].x_next is None:
        raise ValueError("a run is rebuilt from at least one step that reports x_next")
    recorder = reverse.Recorder(record)
    for info in steps:
        recorder.add(info)
    return recorder


def _run_fields(kwargs: dict[str, Any], steps: list[StepInfo], seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "stopped": len(steps) < steps[-1].total,
            "device": str(torch.device(kwargs["device"])), "precision": kwargs.get("precision", "fp32")}


def rebuilt_inpaint(kwargs: dict[str, Any], steps: list[StepInfo], seconds: float) -> InpaintRun:
    """The run of :func:`inpaint_call` (its ``kwargs``, a validated request) stopped after ``steps``.

    Raises:
        ValueError: No step, or a step without ``x_next``.
    """
    request: InpaintRequest = kwargs["request"]
    recorder = _recorded(steps, kwargs.get("record", True))
    labels = class_labels(request.digit, request.fills, request.guidance_scale)[0]
    return inpainting.finish(request, recorder, steps[-1].x_next, labels, network_calls(request, len(steps)),
                             **_run_fields(kwargs, steps, seconds))


def rebuilt_super_resolve(kwargs: dict[str, Any], steps: list[SuperResStep], seconds: float) -> SuperResRun:
    """The run of :func:`super_resolve_call` (its ``kwargs``, a validated request) stopped after ``steps``.

    Raises:
        ValueError: No step, or a step without ``x_next`` or ``x0_network``.
    """
    request: SuperResRequest = kwargs["request"]
    record = kwargs.get("record", True)
    recorder = _recorded(steps, record)
    if any(getattr(info, "x0_network", None) is None for info in steps):
        raise ValueError("a super-resolution run is rebuilt from steps that report x0_network")
    raw = [info.x0_network.to("cpu", recorder.dtype) for info in steps] if record else []
    labels = class_labels(request.digit, request.fills, request.guidance_scale)[0]
    return superres.finish(request, recorder, raw, steps[-1].x_next, labels, **_run_fields(kwargs, steps, seconds))
