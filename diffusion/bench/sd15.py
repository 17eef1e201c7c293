"""``python -m diffusion.bench text2image --sd15-cpu``: lesson 6's tab code path at SD 1.5's real size, on the CPU.

Lesson 6 is tested offline on tiny random pipelines, which hide shape and memory mistakes
that only a real-size model shows. Here SD 1.5's architecture (:mod:`diffusion.models.sd15`,
random weights) is written as a diffusers folder, safetensors only, and every run goes through
:func:`diffusion.lessons.text2image.calls.generate`, the very call the tab's job makes, which
loads the folder through :func:`diffusion.models.registry.load_text2image`:

(a) the default run (DDIM, guidance 7.5) with live x̂₀ previews collected by the callback;
(b) each scheduler swap, its recorded timesteps compared with the diffusers scheduler's own
    ``set_timesteps`` (the independent reference);
(c) a stop after the first step (the tab's interrupt), as on a ZeroGPU Space: x̂₀ decoded in
    the call (``pictures=True``) and the run rebuilt from its reported steps (``calls.rebuilt``);
(d) image-to-image (SDEdit) at strength 0.6, two pictures, its first timestep compared with
    :func:`~diffusion.lessons.text2image.strength_to_timestep`;
(e) the step slider's scrub decode of a recorded step (:meth:`Generation.x0_picture`);

and, when ``generate`` accepts ``attention``, the recorded attention maps. The result is a
dict of timings, peak resident memory, shapes and any ``problems`` (a list of sentences).
"""

from __future__ import annotations

import gc
import inspect
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion.errors import InputError, check_range
from diffusion.lessons.text2image import calls
from diffusion.lessons.text2image.previews import latent_picture, strength_to_timestep
from diffusion.lessons.text2image.request import SCHEDULERS, T2IRequest
from diffusion.models import registry, sd15

PROMPT = "a large red circle in the center on a white background"
GUIDANCE, STRENGTH, SEED = 7.5, 0.6, 0
SWAPS = ("ddim", "euler", "dpm_solver", "euler_ancestral", "ddpm")
VAE_FACTOR = 8  # SD's autoencoder halves the side three times (LDM's f = 8)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (``getrusage``; psutil's peak where that is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def request_for(steps: int, side: int, scheduler: str = "ddim") -> T2IRequest:
    """The benchmark's request, validated as the tab validates it (the model's side is 512)."""
    return T2IRequest(prompt=PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, seed=SEED,
                      scheduler=scheduler, width=side, height=side, strength=STRENGTH).validated(512)


def img2img_steps(steps: int, strength: float = STRENGTH) -> int:
    """The fewest steps ≥ ``steps`` of which image-to-image keeps at least two (diffusers keeps ``int(n·strength)``)."""
    n = steps
    while int(n * strength) < 2:
        n += 1
    return n


def init_picture(side: int) -> Image.Image:
    """A deterministic colour ramp, not square (the lesson resizes it to the request's size)."""
    h, w = side + side // 4, side
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), np.full_like(x, 96)], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


def attention_supported() -> bool:
    """Whether the tab's call can record attention maps (``calls.generate(..., attention=...)``)."""
    return "attention" in inspect.signature(calls.generate).parameters


def run_tab(folder: Path, request: T2IRequest, *, init_image: Image.Image | None = None,
            stop_after: int | None = None, pictures: bool = False,
            attention: bool = False) -> tuple[Any, list[Any], float]:
    """One run of the tab's call on ``folder``: ``(Generation, reported steps, wall seconds)``.

    Args:
        stop_after: Ask the run to stop once this many steps are done (the tab's Stop button).
        pictures: Decode every recorded x̂₀ in the call, as on a ZeroGPU Space.
        attention: Record attention maps (only where :func:`attention_supported`).
    """
    steps: list[Any] = []
    stop = None if stop_after is None else (lambda: len(steps) >= stop_after)
    extra = {"attention": True} if attention else {}
    start = time.perf_counter()
    run = calls.generate(ref=str(folder), device="cpu", offline=True, request=request, model=str(folder),
                         init_image=init_image, pictures=pictures, callback=steps.append, stop=stop, **extra)
    return run, steps, time.perf_counter() - start


def reference_timesteps(pipe: Any, name: str, steps: int) -> list[float]:
    """The timesteps diffusers' own scheduler ``name`` sets for ``steps`` steps, from the model's config."""
    cls, overrides = SCHEDULERS[name]
    scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]


def _leaves(value: Any, depth: int = 0) -> list[Any]:
    """Every tensor or array inside ``value`` (mappings, sequences, dataclass-like objects)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return [value]
    if depth > 4 or isinstance(value, (str, bytes, int, float)) or value is None:
        return []
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = list(vars(value).values()) if hasattr(value, "__dict__") else []
    return [leaf for item in items for leaf in _leaves(item, depth + 1)]


def attention_check(run: Any, side: int) -> dict[str, Any]:
    """What ``run.attention`` holds: map shapes, whether each has the latent grid, and its tokens.

    A map fits when its last two axes are the latent grid ``(side/8, side/8)`` or one axis
    is the flattened grid (``side²/64`` query positions).
    """
    latent = side // VAE_FACTOR
    found = getattr(run, "attention", None)
    maps = _leaves(found)
    shapes = [tuple(int(n) for n in m.shape) for m in maps]
    fits = [s[-2:] == (latent, latent) or latent * latent in s for s in shapes]
    tokens = found.get("tokens") if isinstance(found, dict) else getattr(found, "tokens", None)
    layers = found.get("layers") if isinstance(found, dict) else getattr(found, "layers", None)
    return {"present": found is not None, "maps": len(maps), "shapes": sorted(set(shapes))[:8],
            "latent_grid": bool(maps) and all(fits), "tokens": list(tokens) if tokens is not None else None,
            "layers": len(layers) if layers is not None else None}


def parameters(pipe: Any) -> dict[str, int]:
    """Parameters of the loaded pipeline's networks, and of its content filter where one is attached."""
    from diffusion.models import pipelines

    counts = {k: sum(p.numel() for p in getattr(pipe, k).parameters()) for k in ("unet", "vae", "text_encoder")}
    attached = getattr(pipelines, "attached_checker", None)
    content = attached(pipe) if attached is not None else None
    if content is not None:
        counts["safety_checker"] = sum(p.numel() for p in content.checker.parameters())
    return counts


def _summary(run: Any, steps: list[Any], seconds: float) -> dict[str, Any]:
    picture = np.asarray(run.images[0]) if run.images else None
    previews = [s.preview for s in steps if getattr(s, "preview", None) is not None]
    return {"seconds": seconds, "steps_run": len(run), "stopped": bool(run.stopped), "start_t": run.start_t,
            "images": len(run.images),
            "timesteps": [float(t) for t in run.timesteps], "reported": [(s.step, s.total) for s in steps],
            "image": None if picture is None else (tuple(picture.shape), str(picture.dtype)),
            "latents": tuple(run.x_t.shape[2:]) if run.recorded else None,
            "previews": len(previews), "preview": tuple(previews[0].shape) if previews else None}


def _check(result: dict[str, Any], name: str, ok: bool, sentence: str) -> None:
    if not ok:
        result["problems"].append(f"{name}: {sentence}")


def _runs(folder: Path, steps: int, side: int, result: dict[str, Any]) -> None:
    """Runs (a)–(e) and attention (module docstring) on a folder that is already loaded; fills ``result``."""
    pipe = registry.load_text2image(str(folder), "cpu", offline=True)
    latent, runs = side // VAE_FACTOR, result["runs"]
    for name in SWAPS:  # (a) is the first: DDIM with the previews the callback collected
        run, reported, seconds = run_tab(folder, request_for(steps, side, name))
        runs[name] = summary = _summary(run, reported, seconds)
        _check(result, name, summary["timesteps"] == reference_timesteps(pipe, name, steps),
               f"recorded timesteps {summary['timesteps']} are not the scheduler's own")
        _check(result, name, summary["image"] == ((side, side, 3), "uint8") and summary["latents"] == (4, latent, latent),
               f"image {summary['image']} / latents {summary['latents']}")
        _check(result, name, summary["preview"] == (side, side, 3), f"no {side}×{side} x̂₀ preview")
        if name == "ddim":  # (e) the step slider decodes a recorded x̂₀ through the run's own VAE
            start = time.perf_counter()
            picture = run.x0_picture(run.frame(0))
            result["scrub_s"] = time.perf_counter() - start
            result["shapes"].update(x0_picture=tuple(picture.shape), latent_picture=tuple(
                latent_picture(run.frame(0).x_t).shape), image=summary["image"], latents=summary["latents"])
            _check(result, "scrub", picture.shape == (side, side, 3) and picture.dtype == np.uint8,
                   f"x̂₀ picture {picture.shape}")
        del run
    # (c) stopped after one step, as on a ZeroGPU Space: x̂₀ decoded in the call, then the run
    # rebuilt from the reported steps alone (what the main process does when a stop closes the stream)
    request = request_for(steps, side)
    run, reported, seconds = run_tab(folder, request, stop_after=1, pictures=True)
    runs["stop"] = summary = _summary(run, reported, seconds)
    _check(result, "stop", summary["stopped"] and summary["steps_run"] == 1, "the run did not stop after one step")
    again = calls.rebuilt({"request": request, "device": "cpu", "model": str(folder)}, reported, seconds)
    result["shapes"].update(stop_x0_pictures=sorted((k, tuple(v.shape)) for k, v in (run.x0_pictures or {}).items()),
                            rebuilt_image=np.asarray(again.images[0]).shape if again.images else None)
    _check(result, "rebuilt", again.stopped and len(again) == 1 and again.images[0].size == (side, side),
           "the run rebuilt from its reported steps differs")
    n = img2img_steps(steps)  # (d) two pictures from one init picture
    run, reported, seconds = run_tab(folder, replace(request_for(n, side), batch_size=2), init_image=init_picture(side))
    runs["img2img"] = summary = _summary(run, reported, seconds)
    _check(result, "img2img", summary["images"] == 2 and summary["latents"] == (4, latent, latent),
           f"{summary['images']} pictures, latents {summary['latents']}")
    where = strength_to_timestep(pipe, "ddim", n, STRENGTH)
    _check(result, "img2img", summary["steps_run"] == where["steps_run"] and summary["start_t"] == where["t"],
           f"started at t={summary['start_t']} after {summary['steps_run']} steps, expected {where}")
    if attention_supported():
        run, reported, seconds = run_tab(folder, request_for(steps, side), attention=True)
        runs["attention"] = _summary(run, reported, seconds)
        result["attention"] = found = attention_check(run, side)
        _check(result, "attention", found["latent_grid"] and bool(found["tokens"]),
               f"maps {found['shapes']} for tokens {found['tokens']}: not one per token on the {latent}×{latent} grid")
    else:
        result["attention"] = "skipped: calls.generate has no attention parameter yet"


def run_sd15_cpu(steps: int = 2, side: int = 64, keep: Path | None = None) -> dict[str, Any]:
    """Run lesson 6's tab code path on an SD 1.5-size pipeline with random weights, on the CPU.

    Args:
        steps: Denoising steps of each run (2 .. 50; image-to-image uses :func:`img2img_steps`).
        side: Picture side in pixels (64 .. 512, a multiple of 8).
        keep: A folder to keep the pipeline in: reused when it already holds an SD 1.5
            folder (:func:`~diffusion.models.sd15.is_sd15_folder`), written there otherwise.
            Without it the folder lives in a temporary directory, removed afterwards.

    Returns:
        ``build_s``, ``save_s`` (None when reused), ``load_s``, ``scrub_s``, ``runs`` (per run:
        seconds, steps, timesteps, shapes), ``peak_rss_gb`` after each phase, ``shapes``,
        ``attention`` and ``problems`` (empty when every check passed).

    Raises:
        InputError: ``steps`` or ``side`` out of range, ``keep`` a non-empty folder of something else.
    """
    steps = int(check_range("steps", steps, 2, 50, integer=True))
    side = int(check_range("side", side, 64, 512, integer=True))
    if side % VAE_FACTOR:
        raise InputError("bad_side", "side must be a multiple of 8 (got {side}).", side=side)
    if keep is not None and (not isinstance(keep, (str, Path)) or not str(keep).strip()):
        raise InputError("not_a_folder", "keep must name a folder.")
    result: dict[str, Any] = {"steps": steps, "side": side, "build_s": None, "save_s": None, "runs": {},
                              "shapes": {}, "problems": [], "peak_rss_gb": {"start": peak_rss_gb()}}
    scratch = None if keep is not None else Path(tempfile.mkdtemp(prefix="sd15-cpu-"))
    folder = Path(keep) if keep is not None else scratch / "sd15"
    try:
        if not sd15.is_sd15_folder(folder):
            timings: dict[str, float] = {}
            sd15.save_sd15_folder(folder, timings=timings)
            result.update(timings)
            result["peak_rss_gb"]["build+save"] = peak_rss_gb()
        result["folder_gb"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**30
        start = time.perf_counter()
        pipe = registry.load_text2image(str(folder), "cpu", offline=True)  # what generate then finds cached
        result["load_s"] = time.perf_counter() - start
        result["parameters"] = parameters(pipe)
        del pipe
        _runs(folder, steps, side, result)
        result["peak_rss_gb"]["runs"] = peak_rss_gb()
    finally:
        registry.clear_cache()  # drops the loaded pipeline (and every other cached model)
        gc.collect()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def format_report(result: dict[str, Any]) -> str:
    """:func:`run_sd15_cpu`'s result as a table."""
    def secs(value: Any) -> str:
        return "  (kept)" if value is None else f"{value:7.2f}"

    lines = [f"SD 1.5 architecture (random weights) on the CPU through lesson 6's tab code path, "
             f"{result['side']}×{result['side']}, {result['steps']} steps, guidance {GUIDANCE:g}, "
             f"{torch.get_num_threads()} torch threads",
             f"  build {secs(result['build_s'])} s   save {secs(result['save_s'])} s   "
             f"load {secs(result.get('load_s'))} s   folder {result.get('folder_gb', math.nan):.2f} GiB",
             "  parameters: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in result.get("parameters", {}).items()),
             f"  {'run':<16}{'seconds':>8}{'steps':>7}  {'start t':>8}  timesteps"]
    for name, run in result["runs"].items():
        start = "" if run["start_t"] is None else f"{run['start_t']:8.1f}"
        flag = " (stopped)" if run["stopped"] else ""
        lines.append(f"  {name:<16}{run['seconds']:8.2f}{run['steps_run']:>7}  {start:>8}  "
                     f"{[round(t, 2) for t in run['timesteps']]}{flag}")
    lines.append("  (diffusers maps the safetensors files lazily: the load reads little, and the first runs "
                 "read the weights from the page cache or the disk)")
    if result.get("scrub_s") is not None:
        lines.append(f"  {'scrub decode':<16}{result['scrub_s']:8.2f}")
    lines.append("  shapes: " + ", ".join(f"{k} {v}" for k, v in result["shapes"].items()))
    lines.append("  peak RSS (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in result["peak_rss_gb"].items()))
    found = result.get("attention")
    lines.append(f"  attention: {found}" if not isinstance(found, dict) else
                 f"  attention: {found['layers']} cross-attention layers, maps {found['shapes']}, "
                 f"on the latent grid: {found['latent_grid']}, tokens {found['tokens']}")
    lines.append("  problems: " + ("; ".join(result["problems"]) if result["problems"] else "none"))
    return "\n".join(lines)
