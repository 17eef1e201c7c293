"""Lesson 7, section 2: generated digits as training data, and a labelled data set to download.

Two parts, each one model job of the server's queue (:mod:`.augment_handlers`):

* **The experiment** (``/augment_experiment``): k real digits per class, with and without
  n generated ones; both classifiers' held-out accuracy side by side, with the gain in
  points, the live training curves and the five-seed results measured offline.
* **The export** (``/augment_export``): a generated, labelled set as a zip of PNGs plus
  ``labels.csv``, with a preview of its first digits.

The core is :mod:`diffusion.lessons.applications.augment`; this module only lays out the
widgets and wires them.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from diffusion.lessons.applications.augment import (
    K_CHOICES, MAX_PER_CLASS, MAX_SYNTHETIC_TAB, ExperimentRequest, ExportRequest,
)
from diffusion.lessons.sampling import LIMITS, SAMPLERS
from diffusion.models import registry as models
from diffusion.ui.applications.augment_handlers import MODEL, P, AugmentHandlers, measured_markdown, translated
from diffusion.ui.handlers import bind
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.sampling import T_MAX
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX

log = logging.getLogger("diffusion.ui.applications.augment")
EXPERIMENT, EXPORT = ExperimentRequest(), ExportRequest(guidance_scale=ExperimentRequest().guidance_scale)


def as_sent(component: Any) -> Any:
    """``component`` handing its value to the handler exactly as sent.

    gradio's own check of a slider, number or radio value (bounds, choices) answers in
    English only, and a value JSON cannot hold fails inside it; the core checks every value
    instead and says what is wrong in the student's language.
    """
    component.preprocess = lambda payload: payload
    return component


def build_augment(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Lay out the data-augmentation section and wire its events to :class:`AugmentHandlers`."""
    gr.Markdown(tr(P + "intro"), latex_delimiters=LATEX)
    measured = gr.Markdown(measured_markdown(tr, "en"), elem_id="augment-measured")
    if not models.available(MODEL):
        log.warning("the augmentation section is off: no usable model at %s", models.MODELS[MODEL].path)
        gr.Markdown(tr(P + "no_model"), elem_classes=["dl-warning"], elem_id="augment-no-model")
        return
    handlers = AugmentHandlers(tr, settings.device, settings.jobs)
    heavy = settings.model_events()
    gr.Markdown(tr(P + "experiment_intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            k_real = as_sent(gr.Radio(list(K_CHOICES), value=EXPERIMENT.k_real, label=tr(P + "param.k_real"),
                                      info=tr(P + "k_info"), elem_id="augment-k"))
            n_synthetic = as_sent(gr.Slider(0, MAX_SYNTHETIC_TAB, value=EXPERIMENT.n_synthetic, step=1,
                                            label=tr(P + "param.n_synthetic"), elem_id="augment-n"))
            seed = as_sent(gr.Number(EXPERIMENT.seed, precision=0, label=tr(P + "seed"), elem_id="augment-seed"))
            with gr.Row():
                run = gr.Button(tr(P + "run"), variant="primary", elem_id="augment-run")
                stop = gr.Button(tr(P + "stop"), variant="stop", elem_id="augment-stop")
        with gr.Column(scale=3):
            status = gr.HTML(elem_id="augment-status")
            table = gr.Markdown(elem_id="augment-table")
            plot = gr.Plot(format="png", show_label=False, elem_id="augment-plot")
            summary = gr.JSON(label=tr(P + "summary"), elem_id="augment-summary")
    gr.Markdown(tr(P + "export_intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            digits = gr.Textbox(EXPORT.digits, label=tr(P + "param.digits"), max_length=64,
                                elem_id="augment-digits")
            per_class = as_sent(gr.Slider(1, MAX_PER_CLASS, value=EXPORT.per_class, step=1,
                                          label=tr(P + "param.per_class"), elem_id="augment-per-class"))
            guidance = as_sent(gr.Slider(*LIMITS["guidance_scale"], value=EXPORT.guidance_scale, step=0.5,
                                         label=tr("param.guidance_scale"), elem_id="augment-guidance"))
            sampler = gr.Dropdown([(tr(f"sampler.{s}"), s) for s in SAMPLERS], value=EXPORT.sampler,
                                  label=tr("param.sampler"), allow_custom_value=True,  # the core checks it
                                  elem_id="augment-sampler")
            steps = as_sent(gr.Slider(1, T_MAX, value=EXPORT.num_inference_steps, step=1,
                                      label=tr("param.num_inference_steps"), elem_id="augment-steps"))
            export_seed = as_sent(gr.Number(EXPORT.seed, precision=0, label=tr(P + "seed"),
                                            elem_id="augment-export-seed"))
            with gr.Row():
                export = gr.Button(tr(P + "export"), variant="primary", elem_id="augment-export")
                export_stop = gr.Button(tr(P + "stop"), variant="stop", elem_id="augment-export-stop")
        with gr.Column(scale=3):
            export_status = gr.HTML(elem_id="augment-export-status")
            file = gr.File(label=tr(P + "file"), height=90, elem_id="augment-file")
            gallery = gr.Gallery(label=tr(P + "preview"), columns=10, height=260, format="png",
                                 object_fit="contain", elem_id="augment-gallery", elem_classes=["dl-pixelated"])
            export_summary = gr.JSON(label=tr(P + "summary"), elem_id="augment-export-summary")
    # Hidden run ids: the Stop buttons refer to runs by them.
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="augment-run-id")
    export_id = gr.Textbox(visible=False, max_length=64, elem_id="augment-export-id")
    lang = lang_input()

    experiment_out = dict(status=status, table=table, plot=plot, run_id=run_id, summary=summary)
    run.click(bind(translated(tr, handlers.experiment), experiment_out), [k_real, n_synthetic, seed, lang],
              list(experiment_out.values()), js=LANG_JS, api_name="augment_experiment", show_progress="hidden",
              **heavy)
    stop.click(handlers.stop, [run_id], None, queue=False, api_name="augment_experiment_stop")
    # The section opens with the default experiment, computed once at start-up and shared.
    demo.load(bind(translated(tr, handlers.example), experiment_out), [lang], list(experiment_out.values()),
              js=LANG_JS, show_progress="hidden", api_visibility="private", **heavy)
    settings.examples.append(lambda: list(handlers.example("en")))
    demo.load(bind(translated(tr, handlers.measured_table), {"measured": measured}), [lang], [measured],
              js=LANG_JS, show_progress="hidden", api_visibility="private", concurrency_id="light")
    export_out = dict(status=export_status, file=file, gallery=gallery, run_id=export_id, summary=export_summary)
    export.click(bind(translated(tr, handlers.export), export_out),
                 [digits, per_class, guidance, sampler, steps, export_seed, lang], list(export_out.values()),
                 js=LANG_JS, api_name="augment_export", show_progress="hidden", **heavy)
    export_stop.click(handlers.stop, [export_id], None, queue=False, api_name="augment_export_stop")

