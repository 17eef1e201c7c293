"""Lesson 5 tab: denoise your own photo with a diffusion model, side by side with the classics.

The methods run one after the other as one job of the server's job queue
(:mod:`diffusion.serving.jobs`): a student sees their place while it waits, and identical
requests (the same photo, noise seed and settings) share one run. The multi-step method
reports its DDIM steps through the run contract, and Stop (or a closed page) ends the run
after its current step unless another student is watching it too. A finished comparison stays in a
bounded :class:`~diffusion.serving.store.RunStore` for the zoom view.

The handlers (:class:`DenoisingHandlers`) return ``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np

from diffusion.errors import InputError, check_choice, check_range
from diffusion.examples import list_examples
from diffusion.lessons.denoising import (
    COLOR_MODES, DEFAULT_METHODS, DEFAULTS, DIFFUSION_METHODS, LIMITS, METHODS, MethodResult, Progress,
    check_methods, check_zoom, classical, compare_methods, load_denoiser, prepare, score, summary, to_uint8,
)
from diffusion.lessons.denoising import figures as denoise_plots
from diffusion.lessons.denoising.calls import CallingDenoiser
from diffusion.models import registry as models
from diffusion.models.denoiser_net import sigma_to_model
from diffusion.serving import gpu
from diffusion.serving.jobs import JobQueue, Ticket, Waiting, request_key
from diffusion.serving.store import RunStore
from diffusion.ui.handlers import EXAMPLES_CLIENT, bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, ImageInput, progress_html, waiting_html

log = logging.getLogger("diffusion.ui")


def _gpu_call(fn, kwargs, gpu_s, partial, callback, stop):
    """The denoiser's network work as one GPU call (in another process on ZeroGPU)."""
    return gpu.execute(gpu.GpuWork(fn, kwargs, gpu_s=gpu_s, partial=partial), callback, stop)

PATH_FRAMES = 5  # multi-step frames shown
GALLERY_INTERVAL_S = 0.5  # the gallery grows while the methods run, at most this often
RESULTS_BYTES = 400 * 1024 * 1024  # finished comparisons kept for the zoom view
# First guesses of each method's seconds per 100,000 pixels (per step for multi-step) on a
# 2-core CPU; the job queue corrects them by the runs it measures.
METHOD_COST_S = {"diffusion_one_step": 0.15, "diffusion_multi_step": 0.15, "gaussian_heat": 0.01,
                 "total_variation": 0.1, "nl_means": 0.3, "bm3d": 4.0}


@dataclass
class Finished:
    """A finished comparison, kept for the zoom view."""

    context: np.ndarray
    panels: list[tuple[str, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return self.context.nbytes + sum(image.nbytes for _, image in self.panels)


RESULTS = RunStore(RESULTS_BYTES, missing_code="result_expired", expired_code="result_expired")


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


class DenoisingHandlers:
    """The tab's event handlers; each yields or returns ``{output name: value}``.

    Args:
        tr: The UI strings.
        device: Where the denoiser runs.
    """

    def __init__(self, tr: Translator, device: str, jobs: JobQueue | None = None) -> None:
        self.tr, self.device = tr, device
        self.jobs = jobs or JobQueue()

    def submit(self, chosen: list[str], prepared, denoiser, steps: int, eta: float, seed: int, color: str,
               client: str, capped: bool = True) -> Ticket:
        """Queue the comparison (or join an identical one): the same noisy pixels and settings share a run."""
        digest = hashlib.sha256(np.ascontiguousarray(prepared.noisy).tobytes()).hexdigest()
        clean = (hashlib.sha256(prepared.clean.tobytes()).hexdigest() if prepared.clean is not None else None)
        key = request_key("denoising", {
            "noisy": digest, "shape": prepared.noisy.shape, "clean": clean, "sigma": prepared.sigma,
            "methods": chosen, "steps": steps, "eta": eta, "seed": seed, "color": color, "device": self.device,
            "precision": getattr(denoiser, "precision", None)}, models.weights_digest(models.DENOISER))
        pixels = prepared.noisy.shape[0] * prepared.noisy.shape[1] / 1e5
        estimate = pixels * sum(METHOD_COST_S.get(m, 0.1) * (steps if m == "diffusion_multi_step" else 1)
                                for m in chosen)
        return self.jobs.submit(
            "denoising", lambda callback, stop: compare_methods(
                chosen, prepared.noisy, prepared.sigma, clean=prepared.clean, denoiser=denoiser, steps=steps,
                eta=eta, seed=seed, color=color, callback=callback, stop=stop),
            key=key, client=client, estimate_s=estimate, capped=capped)

    def zoom_plot(self, finished: Finished, zoom: tuple[float, float, int], lang):
        zx, zy, size = zoom
        return denoise_plots.zoom_figure(finished.context, finished.panels, (zx / 100, zy / 100), size,
                                         self.tr.table("denoising.plot.", lang))

    def example(self, image, lang):
        """The comparison the tab opens with: the first example photo at the default settings (cached)."""
        d = DEFAULTS
        yield from self.denoise(image, d["sigma"], d["seed"], DEFAULT_METHODS, d["sigma_override"], d["steps"],
                                d["eta"], d["color"], d["max_side"], d["zoom_x"], d["zoom_y"], d["zoom_size"], lang,
                                example=True)

    def denoise(self, image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y,
                zoom_size, lang, request: gr.Request = None, example: bool = False):
        """``/denoise``: add noise (or estimate it), run each chosen method, score and compare."""
        tr = self.tr
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
                denoiser = CallingDenoiser(load_denoiser(self.device), self.device, _gpu_call)
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
        first = tr.text("example.preparing" if example else "denoising.adding", lang)
        yield {"status": progress_html(0.0, first), "notice": notice_text(),
               "gallery": gallery_items, "table": _table(tr, lang, noisy, []), "path": [], "run_id": ""}
        ticket = self.submit(chosen, prepared, denoiser, steps, eta, seed, color,
                             EXAMPLES_CLIENT if example else client_of(request), capped=not example)
        shown, sent = 0, time.monotonic()
        try:
            for update in ticket.updates(heartbeat=True):
                if isinstance(update, Waiting):
                    yield {"status": waiting_html(tr, lang, update)}
                elif isinstance(update, Progress):
                    i = update.method
                    answer = {}
                    if i < len(chosen):
                        text = tr.text("denoising.running", lang, n=len(chosen), i=i + 1,
                                       method=tr.text(f"denoising.method.{chosen[i]}", lang))
                        fraction = i / len(chosen)
                        if update.inner is not None:  # the multi-step method reports its steps
                            text += " " + tr.text("denoising.step", lang, i=update.inner.step + 1,
                                                  n=update.inner.total)
                            fraction += (update.inner.step + 1) / update.inner.total / len(chosen)
                        answer["status"] = progress_html(fraction, text)
                    # A method finished: show it, at most every GALLERY_INTERVAL_S (each gallery update
                    # encodes every picture in it again; the final answer shows them all anyway).
                    if len(update.done) > shown and time.monotonic() - sent >= GALLERY_INTERVAL_S:
                        shown, sent = len(update.done), time.monotonic()
                        answer.update(gallery=gallery_items + [(_display(r.image), caption(tr, lang, r))
                                                               for r in update.done],
                                      table=_table(tr, lang, noisy, update.done))
                    yield answer
        finally:
            ticket.close()  # cancelled (Stop, a closed page): the run ends unless others watch it too
        results = ticket.result.results
        gallery_items += [(_display(r.image), caption(tr, lang, r)) for r in results]
        context = prepared.clean if prepared.clean is not None else noisy_u8
        panels = ([(tr.text("denoising.clean", lang), prepared.clean)] if prepared.clean is not None else [])
        panels += [(tr.text("denoising.noisy", lang), noisy_u8)]
        panels += [(tr.text(f"denoising.method.{r.name}", lang), r.image) for r in results]
        finished = Finished(context, panels)
        new_id = RESULTS.add(finished)
        multi = next((r for r in results if r.run is not None), None)
        total = sum(r.seconds for r in results)
        done = tr.text("denoising.done", lang, n=len(results), seconds=total)
        if example:
            done = tr.text("example.shown", lang) + " " + done
        elif ticket.shared:
            done += " " + tr.text("queue.shared", lang)
        yield {"status": progress_html(1.0, done),
               "notice": notice_text(), "gallery": gallery_items, "table": _table(tr, lang, noisy, results),
               "zoom": self.zoom_plot(finished, zoom, lang), "path": path_items(tr, lang, multi) if multi else [],
               "run_id": new_id, "summary": {**summary(prepared.sigma, prepared.sigma_estimated, results, noisy,
                                                       prepared.sigma_stderr),
                                             "shared": ticket.shared, "stopped": ticket.result.stopped}}

    def rezoom(self, run_id, zoom_x, zoom_y, zoom_size, lang):
        """``/denoise_zoom``: another crop of a finished comparison."""
        if not run_id:
            return {}
        return {"zoom": self.zoom_plot(RESULTS.get(run_id), check_zoom(zoom_x, zoom_y, zoom_size), lang)}

    def stopped(self, lang):
        """The status line after Stop (the event itself is cancelled)."""
        return {"status": progress_html(0.0, self.tr.text("denoising.stopped", lang))}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Lay out the denoising tab and wire its events to :class:`DenoisingHandlers`."""
    examples = [str(p) for p in list_examples(noisy=True) if p.name != "digit.png"]
    handlers = DenoisingHandlers(tr, settings.device, settings.jobs)
    heavy = settings.model_events()
    gr.Markdown(tr("denoising.intro"), latex_delimiters=LATEX)
    if not models.denoiser_available():
        log.warning("lesson 5: no usable denoiser at %s; classical methods only", models.MODELS[models.DENOISER].path)
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
                                       info=tr("denoising.methods_info"), elem_id="denoise-methods")
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

    outputs = dict(status=status, notice=notice, gallery=gallery, table=table, zoom=zoom, path=path, run_id=run_id,
                   summary=summary_json)
    inputs = [image, sigma, seed, methods, sigma_override, steps, eta, color, max_side, zoom_x, zoom_y, zoom_size,
              lang]
    event = run.click(bind(guarded(tr)(handlers.denoise), outputs), inputs, list(outputs.values()), js=LANG_JS,
                      api_name="denoise", show_progress="hidden", **heavy)
    if examples:  # the tab opens with the first example's comparison at the default settings
        def opening(lang):
            yield from handlers.example(examples[0], lang)
        demo.load(bind(guarded(tr)(opening), outputs), [lang], list(outputs.values()), js=LANG_JS, show_progress="hidden",
                  api_visibility="private", **heavy)
        settings.examples.append(lambda: list(handlers.example(examples[0], "en")))
    stop.click(bind(handlers.stopped, outputs), [lang], status, js=LANG_JS, cancels=[event], queue=False,
               api_visibility="private")
    gr.on([zoom_x.input, zoom_y.input, zoom_size.input], bind(guarded(tr)(handlers.rezoom), outputs),
          [run_id, zoom_x, zoom_y, zoom_size, lang], zoom, js=LANG_JS, api_name="denoise_zoom",
          concurrency_id="light", trigger_mode="always_last", show_progress="hidden")
