"""Lesson 2 tab: DDPM forward noising of an image, t by t, with the schedule curves."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import gradio as gr
import numpy as np

from diffusion import images
from diffusion.lessons.noising import process as noising
from diffusion.lessons.noising import figures as noising_plots
from diffusion.serving import render_pool as render_worker
from diffusion.errors import check_range
from diffusion.examples import list_examples
from diffusion.serving.cache import LRUCache, PictureFiles
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import ImageInput, LATEX, plot_picture

DEFAULT_T = 250
STRIP_FRACTIONS = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


# A class of 30 keeps 30 noise chains (one per student's seed). With a checkpoint every
# 100 steps a chain holds at most 12 states of one ≤256×256 image (≤ 9.5 MB at T = 1000),
# and a slider move costs at most 100 steps (about 50 ms).
CHECKPOINT_EVERY = 100
_IMAGES = LRUCache(capacity=32)
_CHAINS = LRUCache(capacity=32)
# Output pictures, encoded once: the noise and the strip do not change while t moves.
_PICTURES = PictureFiles(capacity=1024)


def _load(path: str | None) -> tuple[str, np.ndarray, dict]:
    path = images.check_upload(path)
    with open(path, "rb") as fh:  # key by content: the same picture re-sent keeps its cache
        key = hashlib.sha1(fh.read()).hexdigest()
    x0, info = _IMAGES.get_or_make(key, lambda: images.load_image(path, max_side=256))
    return key, x0, info


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the forward-noising tab and wire its events (it also runs once on page load)."""
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
            strip = gr.Gallery(label=tr("noising.strip"), columns=len(STRIP_FRACTIONS), height=200,
                               format="png", elem_id="noise-strip")
            with gr.Row():
                curves = gr.Plot(label=tr("noising.schedules"), format="png", show_label=False, elem_id="noise-curves")
                hist = gr.Plot(label=tr("noising.histogram"), format="png", show_label=False, elem_id="noise-hist")
            summary = gr.JSON(label=tr("noising.summary"), elem_id="noise-summary")
    lang = lang_input()

    def compute(image, schedule, num_train_timesteps, t, seed):
        key, x0, info = _load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)  # validates schedule and T
        T = sched.num_train_timesteps
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        t = check_range("t", t, 0, T, integer=True)
        chain = _CHAINS.get_or_make((key, schedule, T, seed),
                                    lambda: noising.StepwiseChain(x0, sched, seed, checkpoint_every=CHECKPOINT_EVERY))
        return noising.forward_noise(x0, schedule, T, t, seed, chain=chain), (key, info)

    def pictures(result, image, lang):
        key, info = image
        T, schedule, seed = result.num_train_timesteps, result.schedule, result.seed
        run = (key, schedule, T, seed)  # everything the pixels depend on, with the kind of picture and t

        def closed_form(s):  # x_s by eq. 4, as in the strip; the one at t is already computed
            if s == result.t:
                return noising.to_display(result.x_t)
            return noising.to_display(noising.noise_strip(result.x0, schedule, T, seed, [s])[0])

        ts = sorted({round(f * T) for f in STRIP_FRACTIONS})
        name = f"{schedule}_T{T}_seed{seed}"
        gallery = [(_PICTURES.path((*run, "closed", s), lambda s=s: closed_form(s), f"x_t_{name}_t{s}"),
                    tr.text("noising.strip_caption", lang, t=s)) for s in ts]
        (w0, h0), (w, h) = info["original_size"], info["size"]
        note = tr.text("noising.resized", lang, w0=w0, h0=h0, w=w, h=h) if info["resized"] else ""
        return (note, _PICTURES.path((*run, "closed", result.t), lambda: closed_form(result.t),
                                     f"x_t_{name}_t{result.t}"),
                _PICTURES.path((*run, "noise"), lambda: noising.to_display(result.noise, lo=-3.0, hi=3.0),
                               f"noise_{name}"),
                _PICTURES.path((*run, "stepwise", result.t), lambda: noising.to_display(result.x_t_stepwise),
                               f"x_t_stepwise_{name}_t{result.t}"),
                gallery)

    def plots(result, lang):
        text = tr.table("noising.plot.", lang)
        curves = noising_plots.schedules_png(result.schedule, result.num_train_timesteps, result.t, text)
        args = (noising_plots.histogram_data(result.x_t, result.x0), result.t, text)
        # The histogram is drawn in a worker process when one is free, off this process's
        # interpreter lock; when all are busy (drawing heat runs) it is drawn here, sooner.
        (histogram,) = settings.render_pool.run(render_worker.histogram_request(*args), wait=False) or \
            render_worker.histogram_picture(*args)
        return plot_picture(render_worker.data_url(curves)), plot_picture(histogram)

    @guarded(tr)
    def forward(image, schedule, num_train_timesteps, t, seed, lang):
        result, picked = compute(image, schedule, num_train_timesteps, t, seed)
        return (*pictures(result, picked, lang), *plots(result, lang), result.summary())

    # The live path answers a slider move with the images first (tens of ms), then
    # redraws the two plots (a few hundred ms) in a follow-up event.
    @guarded(tr)
    def live_pictures(image, schedule, num_train_timesteps, t, seed, lang):
        if not image:  # the image box was just cleared: wait quietly for a new one
            return [gr.skip()] * 6
        result, picked = compute(image, schedule, num_train_timesteps, t, seed)
        return (*pictures(result, picked, lang), result.summary())

    @guarded(tr)
    def live_plots(image, schedule, num_train_timesteps, t, seed, lang):
        if not image:
            return [gr.skip()] * 2
        return plots(compute(image, schedule, num_train_timesteps, t, seed)[0], lang)

    @guarded(tr)
    def export(image, schedule, num_train_timesteps, seed, lang):
        _, x0, _ = _load(image)
        sched = noising.get_schedule(schedule, num_train_timesteps)
        seed = check_range("seed", seed, *noising.LIMITS["seed"], integer=True)
        out = Path(tempfile.mkdtemp(prefix="dl-gif-")) / f"forward_noising_{schedule}.gif"
        return str(noising.export_gif(x0, schedule, sched.num_train_timesteps, seed, out))

    def rescale_t(num_steps, t):
        num_steps = int(num_steps) if isinstance(num_steps, (int, float)) else 1000
        return gr.update(maximum=num_steps, value=min(int(t), num_steps) if isinstance(t, (int, float)) else 0)

    inputs = [image, schedule, steps, t, seed, lang]
    common = dict(inputs=inputs, js=LANG_JS, concurrency_id="light")
    run.click(forward, outputs=[notice, closed, eps, stepwise, strip, curves, hist, summary], **common,
              api_name="forward_noise")
    live = dict(fn=live_pictures, outputs=[notice, closed, eps, stepwise, strip, summary], **common,
                api_visibility="private")
    follow = dict(fn=live_plots, outputs=[curves, hist], **common, api_visibility="private",
                  show_progress="hidden")
    gr.on([t.input, schedule.change, seed.submit, image.change], **live, trigger_mode="always_last",
          show_progress="minimal").then(**follow)
    steps.input(rescale_t, [steps, t], t, api_visibility="private", queue=False).then(**live).then(**follow)
    gif_btn.click(export, [image, schedule, steps, seed, lang], gif_file, js=LANG_JS,
                  concurrency_id="light", api_name="forward_noise_gif")
    demo.load(**live).then(**follow)
