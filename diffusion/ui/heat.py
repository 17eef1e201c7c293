"""Lesson 1 tab: the 1-D heat equation, where the word "diffusion" comes from.

:class:`HeatHandlers` answers the tab's events and can be called without a Blocks (the
unit tests do); each handler returns ``{output name: value}``. :func:`build` lays out
the components and wires the events, turning names into components with
:func:`~diffusion.ui.handlers.bind`.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
import numpy as np

from diffusion.lessons import heat
from diffusion.lessons.heat import figures
from diffusion.serving import render_pool
from diffusion.serving.cache import LRUCache
from diffusion.ui.handlers import bind, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input, normalize_lang
from diffusion.ui.player import frame_player, pack_frames
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, plot_picture

DEFAULTS = heat.HeatParams()

# Classroom presets: initial condition, D, L, N, t_end, n_steps, scheme and boundary.
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
# The run's inputs, in the order of the /heat_simulate API (each a field of HeatParams).
RUN_FIELDS = ("initial_condition", "custom_expression", "diffusivity", "length", "n_points", "t_end",
              "n_steps", "scheme", "boundary", "sine_mode", "seed")
# What the stability line depends on, in the order of its inputs.
R_FIELDS = ("diffusivity", "length", "n_points", "t_end", "n_steps", "scheme", "boundary")
# Moments of a run sent to the browser's player: every other stored frame of the default 101
# (about 1.8 MB for a smooth profile, drawn in under a second on one core).
PLAYER_FRAMES = 51


def _plot(figure) -> Any:
    """A figure for a ``gr.Plot``, encoded as the drawing processes encode theirs."""
    return plot_picture(render_pool.png_data_url(figure))


class HeatHandlers:
    """The tab's event handlers, with the translator, the settings and the tab's caches.

    ``simulate`` answers ``/heat_simulate`` and ``heat_kernel`` answers ``/heat_kernel``; their
    docstrings' first paragraphs are the API page's descriptions. ``simulate``, ``heat_kernel``,
    ``scrub`` and ``frames`` are wrapped by :func:`guarded` when the object is made: a core
    error reaches the student as a translated ``gr.Error``.
    """

    def __init__(self, tr: Translator, settings: AppSettings | None = None) -> None:
        self.tr = tr
        self.settings = settings if settings is not None else AppSettings()
        # Finished runs with their rendered plots, by (validated settings, language): a few MB at most.
        self.runs = LRUCache(capacity=16)
        # Heat-kernel plots by (D, t, L, language).
        self.kernels = LRUCache(capacity=16)
        # The browser player's value by (validated settings, language): at most 3 MB each.
        self.players = LRUCache(capacity=8)
        guard = guarded(tr)
        self.simulate = guard(self.simulate)
        self.heat_kernel = guard(self.heat_kernel)
        self.scrub = guard(self.scrub)
        self.frames = guard(self.frames)

    def _render(self, params: heat.HeatParams, lang: str) -> tuple:
        result = heat.simulate(params)
        text = self.tr.table("heat.plot.", lang)
        last = _last_finite_frame(result)
        info = result.summary()
        # Drawn to PNG once, in a worker process when there is one (off this process's
        # interpreter lock), so a cached answer is sent again without redrawing.
        pictures = self.settings.render_pool.run(render_pool.heat_request(params, last, text))
        if pictures is not None:
            plots = tuple(plot_picture(picture) for picture in pictures)
        else:
            plots = tuple(_plot(f) for f in render_pool.heat_figures(result, last, text))
        return _status(self.tr, result, info, lang), plots, result, info, last

    def simulate(self, initial_condition, custom_expression, diffusivity, length, n_points, t_end,
                 n_steps, scheme, boundary, sine_mode, seed, lang) -> dict[str, Any]:
        """Solve the heat equation with these settings and compare with the exact solution.

        Returns:
            ``status`` (Markdown), ``heatmap``, ``profile``, ``error``, ``mass`` (plots),
            ``time`` (the slider, set to the last finite frame), ``state`` (the
            :class:`~diffusion.lessons.heat.HeatResult`, left out of the API's answer) and
            ``summary`` (its numbers).
        """
        params = heat.HeatParams(
            initial_condition=initial_condition, custom_expression=custom_expression,
            diffusivity=diffusivity, length=length, n_points=n_points, t_end=t_end, n_steps=n_steps,
            scheme=scheme, boundary=boundary, sine_mode=sine_mode, seed=seed).validated()
        lang = normalize_lang(lang)
        # Same settings, same answer: a class opening the page at once (which runs the
        # defaults) or pressing Run on the same preset is drawn once, not thirty times.
        status, (heat_map, profile, error, mass), result, info, last = \
            self.runs.get_or_make((params, lang), lambda: self._render(params, lang))
        times = result.times
        return {
            "status": status, "heatmap": heat_map, "profile": profile,
            "time": gr.update(minimum=0, maximum=float(times[-1]), value=float(times[last]),
                              step=float(times[1] - times[0]) if len(times) > 1 else 1),
            "error": error, "mass": mass, "state": result, "summary": dict(info),
        }

    def heat_kernel(self, diffusivity, t_end, length, lang) -> dict[str, Any]:
        """The heat kernel for these D, t and L (the bridge to lesson 2), drawn on request."""
        params = heat.HeatParams(diffusivity=diffusivity, length=length, t_end=t_end).validated()
        lang = normalize_lang(lang)
        return {"kernel": self.kernels.get_or_make(
            (params.diffusivity, params.t_end, params.length, lang),
            lambda: _plot(figures.plot_heat_kernel(
                params.diffusivity, params.t_end, params.length, self.tr.table("heat.plot.", lang))))}

    def kernel_if_open(self, is_open, diffusivity, t_end, length, lang) -> dict[str, Any]:
        """The kernel after a run, only while its accordion is open (nobody sees it closed)."""
        if not is_open:
            return {"kernel": gr.skip()}
        return self.heat_kernel(diffusivity, t_end, length, lang)

    def scrub(self, result, t, lang) -> dict[str, Any]:
        """The profile at the stored frame nearest to time ``t``, without a new run."""
        if result is None:
            return {"profile": gr.skip()}
        index = int(np.argmin(np.abs(result.times - float(t))))
        return {"profile": _plot(figures.plot_profile(result, index, self.tr.table("heat.plot.", lang)))}

    def frames(self, result, lang) -> dict[str, Any]:
        """The player's value for a finished run: the profile at up to :data:`PLAYER_FRAMES` moments.

        Sent once after a run; the player's Play button and slider then move through the
        moments in the browser, with no request per move. Each caption holds that
        moment's own numbers: its time, the total heat and the largest error against the
        exact solution.
        """
        if not isinstance(result, heat.HeatResult):
            return {"player": gr.skip()}
        lang = normalize_lang(lang)
        return {"player": self.players.get_or_make((result.params, lang), lambda: self._frames(result, lang))}

    def _frames(self, result: heat.HeatResult, lang: str) -> str:
        n, last = len(result.times), _last_finite_frame(result)
        # Always the last frame before a blow-up too: the player starts there, as the slider did.
        picks = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, PLAYER_FRAMES))} | {last})
        pictures = figures.profile_frames(result, picks, self.tr.table("heat.plot.", lang))
        errors = np.abs(result.u - result.u_exact).max(axis=1)  # NaN from a blow-up on
        captions = []
        for i in picks:
            if np.isfinite(result.u[i]).all():
                captions.append(self.tr.text("heat.player_caption", lang, t=result.times[i],
                                             mass=result.mass[i], err=errors[i]))
            else:
                captions.append(self.tr.text("heat.player_caption_blowup", lang, t=result.times[i],
                                             t0=result.blow_up_time or 0.0))
        return pack_frames([("", pictures)], captions, start=picks.index(last), fps=10,
                           note=self.tr.text("heat.player_note", lang, n=len(picks)))

    def show_r(self, diffusivity, length, n_points, t_end, n_steps, scheme, boundary, lang) -> dict[str, str]:
        """The stability line: r = D dt / dx^2 and what it means for the chosen scheme."""
        tr = self.tr
        try:
            p = heat.HeatParams(diffusivity=diffusivity, length=length, n_points=n_points, t_end=t_end,
                                n_steps=n_steps, scheme=scheme, boundary=boundary).validated()
        except (ValueError, TypeError):
            return {"stability": tr.text("heat.r_invalid", lang)}
        _, dx = heat.make_grid(p.length, p.n_points, p.boundary)
        r = p.diffusivity * (p.t_end / p.n_steps) / dx**2
        if p.scheme != "ftcs":
            text = tr.text("heat.r_other", lang, r=r, scheme=tr.text(f"heat.scheme.{p.scheme}", lang))
        else:
            text = tr.text("heat.r_stable" if r <= 0.5 else "heat.r_unstable", lang, r=r)
        return {"stability": text}


def show_ic_fields(initial_condition) -> dict[str, Any]:
    """Show only the fields the chosen initial condition uses."""
    return {"custom_expression": gr.update(visible=initial_condition == "custom"),
            "sine_mode": gr.update(visible=initial_condition == "sine"),
            "seed": gr.update(visible=initial_condition == "random")}


def apply_preset(name) -> dict[str, Any]:
    """The preset's settings for the fields in :data:`PRESET_FIELDS`; none for an unknown name."""
    if name not in PRESETS:
        return {"initial_condition": gr.skip()}
    return {field: PRESETS[name][field] for field in PRESET_FIELDS}


def bridge_opened() -> dict[str, bool]:
    """The bridge accordion was opened: runs draw the kernel from now on."""
    return {"bridge_open": True}


def bridge_closed() -> dict[str, bool]:
    """The bridge accordion was closed: runs stop drawing the kernel."""
    return {"bridge_open": False}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the heat-equation tab and wire its events (it also runs once on page load)."""
    handlers = HeatHandlers(tr, settings)
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
            # The player shows the profile at every moment, scrubbed in the browser. The
            # server-drawn profile and its time slider stay (hidden) as /heat_simulate's outputs.
            player = frame_player(tr, "heat-player", "heat.player_slider")
            profile = gr.Plot(label=tr("heat.profile"), format="png", show_label=False, elem_id="heat-profile",
                              visible=False)
            time = gr.Slider(0, DEFAULTS.t_end, value=DEFAULTS.t_end, label=tr("heat.time"), elem_id="heat-time",
                             visible=False)
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

    fields = {"initial_condition": ic, "custom_expression": expr, "diffusivity": d, "length": length,
              "n_points": n, "t_end": t_end, "n_steps": m, "scheme": scheme, "boundary": bc,
              "sine_mode": k, "seed": seed}
    # The order of each dict is the order of the event's outputs, and so of the API's.
    run_outputs = {"status": status, "heatmap": heatmap, "profile": profile, "time": time, "error": error,
                   "mass": mass, "state": state, "summary": summary}
    kernel_output = {"kernel": kernel}
    player_output = {"player": player}
    preset_outputs = {name: fields[name] for name in PRESET_FIELDS}
    ic_outputs = {name: fields[name] for name in ("custom_expression", "sine_mode", "seed")}
    bridge_output = {"bridge_open": bridge_open}

    run_event = dict(fn=bind(handlers.simulate, run_outputs), inputs=[*(fields[f] for f in RUN_FIELDS), lang],
                     outputs=list(run_outputs.values()), js=LANG_JS, concurrency_id="light")
    # The kernel follows a run only while its accordion is open: closed, nobody sees it,
    # and drawing it would add a fifth figure to every run of a busy classroom.
    kernel_event = dict(fn=bind(handlers.kernel_if_open, kernel_output),
                        inputs=[bridge_open, d, t_end, length, lang], outputs=list(kernel_output.values()),
                        js=LANG_JS, api_visibility="private", concurrency_id="light", show_progress="hidden")
    # The run's frames go to the browser's player once, right after the run's own outputs;
    # "always_last": a run that ends while the previous run's frames are still being drawn
    # gets its own frames afterwards (the default would drop them).
    player_event = dict(fn=bind(handlers.frames, player_output), inputs=[state, lang],
                        outputs=list(player_output.values()), js=LANG_JS, api_visibility="private",
                        concurrency_id="light", show_progress="minimal", trigger_mode="always_last")
    # .success: after a refused run the kernel would only repeat the same error message.
    ran = run.click(**run_event, api_name="heat_simulate")
    ran.success(**player_event)
    ran.success(**kernel_event)
    preset_ran = preset.select(bind(apply_preset, preset_outputs), preset, list(preset_outputs.values()),
                               api_visibility="private", queue=False).then(**run_event, api_visibility="private")
    preset_ran.success(**player_event)
    preset_ran.success(**kernel_event)
    bridge.expand(bind(bridge_opened, bridge_output), None, list(bridge_output.values()),
                  api_visibility="private", queue=False).then(
        bind(handlers.heat_kernel, kernel_output), [d, t_end, length, lang], list(kernel_output.values()),
        js=LANG_JS, api_name="heat_kernel", concurrency_id="light", show_progress="hidden")
    bridge.collapse(bind(bridge_closed, bridge_output), None, list(bridge_output.values()),
                    api_visibility="private", queue=False)
    ic.change(bind(show_ic_fields, ic_outputs), ic, list(ic_outputs.values()), api_visibility="private",
              queue=False)
    r_inputs = [*(fields[f] for f in R_FIELDS), lang]
    show_r = bind(handlers.show_r, {"stability": stability})
    gr.on([c.change for c in r_inputs[:-1]], show_r, r_inputs, [stability], js=LANG_JS,
          api_visibility="private", queue=False, show_progress="hidden")
    time.input(bind(handlers.scrub, {"profile": profile}), [state, time, lang], [profile], js=LANG_JS,
               api_visibility="private", concurrency_id="light", trigger_mode="always_last",
               show_progress="hidden")
    demo.load(**run_event, api_visibility="private").success(**player_event)
    demo.load(show_r, r_inputs, [stability], js=LANG_JS, api_visibility="private", queue=False)


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
