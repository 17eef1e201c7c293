"""Lesson 2 tab: DDPM forward noising of an image, t by t, with the schedule curves.

:class:`NoisingHandlers` answers the tab's events and can be called without a Blocks
(the unit tests do); each handler returns ``{output name: value}``. :func:`build` lays
out the components and wires the events, turning names into components with
:func:`~diffusion.ui.handlers.bind`.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from diffusion import images
from diffusion.errors import check_range
from diffusion.examples import list_examples
from diffusion.lessons import noising
from diffusion.lessons.noising import figures
from diffusion.serving import render_pool
from diffusion.serving.cache import LRUCache, PictureFiles
from diffusion.ui.handlers import bind, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input, normalize_lang
from diffusion.ui.player import frame_player, pack_frames
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import ImageInput, LATEX, plot_picture

DEFAULT_T = 250
STRIP_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
# A class of 30 keeps 30 noise chains (one per student's seed). With a checkpoint every
# 100 steps a chain holds at most 12 states of one ≤256×256 image (≤ 9.5 MB at T = 1000),
# and a slider move costs at most 100 steps.
CHECKPOINT_EVERY = 100
# The browser player: x_t at 33 timesteps from 0 to T, at most 128 pixels a side. Noise does
# not compress, so 33 full 256×256 pictures would be about 8 MB; these are about 2 MB.
PLAYER_FRAMES = 33
PLAYER_SIDE = 128


class NoisingHandlers:
    """The tab's event handlers, with the translator, the settings and the tab's caches.

    ``forward`` answers ``/forward_noise`` and ``export`` answers ``/forward_noise_gif``; their
    docstrings' first paragraphs are the API page's descriptions. ``forward``,
    ``live_pictures``, ``live_plots``, ``player`` and ``export`` are wrapped by :func:`guarded`
    when the object is made: a core error reaches the student as a translated ``gr.Error``.
    """

    def __init__(self, tr: Translator, settings: AppSettings | None = None) -> None:
        self.tr = tr
        self.settings = settings if settings is not None else AppSettings()
        self.images = LRUCache(capacity=32)
        self.chains = LRUCache(capacity=32)
        # Output pictures, encoded once: the noise and the strip do not change while t moves.
        self.pictures = PictureFiles(capacity=1024)
        # The browser player's value by (image, schedule, T, seed, language): about 2 MB each.
        self.players = LRUCache(capacity=8)
        guard = guarded(tr)
        self.forward = guard(self.forward)
        self.live_pictures = guard(self.live_pictures)
        self.live_plots = guard(self.live_plots)
        self.player = guard(self.player)
        self.export = guard(self.export)

    def _load(self, path: str | None) -> tuple[str, np.ndarray, dict]:
        path = images.check_upload(path)
        with open(path, "rb") as fh:  # key by content: the same picture re-sent keeps its cache
            key = hashlib.sha1(fh.read()).hexdigest()
        x0, info = self.images.get_or_make(key, lambda: images.load_image(path, max_side=256))
        return key, x0, info

    def _compute(self, image, schedule, num_train_timesteps, t, seed) -> tuple[noising.ForwardResult, tuple]:
        key, x0, info = self._load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)  # validates schedule and T
        T = sched.num_train_timesteps
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        t = check_range("t", t, 0, T, integer=True)
        chain = self.chains.get_or_make(
            (key, schedule, T, seed),
            lambda: noising.StepwiseChain(x0, sched, seed, checkpoint_every=CHECKPOINT_EVERY))
        return noising.forward_noise(x0, schedule, T, t, seed, chain=chain), (key, info)

    def _pictures(self, result: noising.ForwardResult, image: tuple, lang: str) -> dict[str, Any]:
        key, info = image
        T, schedule, seed = result.num_train_timesteps, result.schedule, result.seed
        run = (key, schedule, T, seed)  # everything the pixels depend on, with the kind of picture and t

        def closed_form(s):  # x_s by eq. 4, as in the strip; the one at t is already computed
            if s == result.t:
                return noising.to_display(result.x_t)
            return noising.to_display(noising.noise_strip(result.x0, schedule, T, seed, [s])[0])

        ts = sorted({round(f * T) for f in STRIP_FRACTIONS})
        name = f"{schedule}_T{T}_seed{seed}"
        gallery = [(self.pictures.path((*run, "closed", s), lambda s=s: closed_form(s), f"x_t_{name}_t{s}"),
                    self.tr.text("noising.strip_caption", lang, t=s)) for s in ts]
        (w0, h0), (w, h) = info["original_size"], info["size"]
        note = self.tr.text("noising.resized", lang, w0=w0, h0=h0, w=w, h=h) if info["resized"] else ""
        return {
            "notice": note,
            "closed": self.pictures.path((*run, "closed", result.t), lambda: closed_form(result.t),
                                         f"x_t_{name}_t{result.t}"),
            "noise": self.pictures.path((*run, "noise"),
                                        lambda: noising.to_display(result.noise, lo=-3.0, hi=3.0), f"noise_{name}"),
            "stepwise": self.pictures.path((*run, "stepwise", result.t),
                                           lambda: noising.to_display(result.x_t_stepwise),
                                           f"x_t_stepwise_{name}_t{result.t}"),
            "strip": gallery,
        }

    def _plots(self, result: noising.ForwardResult, lang: str) -> dict[str, Any]:
        text = self.tr.table("noising.plot.", lang)
        curves = figures.schedules_png(result.schedule, result.num_train_timesteps, result.t, text)
        args = (figures.histogram_data(result.x_t, result.x0), result.t, text)
        # The histogram is drawn in a worker process when one is free, off this process's
        # interpreter lock; when all are busy (drawing heat runs) it is drawn here, sooner.
        (histogram,) = self.settings.render_pool.run(render_pool.histogram_request(*args), wait=False) or \
            render_pool.histogram_picture(*args)
        return {"curves": plot_picture(render_pool.data_url(curves)), "histogram": plot_picture(histogram)}

    def forward(self, image, schedule, num_train_timesteps, t, seed, lang) -> dict[str, Any]:
        """Noise the image to step t, in one jump (eq. 4) and step by step (eq. 2).

        Returns:
            ``notice`` (a note when the image was shrunk), the pictures ``closed``
            (x_t by eq. 4), ``noise`` (ε), ``stepwise`` (x_t by eq. 2) and ``strip``
            (a gallery of x_t across t), the plots ``curves`` and ``histogram``, and
            ``summary`` (:meth:`~diffusion.lessons.noising.ForwardResult.summary`).
        """
        result, picked = self._compute(image, schedule, num_train_timesteps, t, seed)
        return {**self._pictures(result, picked, lang), **self._plots(result, lang), "summary": result.summary()}

    # The live path answers a slider move with the pictures first, then redraws the two
    # plots, which take longer, in a follow-up event.
    def live_pictures(self, image, schedule, num_train_timesteps, t, seed, lang) -> dict[str, Any]:
        """The pictures and the summary of :meth:`forward`, for a slider move."""
        if not image:  # the image box was just cleared: wait quietly for a new one
            return {"summary": gr.skip()}
        result, picked = self._compute(image, schedule, num_train_timesteps, t, seed)
        return {**self._pictures(result, picked, lang), "summary": result.summary()}

    def live_plots(self, image, schedule, num_train_timesteps, t, seed, lang) -> dict[str, Any]:
        """The two plots of :meth:`forward`, after :meth:`live_pictures`."""
        if not image:
            return {"curves": gr.skip()}
        return self._plots(self._compute(image, schedule, num_train_timesteps, t, seed)[0], lang)

    def player(self, image, schedule, num_train_timesteps, seed, lang) -> dict[str, Any]:
        """The player's value: x_t (eq. 4) from t = 0 to T, sent once and played in the browser.

        It does not depend on t, so moving the t slider never resends it. Each caption
        holds that timestep's ᾱ_t and the coefficients of eq. 4 that made the picture.
        """
        if not image:
            return {"player": gr.skip()}
        key, x0, info = self._load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        lang = normalize_lang(lang)
        return {"player": self.players.get_or_make(
            (key, sched.name, sched.num_train_timesteps, seed, lang), lambda: self._player(x0, sched, seed, lang))}

    def _player(self, x0: np.ndarray, sched: noising.NoiseSchedule, seed: int, lang: str) -> str:
        T = sched.num_train_timesteps
        ts, frames = noising.forward_frames(x0, sched.name, T, seed, PLAYER_FRAMES, PLAYER_SIDE)
        captions = [self.tr.text("noising.player_caption", lang, t=t, T=T, alpha_bar=sched.alpha_bar[t],
                                 a=sched.sqrt_alpha_bar[t], b=sched.sqrt_one_minus_alpha_bar[t]) for t in ts]
        (h0, w0), (h, w) = x0.shape[:2], frames[0].shape[:2]
        stride = math.ceil(max(h0, w0) / PLAYER_SIDE)  # as forward_frames shrinks
        note = (self.tr.text("noising.player_note_shrunk", lang, n=len(ts), s=stride, w0=w0, h0=h0, w=w, h=h)
                if stride > 1 else self.tr.text("noising.player_note", lang, n=len(ts)))
        return pack_frames([(self.tr.text("noising.player", lang, T=T), frames)], captions, start=0, fps=8,
                           note=note, pixelated=True)

    def export(self, image, schedule, num_train_timesteps, seed, lang) -> dict[str, str]:
        """The forward process from t = 0 to T as an animated GIF."""
        _, x0, _ = self._load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        out = Path(tempfile.mkdtemp(prefix="dl-gif-")) / f"forward_noising_{schedule}.gif"
        return {"gif": str(noising.export_gif(x0, schedule, sched.num_train_timesteps, seed, out))}


def rescale_t(num_steps, t) -> dict[str, Any]:
    """The t slider fitted to a new T, keeping t where it still fits."""
    num_steps = int(num_steps) if isinstance(num_steps, (int, float)) else 1000
    return {"t": gr.update(maximum=num_steps, value=min(int(t), num_steps) if isinstance(t, (int, float)) else 0)}


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the forward-noising tab and wire its events (it also runs once on page load)."""
    handlers = NoisingHandlers(tr, settings)
    examples = [str(p) for p in list_examples()]
    t_lo, t_hi = noising.LIMITS["num_train_timesteps"]
    gr.Markdown(tr("noising.intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            image = ImageInput(value=examples[0] if examples else None, type="filepath", label=tr("noising.image"),
                               sources=["upload", "clipboard"], height=260, elem_id="noise-image")
            gr.Examples(examples=[[p] for p in examples], inputs=[image], label=tr("noising.examples"))
            schedule = gr.Dropdown([(tr(f"noising.schedule.{s}"), s) for s in noising.SCHEDULES], value="linear",
                                   label=tr("param.schedule"), elem_id="noise-schedule")
            steps = gr.Slider(t_lo, t_hi, value=1000, step=10, label=tr("param.num_train_timesteps"),
                              elem_id="noise-T")
            t = gr.Slider(0, 1000, value=DEFAULT_T, step=1, label=tr("param.t"), elem_id="noise-t")
            seed = gr.Number(0, precision=0, label=tr("noising.seed"), elem_id="noise-seed")
            run = gr.Button(tr("noising.run"), variant="primary", elem_id="noise-run")
            gif_btn = gr.Button(tr("noising.gif"), elem_id="noise-gif-btn")
            gif_file = gr.File(label=tr("noising.gif_file"), elem_id="noise-gif")
        with gr.Column(scale=2):
            notice = gr.Markdown(elem_id="noise-notice")
            with gr.Row():
                closed = gr.Image(label=tr("noising.closed"), format="png", height=240, elem_id="noise-xt")
                eps = gr.Image(label=tr("noising.noise"), format="png", height=240, elem_id="noise-eps")
                stepwise = gr.Image(label=tr("noising.stepwise"), format="png", height=240, elem_id="noise-stepwise")
            gr.Markdown(tr("noising.why"), latex_delimiters=LATEX)
            player = frame_player(tr, "noise-player", "noising.player_slider")
            strip = gr.Gallery(label=tr("noising.strip"), columns=len(STRIP_FRACTIONS), height=200,
                               format="png", elem_id="noise-strip")
            with gr.Row():
                curves = gr.Plot(label=tr("noising.schedules"), format="png", show_label=False, elem_id="noise-curves")
                hist = gr.Plot(label=tr("noising.histogram"), format="png", show_label=False, elem_id="noise-hist")
            summary = gr.JSON(label=tr("noising.summary"), elem_id="noise-summary")
    lang = lang_input()

    # The order of each dict is the order of the event's outputs, and so of the API's.
    pictures = {"notice": notice, "closed": closed, "noise": eps, "stepwise": stepwise, "strip": strip}
    plots = {"curves": curves, "histogram": hist}
    forward_outputs = {**pictures, **plots, "summary": summary}
    live_outputs = {**pictures, "summary": summary}
    gif_output = {"gif": gif_file}
    player_output = {"player": player}

    inputs = [image, schedule, steps, t, seed, lang]
    common = dict(inputs=inputs, js=LANG_JS, concurrency_id="light")
    # The player's frames do not depend on t: sent when the image, schedule, T or seed change.
    frames = dict(fn=bind(handlers.player, player_output), inputs=[image, schedule, steps, seed, lang],
                  outputs=list(player_output.values()), js=LANG_JS, concurrency_id="light",
                  api_visibility="private", show_progress="minimal", trigger_mode="always_last")
    run.click(bind(handlers.forward, forward_outputs), outputs=list(forward_outputs.values()), **common,
              api_name="forward_noise").success(**frames)
    gr.on([schedule.change, seed.submit, image.change, steps.release], **frames)
    live = dict(fn=bind(handlers.live_pictures, live_outputs), outputs=list(live_outputs.values()), **common,
                api_visibility="private")
    follow = dict(fn=bind(handlers.live_plots, plots), outputs=list(plots.values()), **common,
                  api_visibility="private", show_progress="hidden")
    gr.on([t.input, schedule.change, seed.submit, image.change], **live, trigger_mode="always_last",
          show_progress="minimal").then(**follow)
    steps.input(bind(rescale_t, {"t": t}), [steps, t], [t], api_visibility="private", queue=False).then(
        **live).then(**follow)
    gif_btn.click(bind(handlers.export, gif_output), [image, schedule, steps, seed, lang],
                  list(gif_output.values()), js=LANG_JS, concurrency_id="light", api_name="forward_noise_gif")
    demo.load(**live).then(**follow)
    demo.load(**frames)
