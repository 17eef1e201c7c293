"""Lesson 6's run as a picklable call: the pipeline by reference, the request, and the run contract.

On a ZeroGPU Space the pipeline runs in a GPU process (:mod:`diffusion.serving.gpu`); its
VAE is there too, so this call decodes what the main process will show: a preview of x̂₀
with the steps it streams (paced by :class:`~diffusion.lessons.text2image.PreviewPacer`),
and with ``pictures=True`` the x̂₀ of every recorded step for the step slider and the
player. In-process (``pictures=False``) the run keeps its VAE and decodes a frame only
when someone looks at it. The previews are made once per run, in the run's own thread,
so students who follow the same run all see them.

Every decoded picture that leaves this call has passed the content filter of a model loaded
with ``safety`` (:mod:`~diffusion.lessons.text2image.safety`): the previews, the x̂₀ of every
step and the final pictures; each reported step says which pictures are blocked so far, for
the latent view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from diffusion import reverse
from diffusion.lessons.text2image.pipeline import Generation, decode_latents, generate_within_memory
from diffusion.lessons.text2image.previews import PreviewPacer, to_uint8
from diffusion.lessons.text2image.request import EMBEDDED, T2IRequest
from diffusion.lessons.text2image.safety import Verdicts, pipe_filter, screen_x0
from diffusion.models import registry
from diffusion.reverse import StepInfo

GPU_S_PER_MEGAPIXEL_STEP = 0.15  # SD 1.5 at 512×512 (0.26 MP): 50 steps in ~2 s on an A100, with margin


@dataclass(eq=False)
class PreviewStep(StepInfo):
    """A reported step with its x̂₀ decoded (uint8 strip, screened) when the pacer allowed one."""

    preview: np.ndarray | None = None
    column: int = 0  # which run of a :func:`generate_many` call
    blocked: tuple[bool, ...] = ()  # per picture: blocked at this step, so its latent view is hidden too


def gpu_seconds(request: T2IRequest) -> float:
    """A GPU call's expected seconds for ``request`` (guidance doubles the UNet's batch)."""
    pixels = request.width * request.height * request.batch_size / 1e6
    guided = 2.0 if request.guidance_scale > 1.0 else 1.0
    return 1.0 + GPU_S_PER_MEGAPIXEL_STEP * request.num_inference_steps * pixels * guided


def generate(*, ref: str | None, device: str, offline: bool, request: T2IRequest, model: str = EMBEDDED,
             init_image: Image.Image | None = None, pictures: bool = False,
             callback: Any = None, stop: Any = None, safety: bool = True, attention: bool = True) -> Generation:
    """Run ``request`` on the pipeline ``ref`` (None: the embedded one), reporting :class:`PreviewStep` s.

    Args:
        pictures: Decode x̂₀ of every recorded step now and drop the VAE (and the content
            filter) from the result (for a result that crosses a process boundary).
        safety: Load a model other than the embedded one with its content filter, and screen
            every picture with it.
        attention: Record the cross-attention per prompt word (``run.attention``,
            :mod:`diffusion.lessons.text2image.attention`; about 5 % of the embedded model's run,
            the same pixels). A run stopped on ZeroGPU comes back without it (:func:`rebuilt`).
    """
    pipe = registry.load_text2image(ref, device, offline=offline, safety=safety)
    pacer = PreviewPacer()
    content_filter = pipe_filter(pipe)
    verdicts = Verdicts(request.batch_size, enabled=content_filter is not None)
    retried: dict[int, Verdicts] = {}  # a batch retried one picture at a time (out of GPU memory)

    def decode(latents: Any) -> Any:
        return decode_latents(pipe.vae, latents)

    def report(info: StepInfo) -> None:
        if callback is not None:
            batch = int(info.x_t.shape[0])
            seen = verdicts if batch == verdicts.batch else retried.setdefault(
                batch, Verdicts(batch, enabled=content_filter is not None))
            preview = pacer.decode(decode, info.x0_pred) if pacer.due() else None
            if preview is not None and content_filter is not None:
                begin = time.perf_counter()
                preview = screen_x0(content_filter, seen, info.step, preview)
                pacer.spent += time.perf_counter() - begin  # the check is part of a preview's cost
            callback(PreviewStep(**vars(info), preview=preview, blocked=tuple(seen.blocked_at(info.step))))

    run = generate_within_memory(pipe, request, model=model, init_image=init_image, callback=report, stop=stop,
                                 verdicts=verdicts, attention=attention)
    if pictures:
        run.x0_pictures = {i: screen_x0(run.content_filter, run.verdicts, i, to_uint8(decode(run.frame(i).x0_pred)))
                           for i in range(len(run))} if run.recorded else {}
        run.decoder = None
        run.content_filter = None  # the checker stays where it runs; every picture that leaves is screened
    return run


def rebuilt(kwargs: dict[str, Any], steps: list[PreviewStep], seconds: float) -> Generation:
    """The run of :func:`generate` stopped after ``steps``, built where the VAE is out of reach.

    Its pictures are the newest x̂₀ preview (a run stopped in-process decodes its last
    latent instead), and the step slider shows x̂₀ at the steps that had a preview. The
    previews were screened where they were decoded; the steps' ``blocked`` flags become the
    run's verdicts, and the newest preview's are its final pictures'.
    """
    request: T2IRequest = kwargs["request"]
    recorder = reverse.Recorder()
    batch = int(steps[-1].x_t.shape[0]) if steps else request.batch_size
    verdicts = Verdicts(batch, enabled=kwargs.get("ref") is not None and bool(kwargs.get("safety", True)))
    for info in steps:
        recorder.add(info)
        if len(getattr(info, "blocked", ())) == batch:
            verdicts.add(info.step, info.blocked)
    previews = {info.step: info.preview for info in steps if getattr(info, "preview", None) is not None}
    if previews:
        verdicts.finish(verdicts.blocked_at(max(previews)))
    newest = previews[max(previews)] if previews else None
    images = [Image.fromarray(np.ascontiguousarray(part)) for part in np.split(newest, request.batch_size, axis=1)] \
        if newest is not None else []
    fields = recorder.fields()
    return Generation(**fields, request=request, model=kwargs.get("model", EMBEDDED), images=images, seconds=seconds,
                      stopped=len(steps) < steps[-1].total, img2img=kwargs.get("init_image") is not None,
                      start_t=float(fields["timesteps"][0]) if len(steps) else None, device=kwargs["device"],
                      x0_pictures=previews, verdicts=verdicts)


MAX_COLUMNS = 4  # runs in one call: two prompts (and their mix), or a guidance sweep


def generate_many(*, ref: str | None, device: str, offline: bool, requests: list[T2IRequest], model: str = EMBEDDED,
                  pictures: bool = False, callback: Any = None, stop: Any = None,
                  safety: bool = True) -> list[Generation]:
    """Run several requests one after another in one call (two prompts from the same noise, a sweep).

    Each run is exactly :func:`generate` of its request, so its pixels equal a single
    ``/text_to_image`` run of the same request; same seed, same size: the same z_T. The
    steps are reported as :class:`PreviewStep` s with their ``column``. A stop ends the run
    under way; the runs after it are not started.
    """
    if not 1 <= len(requests) <= MAX_COLUMNS:
        raise ValueError(f"between 1 and {MAX_COLUMNS} requests")
    runs: list[Generation] = []
    for column, request in enumerate(requests):
        def report(info: PreviewStep, column: int = column) -> None:
            if callback is not None:
                info.column = column
                callback(info)
        run = generate(ref=ref, device=device, offline=offline, request=request, model=model, pictures=pictures,
                       callback=report, stop=stop, safety=safety)
        runs.append(run)
        if run.stopped:
            break
    return runs


def many_gpu_seconds(requests: list[T2IRequest]) -> float:
    """A :func:`generate_many` call's expected GPU seconds."""
    return sum(gpu_seconds(r) for r in requests)


def rebuilt_many(kwargs: dict[str, Any], steps: list[PreviewStep], seconds: float) -> list[Generation]:
    """The runs of a stopped :func:`generate_many` call, rebuilt from its reported steps (see :func:`rebuilt`)."""
    runs = []
    for column, request in enumerate(kwargs["requests"]):
        own = [s for s in steps if s.column == column]
        if not own:
            break
        runs.append(rebuilt({**kwargs, "request": request}, own, seconds))
    return runs
