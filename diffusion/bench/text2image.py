"""``python -m diffusion.bench text2image``: what lesson 6's previews and recording cost.

In one run, on the same pipeline, prompt, seed, scheduler and steps:

* **bare**: the pipeline called as diffusers documents it, nothing else;
* **lesson**: :func:`diffusion.lessons.text2image.pipeline.generate` as the tab runs it, in a worker
  thread (:class:`~diffusion.serving.live.LiveRun`) with every step recorded, while the
  streaming side picks the newest step about four times a second and renders its latent
  and, paced by :class:`~diffusion.lessons.text2image.pipeline.PreviewPacer`, its VAE-decoded x̂₀, then
  the final frame, exactly like the tab;
* **lesson + attention**: the same with the cross-attention per word recorded
  (``generate(..., attention=True)``, :mod:`diffusion.lessons.text2image.attention`). Its
  processors, installed on the UNet by the first such run, stay there, as in the app: the
  other runs go through them with nothing recording.

Runs alternate (bare, lesson, lesson + attention, bare, …) and the medians are compared;
the target is a ratio ≤ 1.10 for the lesson against the bare call, and for attention
recording against the lesson without it. The lesson must produce the same pixels as the
bare call, and with attention within one level of 255 (exit status 1 if not).

With a CUDA GPU, ``--sd15`` also times the Stable Diffusion 1.5 architecture (UNet,
VAE and CLIP text encoder built from their published configurations with random
weights: weights cannot be downloaded here) at 512×512, 50 steps, fp16, guidance 7.5,
next to the published A100 figure.

``--sd15-cpu`` instead runs the tab's own code path (:func:`diffusion.lessons.text2image.calls.generate`)
on that architecture on the CPU, at 64×64 and 2 steps, from a folder it writes (or reuses with
``--sd15-keep DIR``): :mod:`diffusion.bench.sd15`. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from diffusion import cli
from diffusion.models import registry as models
from diffusion.lessons import text2image as t2i

A100_SD15_SECONDS = 1.6  # published: SD 1.5, 512×512, 50 steps, fp16, SDPA, one A100


def _bare(pipe, request: t2i.T2IRequest) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(request.seed)
    run = t2i.with_scheduler(pipe, request.scheduler)
    image = run(request.prompt, num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale, generator=generator, width=request.width,
                height=request.height).images[0]
    return np.asarray(image)


def _lesson(pipe, request: t2i.T2IRequest, attention: bool = False) -> np.ndarray:
    from diffusion.serving.live import LiveRun  # the tabs' own streaming machinery

    live = LiveRun(lambda callback, stop: t2i.generate(pipe, request, callback=callback, stop=stop,
                                                       attention=attention))
    decode = (lambda z: t2i.decode_latents(pipe.vae, z))
    pacer = t2i.PreviewPacer()
    for info in live.steps():
        t2i.latent_picture(info.x_t)
        if pacer.due():
            pacer.decode(decode, info.x0_pred)
    generation = live.result
    if attention and generation.attention is None:
        raise RuntimeError("this pipeline's attention processors cannot record attention")
    last = generation.frame(len(generation) - 1)  # the tab's final frame: latent and decoded x̂₀
    t2i.latent_picture(last.x_t), t2i.to_uint8(decode(last.x0_pred))
    return np.asarray(generation.images[0])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def overhead(pipe, request: t2i.T2IRequest, repeat: int, attention: bool = True) -> dict[str, float]:
    """Median seconds of bare, lesson (and lesson + attention) runs, alternating, after one warm-up each."""
    device = pipe.device
    runs = [("bare", _bare), ("lesson", _lesson)]
    if attention:
        runs.append(("attention", lambda p, r: _lesson(p, r, attention=True)))
    for _, run in runs:
        run(pipe, request)
    times: dict[str, list[float]] = {name: [] for name, _ in runs}
    images = {}
    for _ in range(repeat):
        for name, run in runs:
            _sync(device)
            start = time.perf_counter()
            images[name] = run(pipe, request)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}

    def difference(name: str) -> int:
        return int(np.abs(images["bare"].astype(int) - images[name].astype(int)).max())

    result = {"bare_s": median["bare"], "lesson_s": median["lesson"], "ratio": median["lesson"] / median["bare"],
              "max_pixel_difference": difference("lesson")}
    if attention:
        result.update(attention_s=median["attention"], attention_ratio=median["attention"] / median["lesson"],
                      attention_pixel_difference=difference("attention"))
    return result


def sd15_seconds(steps: int = 50, repeat: int = 3) -> float:
    """Seconds per 512×512 image of the SD 1.5 architecture (random weights) on CUDA in fp16."""
    from diffusers import DDIMScheduler

    from diffusion.models.sd15 import build_sd15

    pipe = build_sd15(seed=0, dtype=torch.float16)  # SD 1.5's published configs, no content filter
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to("cuda")
    times = []
    for i in range(repeat + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        pipe("a red circle", num_inference_steps=steps, guidance_scale=7.5, height=512, width=512)
        torch.cuda.synchronize()
        if i:  # the first run warms up kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_text2image(args: argparse.Namespace) -> int:
    """Print the overhead table (and the SD 1.5 timing on CUDA); exit 1 if the pixels disagree."""
    from diffusion.devices import server_threads

    torch.set_num_threads(args.threads or server_threads())  # as the app serves it
    if args.sd15_cpu:
        from diffusion.bench.sd15 import format_report, run_sd15_cpu

        report = run_sd15_cpu(keep=args.sd15_keep)
        print(format_report(report))
        return 1 if report["problems"] else 0
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = models.load_text2image(args.model_dir, device, safety=False)  # None: the embedded model
    request = t2i.T2IRequest(num_inference_steps=args.steps, scheduler=args.scheduler).validated(t2i.default_side(pipe))
    result = overhead(pipe, request, args.repeat)
    print(f"lesson 6 on {device} ({torch.get_num_threads()} torch threads): {request.scheduler}, {request.num_inference_steps} steps, "
          f"{request.width}×{request.height}, guidance {request.guidance_scale:g}, median of {args.repeat}")
    print(f"  bare pipeline call        {result['bare_s']:.3f} s")
    print(f"  with previews + recording {result['lesson_s']:.3f} s   ratio {result['ratio']:.3f} (target ≤ 1.10)")
    print(f"  largest pixel difference  {result['max_pixel_difference']}")
    print(f"  + attention per word      {result['attention_s']:.3f} s   ratio {result['attention_ratio']:.3f} "
          f"to the lesson (target ≤ 1.10), {result['attention_s'] / result['bare_s']:.3f} to the bare call")
    print(f"  its largest pixel difference {result['attention_pixel_difference']} (at most 1)")
    if args.sd15:
        if device.type != "cuda":
            print("  SD 1.5 timing skipped: it needs a CUDA GPU")
        else:
            seconds = sd15_seconds()
            print(f"  SD 1.5 architecture, 512×512, 50 steps, fp16: {seconds:.2f} s per image "
                  f"(published A100 figure about {A100_SD15_SECONDS} s; GPU: {torch.cuda.get_device_name()})")
    return 0 if result["max_pixel_difference"] == 0 and result["attention_pixel_difference"] <= 1 else 1


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``text2image`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser(
        "text2image", help="lesson 6's preview and recording overhead (and SD 1.5 speed on a GPU)",
        description="Lesson 6: a bare pipeline call against the tab's recorded, previewed run.")
    parser.add_argument("--model-dir", help="a pipeline folder instead of the embedded model")
    parser.add_argument("--steps", type=int, default=30, help="default 30")
    parser.add_argument("--scheduler", default="ddim", choices=tuple(t2i.SCHEDULERS))
    parser.add_argument("--repeat", type=int, default=5, help="alternating runs of each (default 5)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--sd15", action="store_true", help="on CUDA, also time the SD 1.5 architecture")
    parser.add_argument("--sd15-cpu", action="store_true",
                        help="instead, run the tab's code path on the SD 1.5 architecture on the CPU (64×64, 2 steps)")
    parser.add_argument("--sd15-keep", type=Path, metavar="DIR",
                        help="with --sd15-cpu: keep the SD 1.5 folder (about 5 GB) in DIR, or reuse it from there")
    cli.add_threads_argument(parser, help="torch CPU threads (default: as the app serves, half the cores, at most 4)")
    parser.set_defaults(func=run_text2image)
