"""Several sampling requests in one loop: one network call per step for all of them.

On a GPU one network call on 30 requests' digits costs little more than on one request's,
so a class pressing Sample together is served in about the time of one run. Each request
keeps everything that makes its pictures its own: its seed (x_T and every noisy step come
from its own generator, drawn in the same order as :func:`~diffusion.lessons.sampling.sample`
draws them), its digits and its guidance scale; only the sampler, the number of steps, η
and the precision must agree (:func:`batch_key`). A request that is stopped leaves the
batch after its current step, and the others go on.

Each request gets the :class:`~diffusion.lessons.sampling.Trajectory` it would get alone:
the same update rule on the same numbers, with its slice of a bigger network batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from diffusion import reverse
from diffusion.devices import autocast
from diffusion.lessons.sampling.request import NULL_CLASS, SampleRequest, class_labels
from diffusion.lessons.sampling.sampler import Trajectory, _alpha_bar, build_scheduler
from diffusion.reverse import StepCallback, StepInfo, StopFlag, as_number, should_stop


def batch_key(request: SampleRequest, record: bool, precision: str) -> tuple:
    """Requests with equal keys can share one loop (validated requests)."""
    return ("sampling", request.sampler, request.num_inference_steps, request.eta, record, precision)


class _Member:
    """One request's state inside the shared loop."""

    def __init__(self, request: SampleRequest, scheduler_config: Any, shape: tuple, device: torch.device,
                 dtype: torch.dtype, record: bool, callback: StepCallback | None, stop: StopFlag | None) -> None:
        self.request, self.callback, self.stop = request, callback, stop
        self.scheduler = build_scheduler(request.sampler, scheduler_config, request.num_inference_steps, device)
        self.generator = torch.Generator().manual_seed(request.seed)
        x_T = torch.randn(shape, generator=self.generator, dtype=torch.float32)  # as sample() draws it
        self.x = (x_T * self.scheduler.init_noise_sigma).to(device=device, dtype=dtype)
        self.labels = class_labels(request)
        self.step_kwargs: dict[str, Any] = {"generator": self.generator}
        if request.sampler == "ddim":
            self.step_kwargs.update(eta=request.eta, use_clipped_model_output=True)
        self.recorder = reverse.Recorder(record)
        self.stds: list[torch.Tensor] = []
        self.stopped = False
        self.active = True

    def inputs(self, x_in: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The network inputs and class labels this request adds to the batch (as :func:`guided_eps`)."""
        s = self.request.guidance_scale
        labels = self.labels.to(x_in.device)
        null = torch.full_like(labels, NULL_CLASS)
        if s == 1.0:
            return [x_in], [labels]
        if s == 0.0:
            return [x_in], [null]
        return [x_in, x_in], [labels, null]

    def guided(self, parts: list[torch.Tensor]) -> torch.Tensor:
        s = self.request.guidance_scale
        if len(parts) == 1:
            return parts[0]
        eps_cond, eps_uncond = parts
        return eps_uncond + s * (eps_cond - eps_uncond)


def sample_batched(unet: torch.nn.Module, scheduler_config: Any, requests: Sequence[SampleRequest], *,
                   device: torch.device | str = "cpu", callbacks: Sequence[StepCallback | None] | None = None,
                   stops: Sequence[StopFlag | None] | None = None, record: bool = True,
                   precision: str = "fp32") -> list[Trajectory]:
    """Run ``requests`` (validated, with equal :func:`batch_key`) in one loop; a trajectory each.

    Args:
        unet: The class-conditional ε-network, on ``device``.
        scheduler_config: The model's scheduler config.
        requests: What each student asked for.
        device: Where the network runs.
        callbacks: Each request's step callback (the run contract), or None.
        stops: Each request's stop flag, polled after every step.
        record: Keep every step's frames (all requests alike).
        precision: The network's arithmetic (see :func:`~diffusion.lessons.sampling.sample`).
    """
    if not requests:
        return []
    keys = {batch_key(r, record, precision) for r in requests}
    if len(keys) != 1:
        raise ValueError("requests in one batch need the same sampler, steps, eta, recording and precision")
    device = torch.device(device)
    dtype = getattr(unet, "dtype", torch.float32)
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    callbacks = list(callbacks or [None] * len(requests))
    stops = list(stops or [None] * len(requests))
    members = [_Member(r, scheduler_config, (r.batch_size, unet.config.in_channels, *size), device, dtype, record,
                       cb, st) for r, cb, st in zip(requests, callbacks, stops)]
    timesteps = members[0].scheduler.timesteps
    total = len(timesteps)
    start = time.perf_counter()
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            active = [m for m in members if m.active]
            if not active:
                break
            x_ins, xs, labels, counts = [], [], [], []
            for m in active:
                x_in = m.scheduler.scale_model_input(m.x, t)
                x_ins.append(x_in)
                parts, classes = m.inputs(x_in)
                xs += parts
                labels += classes
                counts.append(len(parts))
            with autocast(device, precision):
                eps_all = unet(torch.cat(xs), t, class_labels=torch.cat(labels)).sample
                chunks = list(eps_all.split([x.shape[0] for x in xs]))
                guided = []
                for m, n in zip(active, counts):  # guidance in the network's precision, as guided_eps does
                    guided.append(m.guided(chunks[:n]).to(m.x.dtype))
                    chunks = chunks[n:]
            for m, x_in, eps in zip(active, x_ins, guided):
                out = m.scheduler.step(eps, t, m.x, **m.step_kwargs)
                alpha_bar = _alpha_bar(m.scheduler, i, t)
                x0 = getattr(out, "pred_original_sample", None)
                if x0 is None:
                    x0 = (x_in - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)
                info = StepInfo(step=i, total=total, t=as_number(t), alpha_bar=alpha_bar, x_t=x_in, x0_pred=x0,
                                eps_pred=eps, x_next=out.prev_sample)
                m.recorder.add(info)
                m.stds.append(x_in.float().std())
                if m.callback is not None:
                    m.callback(info)
                m.x = out.prev_sample
                if should_stop(m.stop, i + 1, total):
                    m.stopped, m.active = True, False
    seconds = time.perf_counter() - start
    return [Trajectory(**m.recorder.fields(), request=m.request,
                       x_t_std=torch.stack(m.stds).to("cpu", torch.float32).clone() if m.stds else torch.zeros(0),
                       samples=m.x.detach().to("cpu", torch.float32).clone(), labels=m.labels, seconds=seconds,
                       stopped=m.stopped, device=str(device), precision=precision) for m in members]
