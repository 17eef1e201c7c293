"""Lesson 7, inpainting and super-resolution: the digit model restores a digit it is shown only in part.

Both sections work as lesson 4's tab does. The validated request goes to the server's job
queue, which runs the core (:func:`~diffusion.lessons.applications.inpaint.inpaint`,
RePaint; :func:`~diffusion.lessons.applications.superres.super_resolve`, DDNM) through
:func:`diffusion.serving.gpu.execute` (a GPU call on ZeroGPU) and streams the newest step.
Identical requests share one run, Stop ends it after its current step, and the finished
run stays in a bounded :class:`~diffusion.serving.store.RunStore` under a random run id
for the step slider. Each section opens with a finished example run of its defaults.

The handlers return ``{output name: value}`` and need no Blocks; the layouts are
:func:`build_inpaint` and :func:`build_super_resolve`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gradio as gr
import numpy as np

from diffusion.devices import choose_precision
from diffusion.errors import InputError, check_choice
from diffusion.lessons.applications import restore_calls as calls
from diffusion.lessons.applications.inpaint import LIMITS, PRESET_MASKS, SAMPLERS, InpaintRequest, preset_mask
from diffusion.lessons.applications.superres import LIMITS as SR_LIMITS
from diffusion.lessons.applications.superres import PROJECTIONS, SuperResRequest, bicubic_upscale, check_factor
from diffusion.models import registry as models
from diffusion.schedule import display_t
from diffusion.serving import gpu
from diffusion.serving.jobs import JobQueue, Ticket, Waiting, request_key
from diffusion.serving.store import RunStore
from diffusion.ui.applications import restore_views as views
from diffusion.ui.handlers import EXAMPLES_CLIENT, bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, progress_html, waiting_html

MODEL = calls.MODEL
log = logging.getLogger("diffusion.ui.applications")
SCOPE = "applications"  # this lesson's own parameter names come first in error messages
MASKS = (*PRESET_MASKS, "drawn")
T_MAX = 1000  # the step sliders' top; the model's own T is checked on the server
RUN_BYTES = 200 * 2**20  # finished runs kept for the step slider (a default inpainting run: 0.2 MB)
INPAINT = InpaintRequest(image=None, mask=None)  # the core's defaults
SUPERRES = SuperResRequest(image=None)
# What each section opens with: a held-out 3 (the held-out digits are sorted by class, 100 each).
EXAMPLE = {"source": "heldout", "heldout_index": 300, "mask": "top", "digit": "any", "factor": 4}
INPAINT_RUNS = RunStore(RUN_BYTES, missing_code="restore_no_run", expired_code="restore_run_expired")
SUPERRES_RUNS = RunStore(RUN_BYTES, missing_code="restore_no_run", expired_code="restore_run_expired")


class _RestoreHandlers:
    """What both sections share: the job, the stream, the step slider and Stop.

    A section says its ``KIND`` (the job's and the summary's), its ``RUNS`` store, its
    ``CALLS`` (the GPU call and its ``rebuilt``) and what a step shows: ``live(info)``,
    ``scrubbed(run, info)`` and ``finished(run, lang)``.
    """

    KIND: str
    RUNS: RunStore
    CALLS: dict[str, Any]

    def __init__(self, tr: Translator, device: str, jobs: JobQueue | None = None) -> None:
        self.tr, self.device = tr, device
        self.jobs = jobs or JobQueue()
        self.precision = choose_precision(device)

    def validated(self, request: Any) -> Any:
        """``request`` checked against the model's T (raises the core's :class:`InputError`)."""
        return request.validated(models.load_unet_model(MODEL, self.device)[1]["num_train_timesteps"])

    def submit(self, request: Any, client: str, capped: bool = True) -> Ticket:
        """Queue ``request`` (or join an identical one); its run comes from the ticket."""
        request = self.validated(request)  # fail before it queues
        key = request_key(self.KIND, {**request.key(), "record": True, "precision": self.precision,
                                      "device": self.device}, models.weights_digest(MODEL))
        work = gpu.GpuWork(self.CALLS["call"], {"request": request, "device": self.device,
                                                "precision": self.precision},
                           gpu_s=calls.gpu_seconds(request), partial=self.CALLS["rebuilt"])
        return self.jobs.submit(self.KIND, lambda callback, stop: gpu.execute(work, callback, stop), key=key,
                                client=client, estimate_s=calls.cpu_seconds(request), capped=capped)

    def stream(self, asked: Any, facts: dict[str, Any], first: dict[str, Any], lang: Any, request: Any,
               example: bool):
        """Run ``asked``: a first answer (with ``first``), one per step, then the run (``facts`` in its summary)."""
        tr, runs = self.tr, self.RUNS
        new_id = runs.new_id()
        runs.reserve(new_id)  # a Stop pressed before the run is queued still reaches it
        try:
            yield {"status": progress_html(0, tr.text("example.preparing" if example else
                                                      "applications.restore.loading", lang)),
                   **first, "gallery": [], "scrub": gr.update(interactive=False, maximum=T_MAX, value=1),
                   "run_id": new_id}
            ticket = self.submit(asked, EXAMPLES_CLIENT if example else client_of(request), capped=not example)
        except BaseException:  # the page went away or the request was refused: no run takes the id
            runs.release(new_id)
            raise
        runs.add_live(new_id, ticket)
        run = None
        try:
            for info in ticket.updates():
                if isinstance(info, Waiting):
                    yield {"status": waiting_html(tr, lang, info)}
                    continue
                text = tr.text("applications.restore.progress", lang, step=info.step + 1, total=info.total,
                               t=display_t(info.t), seconds=time.perf_counter() - ticket.job.live.started)
                yield {"status": progress_html((info.step + 1) / info.total, text), **self.live(info)}
            run = ticket.result
        finally:
            ticket.close()  # the page was closed or the event cancelled: the run ends unless others watch it
            runs.finish(new_id, run)
        if run is None:  # the server is shutting down
            raise InputError("busy", "The server is busy. Please try again in a moment.")
        n, total = len(run), run.request.num_inference_steps
        if run.stopped:
            text = tr.text("applications.restore.stopped", lang, done=n, total=total, seconds=run.seconds)
        else:
            text = tr.text("applications.restore.finished", lang, total=n, seconds=run.seconds)
        if example:
            text = tr.text("example.shown", lang) + " " + text
        elif ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        answer = self.finished(run, lang)
        core = answer["summary"]
        answer["summary"] = {"kind": core.pop("kind"), **facts, **core, "run_id": new_id, "shared": ticket.shared}
        yield {"status": progress_html(n / total, text), **answer,
               "scrub": gr.update(interactive=n > 1, maximum=max(n, 2), value=n), "run_id": new_id}

    def replay(self, current_id, step, lang):
        """The step slider: step ``step`` (1-based) of a finished run, from the store."""
        with views.worded(self.tr, lang):
            run = self.RUNS.get(current_id)
            info = run.scrub(step)
        text = self.tr.text("applications.restore.scrubbed", lang, step=info.step + 1, total=len(run),
                            t=display_t(info.t), alpha_bar=info.alpha_bar)
        return {"status": progress_html((info.step + 1) / len(run), text), **self.scrubbed(run, info)}

    def stop(self, current_id) -> None:
        """End the live run after its current step (it stays scrubbable)."""
        self.RUNS.stop(current_id)


class InpaintHandlers(_RestoreHandlers):
    """The inpainting section's events: ``/inpaint``, ``/inpaint_scrub``, ``/inpaint_stop`` and the previews."""

    KIND = "inpaint"
    RUNS = INPAINT_RUNS
    CALLS = {"call": calls.inpaint_call, "rebuilt": calls.rebuilt_inpaint}

    def request(self, source, heldout_index, upload, drawing, mask, mask_drawing, digit, guidance_scale, fills,
                seed, num_inference_steps, resample, sampler) -> tuple[InpaintRequest, dict[str, Any]]:
        """The validated request, and what the summary says about its digit and hole."""
        picture, facts = views.chosen_digit(source, heldout_index, upload, drawing)
        mask = check_choice("mask", mask, MASKS)
        hole = views.read_pixels(mask_drawing) > 0 if mask == "drawn" else preset_mask(mask)
        asked = InpaintRequest(image=picture, mask=hole, digit=digit, guidance_scale=guidance_scale, fills=fills,
                               seed=seed, sampler=sampler, num_inference_steps=num_inference_steps,
                               resample=resample)
        return self.validated(asked), {**facts, "mask_choice": mask}

    def run(self, source, heldout_index, upload, drawing, mask, mask_drawing, digit, guidance_scale, fills, seed,
            num_inference_steps, resample, sampler, lang, request: gr.Request = None, example: bool = False):
        """``/inpaint``: stream a RePaint run, then the fills, the step slider and the summary."""
        with views.worded(self.tr, lang):
            asked, facts = self.request(source, heldout_index, upload, drawing, mask, mask_drawing, digit,
                                        guidance_scale, fills, seed, num_inference_steps, resample, sampler)
        yield from self.stream(asked, facts, {"picture": views.with_hole(asked.image, asked.mask)}, lang, request,
                               example)

    def example(self, lang):
        """The run the section opens with: the defaults, shared by every student (and cached)."""
        d, e = INPAINT, EXAMPLE
        yield from self.run(e["source"], e["heldout_index"], None, "", e["mask"], "", e["digit"], d.guidance_scale,
                            d.fills, d.seed, d.num_inference_steps, d.resample, d.sampler, lang, example=True)

    def live(self, info):
        return {"x_t": views.grid(info.x_t), "x0": views.grid(info.x0_pred)}

    def scrubbed(self, run, info):
        return self.live(info)

    def finished(self, run, lang):
        items = [(picture, self.tr.text("applications.inpaint.caption", lang, seed=seed, psnr=views.db(psnr)))
                 for picture, seed, psnr in zip(run.pictures_uint8(), run.seeds, run.hole_psnr())]
        return {"picture": views.with_hole(run.request.image, run.request.mask), "x_t": views.grid(run.samples),
                "x0": views.grid(run.frame(len(run) - 1).x0_pred), "gallery": items, "summary": run.summary()}

    @staticmethod
    def digit_preview(source, heldout_index, upload, drawing, mask, mask_drawing, lang):
        """A new digit: it with its hole, and the hole canvas over it (nothing while it cannot be read)."""
        return views.inpaint_preview(source, heldout_index, upload, drawing, mask, mask_drawing, canvas=True)

    @staticmethod
    def hole_preview(source, heldout_index, upload, drawing, mask, mask_drawing, lang):
        """Another hole: the digit with it."""
        return views.inpaint_preview(source, heldout_index, upload, drawing, mask, mask_drawing, canvas=False)


class SuperResHandlers(_RestoreHandlers):
    """The super-resolution section's events: ``/super_resolve``, its scrub and stop, and the preview."""

    KIND = "super_resolve"
    RUNS = SUPERRES_RUNS
    CALLS = {"call": calls.super_resolve_call, "rebuilt": calls.rebuilt_super_resolve}

    def request(self, source, heldout_index, upload, drawing, factor, low_resolution, digit, guidance_scale, fills,
                seed, num_inference_steps, eta, projection) -> tuple[SuperResRequest, dict[str, Any]]:
        """The validated request (the measurement alone with ``low_resolution``) and its summary facts."""
        picture, facts = views.chosen_digit(source, heldout_index, upload, drawing)
        factor = check_factor(factor)
        if not isinstance(low_resolution, (bool, np.bool_)):
            raise InputError("bad_choice", "{name} must be one of: {choices} (got {value}).", name="low_resolution",
                             choices="true, false", value=str(low_resolution)[:40])
        image = views.block_mean(picture, factor) if low_resolution else picture
        asked = SuperResRequest(image=image, factor=factor, digit=digit, guidance_scale=guidance_scale, fills=fills,
                                seed=seed, num_inference_steps=num_inference_steps, eta=eta, projection=projection)
        return self.validated(asked), {**facts, "low_resolution": bool(low_resolution)}

    def run(self, source, heldout_index, upload, drawing, factor, low_resolution, digit, guidance_scale, fills, seed,
            num_inference_steps, eta, projection, lang, request: gr.Request = None, example: bool = False):
        """``/super_resolve``: stream a DDNM run, then the results beside bicubic, with their numbers."""
        with views.worded(self.tr, lang):
            asked, facts = self.request(source, heldout_index, upload, drawing, factor, low_resolution, digit,
                                        guidance_scale, fills, seed, num_inference_steps, eta, projection)
        first = {"low": views.enlarged(asked.low, asked.factor),
                 "bicubic": views.native(bicubic_upscale(asked.low, asked.factor)), "table": ""}
        yield from self.stream(asked, facts, first, lang, request, example)

    def example(self, lang):
        """The run the section opens with: the defaults, shared by every student (and cached)."""
        d, e = SUPERRES, EXAMPLE
        yield from self.run(e["source"], e["heldout_index"], None, "", e["factor"], False, e["digit"],
                            d.guidance_scale, d.fills, d.seed, d.num_inference_steps, d.eta, d.projection, lang,
                            example=True)

    def live(self, info):
        return {"x_t": views.grid(info.x_t), "x0_net": views.grid(info.x0_network), "x0": views.grid(info.x0_pred)}

    def scrubbed(self, run, info):
        return {"x_t": views.grid(info.x_t), "x0_net": views.grid(run.x0_network[info.step].float()),
                "x0": views.grid(info.x0_pred)}

    def finished(self, run, lang):
        tr, f, res = self.tr, run.request.factor, run.result()
        bicubic_gap = views.consistency(res.bicubic, res.low, f)
        rows = [(tr.text("applications.superres.bicubic", lang), res.psnr_bicubic, bicubic_gap)]
        items = []
        for k, (picture, seed, gap) in enumerate(zip(res.pictures_uint8(), run.seeds, res.consistency)):
            psnr = None if res.psnr is None else res.psnr[k]
            items.append((picture, tr.text("applications.superres.caption", lang, seed=seed, psnr=views.db(psnr))))
            rows.append((tr.text("applications.superres.fill", lang, seed=seed), psnr, gap))
        head = [tr.text(f"applications.superres.col.{c}", lang) for c in ("picture", "psnr", "gap")]
        table = views.scores_table(head, rows)
        summary = run.summary()
        summary["bicubic_consistency"] = round(bicubic_gap, 7)
        return {"low": views.enlarged(res.low, f), "bicubic": views.native(res.bicubic),
                "x_t": views.grid(run.samples), "x0_net": views.grid(run.x0_network[-1].float()),
                "x0": views.grid(run.frame(len(run) - 1).x0_pred), "gallery": items, "table": table,
                "summary": summary}

    @staticmethod
    def preview(source, heldout_index, upload, drawing, factor, low_resolution, lang):
        """The original, the measurement y and bicubic for the chosen digit (nothing while it cannot be read)."""
        return views.superres_preview(source, heldout_index, upload, drawing, factor, low_resolution)


def _model_ready(tr: Translator, section: str) -> bool:
    if models.available(MODEL):
        return True
    log.warning("lesson 7's %s section is off: no usable model at %s", section, models.MODELS[MODEL].path)
    gr.Markdown(tr("applications.no_model"), elem_classes=["dl-warning"], elem_id=f"{section}-no-model")
    return False


def _wire(tr, settings, demo, handlers, name, buttons, inputs, outputs, scrub_out) -> None:
    """The section's run (``/<name>``), the example it opens with, Stop and the step slider."""
    run, stop = buttons
    out = list(outputs.values())
    run.click(bind(guarded(tr, SCOPE)(handlers.run), outputs), inputs, out, js=LANG_JS, api_name=name,
              show_progress="hidden", **settings.model_events())
    demo.load(bind(guarded(tr, SCOPE)(handlers.example), outputs), [inputs[-1]], out, js=LANG_JS,
              show_progress="hidden", api_visibility="private", **settings.model_events())
    settings.examples.append(lambda: list(handlers.example("en")))  # computed once, at start-up
    stop.click(handlers.stop, [outputs["run_id"]], None, queue=False, api_name=f"{name}_stop")
    outputs["scrub"].input(bind(guarded(tr, SCOPE)(handlers.replay), scrub_out),
                           [outputs["run_id"], outputs["scrub"], inputs[-1]], list(scrub_out.values()), js=LANG_JS,
                           api_name=f"{name}_scrub", concurrency_id="light", trigger_mode="always_last",
                           show_progress="hidden")


def _on(tr, events, fn, inputs, outputs) -> None:
    """A light private preview after each of ``events``."""
    for event in events:
        event(bind(guarded(tr, SCOPE)(fn), outputs), inputs, list(outputs.values()), js=LANG_JS,
              concurrency_id="light", show_progress="hidden", api_visibility="private", trigger_mode="always_last")


def build_inpaint(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """The inpainting section: explanation, the digit and its hole, the live steps, the fills."""
    gr.Markdown(tr("applications.inpaint.intro"), latex_delimiters=LATEX)
    if not _model_ready(tr, "inpaint"):
        return
    handlers, e, d = InpaintHandlers(tr, settings.device, settings.jobs), EXAMPLE, INPAINT
    start = views.heldout_digit(e["heldout_index"])[0]
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            source, index, upload, drawing = views.source_inputs(tr, "inpaint", e["source"], e["heldout_index"])
            mask = gr.Radio([(tr(f"applications.inpaint.mask.{m}"), m) for m in MASKS], value=e["mask"],
                            label=tr("param.mask"), elem_id="inpaint-mask")
            with gr.Group(visible=False, elem_id="inpaint-mask-box") as mask_box:
                gr.Markdown(tr("applications.inpaint.mask_hint"))
                mask_canvas = views.pixel_canvas(tr, "mask", "inpaint-mask-canvas", views.canvas_value(None, start))
            digit, guidance, fills, seed = views.class_inputs(tr, "inpaint", e["digit"], d)
            with gr.Accordion(tr("applications.options"), open=False, elem_id="inpaint-options"):
                steps = gr.Slider(1, T_MAX, value=d.num_inference_steps, step=1, label=tr("param.num_inference_steps"),
                                  elem_id="inpaint-steps")
                resample = gr.Slider(*LIMITS["resample"], value=d.resample, step=1, label=tr("param.resample"),
                                     info=tr("applications.inpaint.resample_info"), elem_id="inpaint-resample")
                sampler = gr.Dropdown([(tr(f"sampler.{s}"), s) for s in SAMPLERS], value=d.sampler,
                                      label=tr("param.sampler"), elem_id="inpaint-sampler")
            buttons = views.run_buttons(tr, "inpaint")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="inpaint-status")
            with gr.Row():
                picture = views.image_box(tr("applications.inpaint.picture"), "inpaint-picture",
                                          views.with_hole(start, preset_mask(e["mask"])))
                x_t = views.image_box(tr("applications.restore.x_t"), "inpaint-xt")
                x0 = views.image_box(tr("applications.restore.x0"), "inpaint-x0")
            results = views.result_widgets(tr, "inpaint", T_MAX)
            summary = gr.JSON(label=tr("applications.restore.summary"), elem_id="inpaint-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="inpaint-run-id")
    lang = lang_input()
    outputs = dict(status=status, picture=picture, x_t=x_t, x0=x0, gallery=results["gallery"],
                   scrub=results["scrub"], run_id=run_id, summary=summary)
    inputs = [source, index, upload, drawing, mask, mask_canvas, digit, guidance, fills, seed, steps, resample,
              sampler, lang]
    _wire(tr, settings, demo, handlers, "inpaint", buttons, inputs, outputs, dict(status=status, x_t=x_t, x0=x0))
    chosen = [source, index, upload, drawing, mask, mask_canvas, lang]
    _on(tr, (source.change, index.change, upload.change, drawing.change), handlers.digit_preview, chosen,
        dict(picture=picture, mask_canvas=mask_canvas))
    _on(tr, (mask.change, mask_canvas.change), handlers.hole_preview, chosen, dict(picture=picture))
    mask.change(lambda m: gr.update(visible=m == "drawn"), mask, mask_box, queue=False, api_visibility="private")


def build_super_resolve(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """The super-resolution section: explanation, the digit and its measurement, the steps, the results."""
    gr.Markdown(tr("applications.superres.intro"), latex_delimiters=LATEX)
    if not _model_ready(tr, "superres"):
        return
    handlers, e, d = SuperResHandlers(tr, settings.device, settings.jobs), EXAMPLE, SUPERRES
    first = views.superres_preview(e["source"], e["heldout_index"], None, "", e["factor"], False)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            source, index, upload, drawing = views.source_inputs(tr, "superres", e["source"], e["heldout_index"])
            factor = gr.Radio([(tr(f"applications.superres.factor.{f}"), f) for f in (2, 4)], value=e["factor"],
                              label=tr("applications.param.factor"), elem_id="superres-factor")
            low_resolution = gr.Checkbox(False, label=tr("applications.superres.low_resolution"),
                                         info=tr("applications.superres.low_resolution_info"),
                                         elem_id="superres-low-resolution")
            digit, guidance, fills, seed = views.class_inputs(tr, "superres", e["digit"], d)
            with gr.Accordion(tr("applications.options"), open=False, elem_id="superres-options"):
                steps = gr.Slider(1, T_MAX, value=d.num_inference_steps, step=1, label=tr("param.num_inference_steps"),
                                  elem_id="superres-steps")
                eta = gr.Slider(*SR_LIMITS["eta"], value=d.eta, step=0.05, label=tr("param.eta"),
                                elem_id="superres-eta")
                projection = gr.Dropdown([(tr(f"applications.superres.projection.{p}"), p) for p in PROJECTIONS],
                                         value=d.projection, label=tr("param.projection"), elem_id="superres-projection")
            buttons = views.run_buttons(tr, "superres")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="superres-status")
            with gr.Row():
                original = views.image_box(tr("applications.superres.original"), "superres-original", first["original"])
                low = views.image_box(tr("applications.superres.low"), "superres-low", first["low"])
                bicubic = views.image_box(tr("applications.superres.bicubic"), "superres-bicubic", first["bicubic"])
            with gr.Row():
                x_t = views.image_box(tr("applications.restore.x_t"), "superres-xt")
                x0_net = views.image_box(tr("applications.superres.x0_network"), "superres-x0-network")
                x0 = views.image_box(tr("applications.superres.x0"), "superres-x0")
            results = views.result_widgets(tr, "superres", T_MAX)
            table = gr.Markdown(elem_id="superres-table")
            summary = gr.JSON(label=tr("applications.restore.summary"), elem_id="superres-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="superres-run-id")
    lang = lang_input()
    outputs = dict(status=status, low=low, bicubic=bicubic, x_t=x_t, x0_net=x0_net, x0=x0,
                   gallery=results["gallery"], table=table, scrub=results["scrub"], run_id=run_id, summary=summary)
    inputs = [source, index, upload, drawing, factor, low_resolution, digit, guidance, fills, seed, steps, eta,
              projection, lang]
    _wire(tr, settings, demo, handlers, "super_resolve", buttons, inputs, outputs,
          dict(status=status, x_t=x_t, x0_net=x0_net, x0=x0))
    _on(tr, (source.change, index.change, upload.change, drawing.change, factor.change, low_resolution.change),
        handlers.preview, [source, index, upload, drawing, factor, low_resolution, lang],
        dict(original=original, low=low, bicubic=bicubic))
