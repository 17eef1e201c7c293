"""Lesson 1 tab: the 1-D heat equation, where the word "diffusion" comes from."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import numpy as np

from diffusion.lessons.heat import solver as heat
from diffusion.lessons.heat import figures as heat_plots
from diffusion.serving import render_pool as render_worker
from diffusion.serving.cache import LRUCache
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input, normalize_lang
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, plot_picture

DEFAULTS = heat.HeatParams()

# Classroom presets: (name, initial condition, D, L, N, t_end, n_steps, scheme, boundary).
PRESETS: dict[str, dict[str, Any]] = {
    "textbook": dict(initial_condition="spike", diffusivity=0.1, length=100.0, n_points=1000,
                     t_end=50.0, n_steps=5000, scheme="ftcs", boundary="dirichlet"),
    "unstable": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                     t_end=60.0, n_steps=100, scheme="ftcs", boundary="dirichlet"),
    "cn_same_r": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                      t_end=60.0, n_steps=100, scheme="crank_nicolson", boundary="dirichlet"),
    "edge": dict(initial_condition="spike", diffusivity=1.0, length=100.0, n_points=101,
                 t_end=50.0, n_steps=100, scheme="ftcs", boundary="dirichlet"),
    "insulated": dict(initial_condition="step", diffusivity=1.0, length=100.0, n_points=201,
                      t_end=500.0, n_steps=5000, scheme="crank_nicolson", boundary="neumann"),
    "ring": dict(initial_condition="gaussian", diffusivity=2.0, length=100.0, n_points=200,
                 t_end=200.0, n_steps=2000, scheme="exact", boundary="periodic"),
}
PRESET_FIELDS = ("initial_condition", "diffusivity", "length", "n_points", "t_end", "n_steps",
                 "scheme", "boundary")


# Finished runs with their rendered plots, by (validated settings, language): a few MB at most.
_RUNS = LRUCache(capacity=16)
# Heat-kernel plots by (D, t, L, language).
_KERNELS = LRUCache(capacity=16)


def _plot(figure) -> Any:
    """A figure for a ``gr.Plot``, encoded as the drawing processes encode theirs."""
    return plot_picture(render_worker.png_data_url(figure))


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the heat-equation tab and wire its events (it also runs once on page load)."""
    lo, hi = heat.LIMITS["n_points"]
    gr.Markdown(tr("heat.intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            preset = gr.Dropdown([(tr(f"heat.preset.{k}"), k) for k in PRESETS], value=None,
                                 label=tr("heat.presets"), info=tr("heat.presets_info"), elem_id="heat-preset")
            ic = gr.Dropdown([(tr(f"heat.ic.{k}"), k) for k in heat.INITIAL_CONDITIONS],
                             value=DEFAULTS.initial_condition, label=tr("param.initial_condition"), elem_id="heat-ic")
            expr = gr.Textbox(DEFAULTS.custom_expression, label=tr("param.custom_expression"),
                              info=tr("heat.custom_info"), visible=False, max_lines=1, elem_id="heat-expr")
            k = gr.Slider(*heat.LIMITS["sine_mode"], value=DEFAULTS.sine_mode, step=1,
                          label=tr("param.sine_mode"), visible=False, elem_id="heat-k")
            seed = gr.Number(DEFAULTS.seed, precision=0, label=tr("param.seed"), visible=False, elem_id="heat-seed")
            d = gr.Number(DEFAULTS.diffusivity, label=tr("param.diffusivity"), elem_id="heat-d")
            length = gr.Number(DEFAULTS.length, label=tr("param.length"), elem_id="heat-length")
            n = gr.Slider(lo, hi, value=DEFAULTS.n_points, step=1, label=tr("param.n_points"), elem_id="heat-n")
            t_end = gr.Number(DEFAULTS.t_end, label=tr("param.t_end"), elem_id="heat-tend")
            m = gr.Slider(*heat.LIMITS["n_steps"], value=DEFAULTS.n_steps, step=1,
                          label=tr("param.n_steps"), elem_id="heat-m")
            scheme = gr.Radio([(tr(f"heat.scheme.{s}"), s) for s in heat.SCHEMES], value=DEFAULTS.scheme,
                              label=tr("param.scheme"), elem_id="heat-scheme")
            bc = gr.Radio([(tr(f"heat.bc.{b}"), b) for b in heat.BOUNDARIES], value=DEFAULTS.boundary,
                          label=tr("param.boundary"), elem_id="heat-bc")
            stability = gr.Markdown(latex_delimiters=LATEX, elem_id="heat-stability")
            run = gr.Button(tr("heat.run"), variant="primary", elem_id="heat-run")
        with gr.Column(scale=2):
            status = gr.Markdown(latex_delimiters=LATEX, elem_id="heat-status")
            heatmap = gr.Plot(label=tr("heat.heatmap"), format="png", show_label=False, elem_id="heat-heatmap")
            profile = gr.Plot(label=tr("heat.profile"), format="png", show_label=False, elem_id="heat-profile")
            time = gr.Slider(0, DEFAULTS.t_end, value=DEFAULTS.t_end, label=tr("heat.time"), elem_id="heat-time")
            with gr.Row():
                error = gr.Plot(label=tr("heat.error"), format="png", show_label=False, elem_id="heat-error")
                mass = gr.Plot(label=tr("heat.mass"), format="png", show_label=False, elem_id="heat-mass")
            summary = gr.JSON(label=tr("heat.summary"), elem_id="heat-summary")
    with gr.Accordion(tr("heat.bridge"), open=False, elem_id="heat-bridge") as bridge:
        gr.Markdown(tr("heat.bridge_text"), latex_delimiters=LATEX)
        kernel = gr.Plot(label=tr("heat.kernel"), format="png", show_label=False, elem_id="heat-kernel")
    lang = lang_input()
    state = gr.State(None)
    bridge_open = gr.State(False)  # the kernel plot is drawn only while someone can see it
    inputs = [ic, expr, d, length, n, t_end, m, scheme, bc, k, seed]

    def render(params: heat.HeatParams, lang: str) -> tuple:
        result = heat.simulate(params)
        text = tr.table("heat.plot.", lang)
        last = _last_finite_frame(result)
        info = result.summary()
        # Drawn to PNG once, in a worker process when there is one (off this process's
        # interpreter lock), so a cached answer is sent again without redrawing.
        pictures = settings.render_pool.run(render_worker.heat_request(params, last, text))
        if pictures is not None:
            plots = tuple(plot_picture(picture) for picture in pictures)
        else:
            figures = render_worker.heat_figures(result, last, text)
            plots = tuple(_plot(f) for f in figures)
        return _status(tr, result, info, lang), plots, result, info, last

    @guarded(tr)
    def simulate(initial_condition, custom_expression, diffusivity, length, n_points, t_end, n_steps,
                 scheme, boundary, sine_mode, seed, lang):
        params = heat.HeatParams(
            initial_condition=initial_condition, custom_expression=custom_expression,
            diffusivity=diffusivity, length=length, n_points=n_points, t_end=t_end, n_steps=n_steps,
            scheme=scheme, boundary=boundary, sine_mode=sine_mode, seed=seed).validated()
        lang = normalize_lang(lang)
        # Same settings, same answer: a class opening the page at once (which runs the
        # defaults) or pressing Run on the same preset is drawn once, not thirty times.
        status, (heat_map, profile_plot, error_plot, mass_plot), result, info, last = \
            _RUNS.get_or_make((params, lang), lambda: render(params, lang))
        return (
            status, heat_map, profile_plot,
            gr.update(minimum=0, maximum=float(result.times[-1]), value=float(result.times[last]),
                      step=float(result.times[1] - result.times[0]) if len(result.times) > 1 else 1),
            error_plot, mass_plot, result, dict(info),
        )

    @guarded(tr)
    def heat_kernel(diffusivity, t_end, length, lang):
        """The heat kernel for these D, t and L (the bridge to lesson 2), drawn on request."""
        params = heat.HeatParams(diffusivity=diffusivity, length=length, t_end=t_end).validated()
        lang = normalize_lang(lang)
        return _KERNELS.get_or_make(
            (params.diffusivity, params.t_end, params.length, lang),
            lambda: _plot(heat_plots.plot_heat_kernel(
                params.diffusivity, params.t_end, params.length, tr.table("heat.plot.", lang))))

    def kernel_if_open(is_open, diffusivity, t_end, length, lang):
        return heat_kernel(diffusivity, t_end, length, lang) if is_open else gr.skip()

    @guarded(tr)
    def scrub(result, t, lang):
        if result is None:
            return gr.skip()
        index = int(np.argmin(np.abs(result.times - float(t))))
        return _plot(heat_plots.plot_profile(result, index, tr.table("heat.plot.", lang)))

    def show_r(d, length, n, t_end, m, scheme, bc, lang):
        try:
            p = heat.HeatParams(diffusivity=d, length=length, n_points=n, t_end=t_end, n_steps=m,
                                scheme=scheme, boundary=bc).validated()
        except (ValueError, TypeError):
            return tr.text("heat.r_invalid", lang)
        _, dx = heat.make_grid(p.length, p.n_points, p.boundary)
        r = p.diffusivity * (p.t_end / p.n_steps) / dx**2
        if p.scheme != "ftcs":
            return tr.text("heat.r_other", lang, r=r, scheme=tr.text(f"heat.scheme.{p.scheme}", lang))
        return tr.text("heat.r_stable" if r <= 0.5 else "heat.r_unstable", lang, r=r)

    def show_ic_fields(ic):
        return (gr.update(visible=ic == "custom"), gr.update(visible=ic == "sine"),
                gr.update(visible=ic == "random"))

    def apply_preset(name):
        if name not in PRESETS:
            return [gr.skip()] * len(PRESET_FIELDS)
        return [PRESETS[name][f] for f in PRESET_FIELDS]

    outputs = [status, heatmap, profile, time, error, mass, state, summary]
    run_event = dict(fn=simulate, inputs=[*inputs, lang], outputs=outputs, js=LANG_JS,
                     concurrency_id="light")
    # The kernel follows a run only while its accordion is open: closed, nobody sees it,
    # and drawing it would add a fifth figure to every run of a busy classroom.
    kernel_inputs = [bridge_open, d, t_end, length, lang]
    kernel_event = dict(fn=kernel_if_open, inputs=kernel_inputs, outputs=kernel, js=LANG_JS,
                        api_visibility="private", concurrency_id="light", show_progress="hidden")
    # .success: after a refused run the kernel would only repeat the same error message.
    run.click(**run_event, api_name="heat_simulate").success(**kernel_event)
    preset.select(apply_preset, preset, [ic, d, length, n, t_end, m, scheme, bc],
                  api_visibility="private", queue=False).then(**run_event, api_visibility="private").success(
                      **kernel_event)
    bridge.expand(lambda: True, None, bridge_open, api_visibility="private", queue=False).then(
        heat_kernel, [d, t_end, length, lang], kernel, js=LANG_JS, api_name="heat_kernel",
        concurrency_id="light", show_progress="hidden")
    bridge.collapse(lambda: False, None, bridge_open, api_visibility="private", queue=False)
    ic.change(show_ic_fields, ic, [expr, k, seed], api_visibility="private", queue=False)
    r_inputs = [d, length, n, t_end, m, scheme, bc, lang]
    gr.on([c.change for c in r_inputs[:-1]], show_r, r_inputs, stability, js=LANG_JS,
          api_visibility="private", queue=False, show_progress="hidden")
    time.input(scrub, [state, time, lang], profile, js=LANG_JS, api_visibility="private",
               concurrency_id="light", trigger_mode="always_last", show_progress="hidden")
    demo.load(**run_event, api_visibility="private")
    demo.load(show_r, r_inputs, stability, js=LANG_JS, api_visibility="private", queue=False)


def _last_finite_frame(result: heat.HeatResult) -> int:
    finite = np.isfinite(result.u).all(axis=1)
    return int(np.flatnonzero(finite)[-1]) if finite.any() else 0


def _status(tr: Translator, result: heat.HeatResult, info: dict, lang: str) -> str:
    if result.blew_up:
        g = abs(1 - 4 * result.r)
        return tr.text("heat.warn_blowup", lang, t=result.blow_up_time or 0.0, r=result.r, g=g)
    if result.params.scheme == "ftcs" and result.r > 0.5:
        return tr.text("heat.warn_unstable", lang, r=result.r)
    err = info["max_abs_error_vs_exact"]
    return tr.text("heat.ok", lang, r=result.r, err=err if math.isfinite(err) else 0.0,
                   m0=info["mass_start"], m1=info["mass_end"], ms=info["runtime_ms"])
