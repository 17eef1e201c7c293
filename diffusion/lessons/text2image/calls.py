"""Lesson 6's run as a picklable call: the pipeline by reference, the request, and the run contract.

On a ZeroGPU Space the pipeline runs in a GPU process (:mod:`diffusion.serving.gpu`); its
VAE is there too, so this call decodes what the main process will show: a preview of x̂₀
with the steps it streams (paced by :class:`~diffusion.lessons.text2image.PreviewPacer`),
and with ``pictures=True`` the x̂₀ of every recorded step for the step slider and the
player. In-process (``pictures=False``) the run keeps its VAE and decodes a frame only
when someone looks at it. The previews are made once per run, in the run's own thread,
so students who follow the same run all see them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from diffusion import reverse
from diffusion.lessons.text2image.pipeline import Generation, decode_latents, generate_within_memory
from diffusion.lessons.text2image.previews import PreviewPacer, to_uint8
from diffusion.lessons.text2image.request import EMBEDDED, T2IRequest
from diffusion.models import registry
from diffusion.reverse import StepInfo

GPU_S_PER_MEGAPIXEL_STEP = 0.15  # SD 1.5 at 512×512 (0.26 MP): 50 steps in ~2 s on an A100, with margin


@dataclass(eq=False)
class PreviewStep(StepInfo):
    """A reported step with its x̂₀ decoded (uint8 strip) when the pacer allowed one."""

    preview: np.ndarray | None = None


def gpu_seconds(request: T2IRequest) -> float:
    """A GPU call's expected seconds for ``request`` (guidance doubles the UNet's batch)."""
    pixels = request.width * request.height * request.batch_size / 1e6
    guided = 2.0 if request.guidance_scale > 1.0 else 1.0
    return 1.0 + GPU_S_PER_MEGAPIXEL_STEP * request.num_inference_steps * pixels * guided


def generate(*, ref: str | None, device: str, offline: bool, request: T2IRequest, model: str = EMBEDDED,
             init_image: Image.Image | None = None, pictures: bool = False,
             callback: Any = None, stop: Any = None) -> Generation:
    """Run ``request`` on the pipeline ``ref`` (None: the embedded one), reporting :class:`PreviewStep` s.

    Args:
        pictures: Decode x̂₀ of every recorded step now and drop the VAE from the result
            (for a result that crosses a process boundary).
    """
    pipe = registry.load_text2image(ref, device, offline=offline)
    pacer = PreviewPacer()

    def decode(latents: Any) -> Any:
        return decode_latents(pipe.vae, latents)

    def report(info: StepInfo) -> None:
        if callback is not None:
            preview = pacer.decode(decode, info.x0_pred) if pacer.due() else None
            callback(PreviewStep(**vars(info), preview=preview))

    run = generate_within_memory(pipe, request, model=model, init_image=init_image, callback=report, stop=stop)
    if pictures:
        run.x0_pictures = {i: to_uint8(decode(run.frame(i).x0_pred)) for i in range(len(run))} if run.recorded else {}
        run.decoder = None
    return run


def rebuilt(kwargs: dict[str, Any], steps: list[PreviewStep], seconds: float) -> Generation:
    """The run of :func:`generate` stopped after ``steps``, built where the VAE is out of reach.

    Its pictures are the newest x̂₀ preview (a run stopped in-process decodes its last
    latent instead), and the step slider shows x̂₀ at the steps that had a preview.
    """
    request: T2IRequest = kwargs["request"]
    recorder = reverse.Recorder()
    for info in steps:
        recorder.add(info)
    previews = {info.step: info.preview for info in steps if getattr(info, "preview", None) is not None}
    newest = previews[max(previews)] if previews else None
    images = [Image.fromarray(np.ascontiguousarray(part)) for part in np.split(newest, request.batch_size, axis=1)] \
        if newest is not None else []
    fields = recorder.fields()
    return Generation(**fields, request=request, model=kwargs.get("model", EMBEDDED), images=images, seconds=seconds,
                      stopped=len(steps) < steps[-1].total, img2img=kwargs.get("init_image") is not None,
                      start_t=float(fields["timesteps"][0]) if len(steps) else None, device=kwargs["device"],
                      x0_pictures=previews)
