"""Lesson 4 tab: denoise your own photo with a diffusion model, side by side with the classics."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from diffusion import images
from diffusion.lessons.denoising import classical
from diffusion.lessons.denoising import figures as denoise_plots
from diffusion.models import registry as models
from diffusion.models.denoiser_net import sigma_to_model
from diffusion.lessons.denoising.denoiser import (COLOR_MODES, DEFAULT_COLOR, DIFFUSION_METHODS, METHODS, MethodResult, add_noise,
                                 run_method, score, summary, to_uint8)
from diffusion.errors import InputError, check_choice, check_range
from diffusion.examples import list_examples
from diffusion.serving.gpu import model_device
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import ImageInput, LATEX, progress_html

log = logging.getLogger("diffusion.ui")

LIMITS = {"sigma": (0, 100), "sigma_override": (0, 100), "seed": (0, 2**32 - 1), "steps": (1, 50),
          "eta": (0.0, 1.0), "max_side": (32, 768), "zoom_x": (0, 100), "zoom_y": (0, 100), "zoom_size": (8, 256)}
DEFAULTS = {"sigma": 25, "seed": 0, "sigma_override": 0, "steps": 10, "eta": 0.0, "color": DEFAULT_COLOR,
            "max_side": 384, "zoom_x": 50, "zoom_y": 50, "zoom_size": 64}
DEFAULT_METHODS = list(METHODS)
CLEAN_LOOKING_SIGMA = 3.0  # estimates below this come from texture and compression, not noise
MAX_DECODE_SIDE = 2048  # an already-noisy upload is decoded up to this size, then cropped
PATH_FRAMES = 5  # multi-step frames shown
RESULTS_BYTES = 400 * 1024 * 1024  # finished comparisons kept for the zoom view


@dataclass
class Prepared:
    """The images a comparison starts from."""

    clean: np.ndarray | None  # uint8 (H, W, C), when the noise is added here
    noisy: np.ndarray  # [0, 1] floats, what every method receives
    sigma: float  # the σ the methods assume (0–255 scale)
    sigma_estimated: float
    notices: list[tuple[str, dict]] = field(default_factory=list)


@dataclass
class Finished:
    """A finished comparison, kept for the zoom view."""

    context: np.ndarray
    panels: list[tuple[str, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return self.context.nbytes + sum(image.nbytes for _, image in self.panels)


class ResultStore:
    """Finished comparisons by random id, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = RESULTS_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Finished] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def add(self, item: Finished) -> str:
        run_id = secrets.token_hex(16)
        with self._lock:
            self._items[run_id] = item
            self._bytes += item.nbytes
            while len(self._items) > 1 and self._bytes > self.max_bytes:
                self._bytes -= self._items.popitem(last=False)[1].nbytes
        return run_id

    def get(self, run_id: Any) -> Finished:
        with self._lock:
            if not isinstance(run_id, str) or run_id not in self._items:
                raise InputError("result_expired", "That result is no longer on the server. Please run the comparison again.")
            self._items.move_to_end(run_id)
            return self._items[run_id]


RESULTS = ResultStore()


def _is_grey(pixels: np.ndarray) -> bool:
    return pixels.shape[2] == 1 or bool(np.all(pixels[:, :, 0] == pixels[:, :, 1])
                                         and np.all(pixels[:, :, 1] == pixels[:, :, 2]))


def load_upload(path: Any, max_side: int, crop: bool) -> tuple[np.ndarray, list[tuple[str, dict]]]:
    """An upload as uint8 ``(H, W, 1|3)`` (grey pictures keep one channel), no side above ``max_side``.

    Args:
        path: The uploaded file's path in the server's cache.
        max_side: Longest side after loading.
        crop: Take the centre instead of shrinking (already-noisy photos: shrinking averages the noise away).

    Returns:
        The pixels and the notices to show (resized or cropped).
    """
    if not path:
        raise InputError("image_missing_denoise", "Please upload a photo or pick an example.")
    pixels, info = images.load_image(images.check_upload(path), max_side=MAX_DECODE_SIDE if crop else max_side)
    clean = np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if _is_grey(clean):
        clean = clean[:, :, :1]
    notices = []
    (w0, h0) = info["original_size"]
    if crop and max(clean.shape[:2]) > max_side:
        h, w = clean.shape[:2]
        ch, cw = min(h, max_side), min(w, max_side)
        top, left = (h - ch) // 2, (w - cw) // 2
        clean = clean[top:top + ch, left:left + cw]
        notices.append(("denoising.cropped", {"w0": w0, "h0": h0, "w": cw, "h": ch}))
    elif info["resized"]:
        w, h = info["size"]
        notices.append(("denoising.resized", {"w0": w0, "h0": h0, "w": w, "h": h, "max_side": max_side}))
    return clean, notices


def prepare(path: Any, sigma: Any, seed: Any, sigma_override: Any, max_side: Any) -> Prepared:
    """Validate the inputs, load the upload and make the noisy image every method receives."""
    sigma = check_range("sigma", sigma, *LIMITS["sigma"])
    seed = check_range("seed", seed, *LIMITS["seed"], integer=True)
    sigma_override = check_range("sigma_override", sigma_override or 0, *LIMITS["sigma_override"])
    max_side = check_range("max_side", max_side, *LIMITS["max_side"], integer=True)
    synthetic = sigma > 0
    pixels, notices = load_upload(path, max_side, crop=not synthetic)
    if synthetic:
        noisy = add_noise(pixels, sigma, seed, quantise=True)
        estimate = classical.estimate_noise(noisy)
        notices.insert(0, ("denoising.synthetic", {"sigma": sigma, "seed": seed, "estimate": estimate}))
        return Prepared(pixels, noisy, sigma, estimate, notices)
    noisy = pixels.astype(np.float64) / 255.0
    estimate = classical.estimate_noise(noisy)
    used = sigma_override if sigma_override > 0 else estimate
    if used > LIMITS["sigma"][1]:
        used = float(LIMITS["sigma"][1])
        notices.append(("denoising.clamped", {"sigma": used}))
    if sigma_override > 0:
        notices.insert(0, ("denoising.override", {"estimate": estimate, "sigma": used}))
    else:
        notices.insert(0, ("denoising.estimated", {"estimate": estimate}))
        if estimate < CLEAN_LOOKING_SIGMA:
            notices.append(("denoising.clean_looking", {"estimate": estimate}))
    notices.append(("denoising.no_truth", {}))
    return Prepared(None, noisy, used, estimate, notices)


def check_methods(methods: Any) -> list[str]:
    """The chosen methods in the lesson's order; unknown names are refused."""
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or len(methods) > len(METHODS):
        raise InputError("bad_choice", "{name} must be one of: {choices} (got {value}).", name="methods",
                         choices=", ".join(METHODS), value=str(methods)[:40])
    for method in methods:
        check_choice("methods", method, METHODS)
    if not methods:
        raise InputError("no_methods", "Choose at least one method.")
    return [m for m in METHODS if m in methods]


def check_zoom(zoom_x: Any, zoom_y: Any, zoom_size: Any) -> tuple[float, float, int]:
    """The zoom centre (percent of width and height) and crop side, validated."""
    return (check_range("zoom_x", zoom_x, *LIMITS["zoom_x"]), check_range("zoom_y", zoom_y, *LIMITS["zoom_y"]),
            int(check_range("zoom_size", zoom_size, *LIMITS["zoom_size"], integer=True)))


def noise_levels_text(tr: Translator, lang: str, sigma: float, denoiser) -> str:
    """The σ → ᾱ → t* chain as numbers, computed by the same code the denoiser runs."""
    sigma_model = float(sigma_to_model(sigma))
    return tr.text("denoising.levels", lang, sigma=sigma, sigma_model=sigma_model,
                   alpha_bar=1.0 / (1.0 + sigma_model**2), tau=float(denoiser.levels.tau(sigma_model)) + 1.0)


def method_note(tr: Translator, lang: str, result: MethodResult) -> str:
    d = result.details or {}
    if result.name == "gaussian_heat":
        return tr.text("denoising.note.heat", lang, std=d["blur_std_px"], time=d["diffusion_time_px2"])
    if result.name == "diffusion_multi_step":
        return tr.text("denoising.note.multi", lang, steps=d["steps"], tau=d["t_star"], eta=d["eta"])
    if result.name == "diffusion_one_step":
        return tr.text("denoising.note.one", lang, tau=d["t_star"])
    return ""


def caption(tr: Translator, lang: str, result: MethodResult) -> str:
    name = tr.text(f"denoising.method.{result.name}", lang)
    if result.psnr is None:
        return tr.text("denoising.caption_time", lang, name=name, seconds=result.seconds)
    return tr.text("denoising.caption_scored", lang, name=name, psnr=result.psnr, ssim=result.ssim,
                   seconds=result.seconds)


def path_items(tr: Translator, lang: str, result: MethodResult) -> list[tuple[np.ndarray, str]]:
    """A few frames of the multi-step run, first (the noisy start) and last (the result) included."""
    run = result.run
    if run is None:
        return []
    picks = sorted(set(np.linspace(0, len(run.frames) - 1, min(PATH_FRAMES, len(run.frames))).round().astype(int)))
    items = []
    for i in picks:
        if i == len(run.frames) - 1:
            text = tr.text("denoising.path_caption_end", lang)
        else:  # the lesson's t = diffusers' τ + 1 (t = 0 is the clean image)
            text = tr.text("denoising.path_caption", lang, tau=run.taus[i] + 1.0, sigma=run.sigmas_255[i])
        items.append((_display(to_uint8(run.frames[i])), text))
    return items


def _display(image: np.ndarray) -> np.ndarray:
    return image[:, :, 0] if image.shape[2] == 1 else image


def _table(tr: Translator, lang: str, noisy: MethodResult, results: list[MethodResult]) -> dict:
    headers = [tr.text(f"denoising.col.{c}", lang) for c in ("method", "psnr", "ssim", "seconds", "notes")]
    rows = [[tr.text("denoising.noisy", lang), _fmt(noisy.psnr, 2), _fmt(noisy.ssim, 3), "", ""]]
    for r in results:
        rows.append([tr.text(f"denoising.method.{r.name}", lang), _fmt(r.psnr, 2), _fmt(r.ssim, 3),
                     f"{r.seconds:.2f}", method_note(tr, lang, r)])
    return {"headers": headers, "data": rows}


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


class Stopped(Exception):
    """Raised inside a method's worker thread when the user pressed Stop."""


def in_worker(work: Callable[[Callable[[int, int], None]], Any], interval: float = 0.25) -> Generator:
    """Run ``work(on_step)`` in a thread; yield its latest ``(i, n)`` progress every ``interval`` s.

    Returns (through ``yield from``) what ``work`` returned, or raises what it raised. If
    the consumer stops iterating (Stop pressed, the event cancelled), the next ``on_step``
    call raises :class:`Stopped`, so the thread ends after its current step.
    """
    state: dict[str, Any] = {"progress": None}
    done, stop = threading.Event(), threading.Event()

    def on_step(i: int, n: int) -> None:
        state["progress"] = (i, n)
        if stop.is_set():
            raise Stopped

    def main() -> None:
        try:
            state["result"] = work(on_step)
        except BaseException as error:  # noqa: BLE001 - handed back to the streaming thread
            state["error"] = error
        finally:
            done.set()

    threading.Thread(target=main, daemon=True, name="denoise-method").start()
    try:
        while not done.wait(interval):
            yield state["progress"]
    finally:
        stop.set()
    if "error" in state:
        raise state["error"]
    return state["result"]


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the denoising tab and wire its events."""
    examples = [str(p) for p in list_examples(noisy=True) if p.name != "digit.png"]
    device = model_device(settings.device)
    heavy = dict(concurrency_id="heavy", concurrency_limit=settings.heavy_concurrency)
    gr.Markdown(tr("denoising.intro"), latex_delimiters=LATEX)
    if not models.denoiser_available():
        log.warning("lesson 4: no usable denoiser at %s; classical methods only", models.DENOISER_PATH)
        gr.Markdown(tr("denoising.no_model"), elem_classes=["dl-warning"], elem_id="denoise-no-model")
    method_choices = [(tr(f"denoising.method.{m}"), m) for m in METHODS]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = ImageInput(value=examples[0] if examples else None, type="filepath", label=tr("denoising.image"),
                               sources=["upload", "clipboard"], height=240, elem_id="denoise-image")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=tr("denoising.examples"))
            sigma = gr.Slider(*LIMITS["sigma"], value=DEFAULTS["sigma"], step=1, label=tr("param.sigma"),
                              elem_id="denoise-sigma")
            seed = gr.Number(DEFAULTS["seed"], precision=0, label=tr("denoising.seed"), elem_id="denoise-seed")
            methods = gr.CheckboxGroup(method_choices, value=DEFAULT_METHODS, label=tr("param.methods"),
                                       elem_id="denoise-methods")
            with gr.Accordion(tr("denoising.options"), open=False, elem_id="denoise-options"):
                sigma_override = gr.Slider(*LIMITS["sigma_override"], value=DEFAULTS["sigma_override"], step=0.5,
                                           label=tr("param.sigma_override"), elem_id="denoise-sigma-override")
                steps = gr.Slider(*LIMITS["steps"], value=DEFAULTS["steps"], step=1, label=tr("param.steps"),
                                  elem_id="denoise-steps")
                eta = gr.Slider(*LIMITS["eta"], value=DEFAULTS["eta"], step=0.05, label=tr("denoising.eta"),
                                elem_id="denoise-eta")
                color = gr.Dropdown([(tr(f"denoising.color.{c}"), c) for c in COLOR_MODES], value=DEFAULTS["color"],
                                    label=tr("param.color"), elem_id="denoise-color")
                max_side = gr.Slider(*LIMITS["max_side"], value=DEFAULTS["max_side"], step=16,
                                     label=tr("denoising.max_side"), elem_id="denoise-max-side")
            with gr.Row():
                run = gr.Button(tr("denoising.run"), variant="primary", elem_id="denoise-run")
                stop = gr.Button(tr("denoising.stop"), variant="stop", elem_id="denoise-stop")
        with gr.Column(scale=3):
            status = gr.HTML(elem_id="denoise-status")
            notice = gr.Markdown(elem_id="denoise-notice")
            gallery = gr.Gallery(label=tr("denoising.gallery"), columns=4, height=420, format="png",
                                 object_fit="contain", elem_id="denoise-gallery")
            table = gr.Dataframe(headers=[tr.text(f"denoising.col.{c}", "en")
                                          for c in ("method", "psnr", "ssim", "seconds", "notes")],
                                 label=tr("denoising.table"), interactive=False, wrap=True, elem_id="denoise-table")
            with gr.Accordion(tr("denoising.zoom"), open=True, elem_id="denoise-zoom-box"):
                with gr.Row():
                    zoom_x = gr.Slider(*LIMITS["zoom_x"], value=DEFAULTS["zoom_x"], step=1, label=tr("param.zoom_x"),
                                       elem_id="denoise-zoom-x")
                    zoom_y = gr.Slider(*LIMITS["zoom_y"], value=DEFAULTS["zoom_y"], step=1, label=tr("param.zoom_y"),
                                       elem_id="denoise-zoom-y")
                    zoom_size = gr.Slider(*LIMITS["zoom_size"], value=DEFAULTS["zoom_size"], step=8,
                                          label=tr("param.zoom_size"), elem_id="denoise-zoom-size")
                zoom = gr.Plot(label=tr("denoising.zoom"), format="png", show_label=False, elem_id="denoise-zoom")
            path = gr.Gallery(label=tr("denoising.path"), columns=PATH_FRAMES, height=220, format="png",
                              object_fit="contain", elem_id="denoise-path")
            gr.Markdown(tr("denoising.why"), latex_delimiters=LATEX)
            summary_json = gr.JSON(label=tr("denoising.summary"), elem_id="denoise-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="denoise-run-id")
    lang = lang_input()

    def zoom_plot(finished: Finished, zoom: tuple[float, float, int], lang):
        zx, zy, size = zoom
        return denoise_plots.zoom_figure(finished.context, finished.panels, (zx / 100, zy / 100), size,
                                         tr.table("denoising.plot.", lang))

    @guarded(tr)
    def denoise(image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y,
                zoom_size, lang):
        chosen = check_methods(methods)
        steps = check_range("steps", steps, *LIMITS["steps"], integer=True)
        eta = check_range("eta", eta, *LIMITS["eta"])
        color = check_choice("color", color, COLOR_MODES)
        zoom = check_zoom(zoom_x, zoom_y, zoom_size)
        prepared = prepare(image, sigma, seed, sigma_override, max_side)
        notices = list(prepared.notices)
        denoiser = None
        if any(m in DIFFUSION_METHODS for m in chosen):
            try:
                denoiser = models.load_denoiser(device)
            except models.ModelUnavailable:
                chosen = [m for m in chosen if m not in DIFFUSION_METHODS]
                if not chosen:  # only the model was asked for: say why nothing can be done
                    raise
                notices.append(("denoising.no_model", {}))
        if "bm3d" in chosen and not classical.bm3d_available():
            chosen.remove("bm3d")
            notices.append(("denoising.no_bm3d", {}))
        if denoiser is not None:
            notices.insert(1, ("denoising.levels", {}))
        if not chosen:
            raise InputError("no_methods", "Choose at least one method.")

        def notice_text():
            lines = []
            for key, fields in notices:
                if key == "denoising.levels":
                    lines.append(noise_levels_text(tr, lang, prepared.sigma, denoiser))
                else:
                    lines.append(tr.text(key, lang, **fields))
            return "\n\n".join(lines)

        noisy_u8 = to_uint8(prepared.noisy)
        noisy = MethodResult("noisy", noisy_u8, 0.0, 0.0)
        if prepared.clean is not None:
            noisy.psnr, noisy.ssim = score(noisy_u8, prepared.clean)
        gallery_items = []
        if prepared.clean is not None:
            gallery_items.append((_display(prepared.clean), tr.text("denoising.clean", lang)))
        noisy_caption = tr.text("denoising.noisy", lang)
        if noisy.psnr is not None:
            noisy_caption += f" · {noisy.psnr:.2f} dB · SSIM {noisy.ssim:.3f}"
        gallery_items.append((_display(noisy_u8), noisy_caption))
        results: list[MethodResult] = []
        skip = gr.skip()
        yield (progress_html(0.0, tr.text("denoising.adding", lang)), notice_text(), gallery_items,
               _table(tr, lang, noisy, results), skip, [], skip, "")
        for i, method in enumerate(chosen):
            text = tr.text("denoising.running", lang, method=tr.text(f"denoising.method.{method}", lang),
                           i=i + 1, n=len(chosen))
            yield (progress_html(i / len(chosen), text), skip, skip, skip, skip, skip, skip, skip)

            def work(on_step, method=method):
                return run_method(method, prepared.noisy, prepared.sigma, clean=prepared.clean,
                                  denoiser=denoiser, steps=steps, eta=eta, seed=seed, color=color, on_step=on_step)

            runner = in_worker(work)
            try:
                while True:
                    try:
                        progress = next(runner)
                    except StopIteration as finished:
                        result = finished.value
                        break
                    if progress is not None:  # the multi-step method reports its steps
                        step_text = text + " " + tr.text("denoising.step", lang, i=progress[0], n=progress[1])
                        fraction = (i + progress[0] / progress[1]) / len(chosen)
                        yield (progress_html(fraction, step_text), skip, skip, skip, skip, skip, skip, skip)
            finally:
                runner.close()  # cancelled: the worker stops after its current step
            results.append(result)
            gallery_items.append((_display(result.image), caption(tr, lang, result)))
            yield (skip, skip, gallery_items, _table(tr, lang, noisy, results), skip, skip, skip, skip)
        context = prepared.clean if prepared.clean is not None else noisy_u8
        panels = ([(tr.text("denoising.clean", lang), prepared.clean)] if prepared.clean is not None else [])
        panels += [(tr.text("denoising.noisy", lang), noisy_u8)]
        panels += [(tr.text(f"denoising.method.{r.name}", lang), r.image) for r in results]
        finished = Finished(context, panels)
        new_id = RESULTS.add(finished)
        multi = next((r for r in results if r.run is not None), None)
        total = sum(r.seconds for r in results)
        yield (progress_html(1.0, tr.text("denoising.done", lang, n=len(results), seconds=total)),
               notice_text(), gallery_items, _table(tr, lang, noisy, results),
               zoom_plot(finished, zoom, lang), path_items(tr, lang, multi) if multi else [],
               summary(prepared.sigma, prepared.sigma_estimated, results, noisy), new_id)

    @guarded(tr)
    def rezoom(run_id, zoom_x, zoom_y, zoom_size, lang):
        if not run_id:
            return gr.skip()
        return zoom_plot(RESULTS.get(run_id), check_zoom(zoom_x, zoom_y, zoom_size), lang)

    inputs = [image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y, zoom_size,
              lang]
    outputs = [status, notice, gallery, table, zoom, path, summary_json, run_id]
    event = run.click(denoise, inputs, outputs, js=LANG_JS, api_name="denoise", show_progress="hidden", **heavy)

    def stopped(lang):
        return progress_html(0.0, tr.text("denoising.stopped", lang))

    stop.click(stopped, [lang], status, js=LANG_JS, cancels=[event], queue=False, api_visibility="private")
    gr.on([zoom_x.input, zoom_y.input, zoom_size.input], rezoom, [run_id, zoom_x, zoom_y, zoom_size, lang],
          zoom, js=LANG_JS, api_name="denoise_zoom", concurrency_id="light", trigger_mode="always_last",
          show_progress="hidden")
