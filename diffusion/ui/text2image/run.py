"""Lesson 6 tab, its main section: text-to-image through a diffusers pipeline, streamed live and scrubbable.

The run works like lesson 4's, through the same serving layer:
:func:`diffusion.lessons.text2image.generate` runs as a job of the server's queue
(:mod:`diffusion.serving.jobs`: a waiting student sees their place, and identical requests
share one run), the handler streams the newest step a few times a second, Stop (or a closed page) ends the pipeline after its current step, and the
recorded latents stay in a bounded :class:`~diffusion.serving.store.RunStore` under a run
id for the step slider. Frames are decoded by the VAE only when shown, so recording costs
next to nothing.

The handlers (:class:`TextToImageHandlers`) return ``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from diffusion.images import check_upload, load_image
from diffusion.lessons import text2image as t2i
from diffusion.models import registry as models
from diffusion.schedule import display_t
from diffusion.lessons.text2image import calls as t2i_calls
from diffusion.lessons.text2image import safety as t2i_safety
from diffusion.serving import gpu
from diffusion.serving.jobs import Waiting, request_key
from diffusion.serving.store import RunStore
from diffusion.ui.handlers import EXAMPLES_CLIENT, bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input, normalize_lang
from diffusion.ui.player import frame_player
from diffusion.ui.run_player import RunPlayers, draw_frames, kept_run, pack_run
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, ImageInput, progress_html, waiting_html

log = logging.getLogger(__name__)
DEFAULTS = t2i.T2IRequest()
RUNS = RunStore(max_bytes=400 * 2**20, missing_code="t2i_no_run", expired_code="t2i_run_expired")
PLAYERS = RunPlayers(capacity=8)
PLAYER_FRAMES = 30  # steps sent to the browser's player: each costs one VAE decode, once per run
PLAYER_SIDE = 384   # the player's pictures are shrunk to at most this many pixels a side
MAX_INIT_SIDE = 1024
EXAMPLES = ("a large red circle in the center on a white background",
            "a small yellow star at the top right on a blue background",
            "a large green triangle at the bottom left on a black background",
            "a purple square on an orange background", "a blue star")

SCHEDULER_LABELS = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "euler_ancestral": "Euler ancestral",
                    "dpm_solver": "DPM-Solver++ 2M", "lcm": "LCM"}


def scheduler_choices(suits: t2i.ModelDefaults) -> list[tuple[str, str]]:
    """The scheduler dropdown's choices for a model: the ones that apply to it."""
    return [(SCHEDULER_LABELS[s], s) for s in suits.schedulers]


def _pictures(generation: Any, info: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The latent z_t of one recorded step as a picture, and its x̂₀ decoded by the VAE (None if out of reach).

    Both as they may be shown: x̂₀ first, as its check decides whether the latent view is hidden too.
    """
    x0 = generation.x0_picture(info)
    return t2i_safety.screen_latent(generation.verdicts, info.step, t2i.latent_picture(info.x_t)), x0


def _player_pictures(generation: Any, info: Any) -> list[np.ndarray]:
    latent, x0 = _pictures(generation, info)
    return [latent, x0 if x0 is not None else np.zeros_like(latent)]


class TextToImageHandlers:
    """The tab's event handlers; each yields or returns ``{output name: value}``.

    Args:
        tr: The UI strings.
        settings: The server's settings (device, offered models, offline).
        default_model: The model a request without one gets.
    """

    def __init__(self, tr: Translator, settings: AppSettings, default_model: str) -> None:
        self.tr, self.settings, self.default_model = tr, settings, default_model
        self.jobs = settings.jobs
        self.extra = tuple(settings.t2i_models)

    def pipeline_for(self, choice: Any) -> tuple[Any, str]:
        """The loaded pipeline for a model choice, and the name its summary shows."""
        embedded = models.MODELS[models.T2I].path
        ref = t2i.resolve_model(choice, embedded, self.extra, self.settings.allow_any_model)
        name = t2i.EMBEDDED if Path(ref) == embedded else ref
        pipe = models.load_text2image(None if name == t2i.EMBEDDED else ref, self.settings.device,
                                      offline=self.settings.offline, safety=self.settings.safety_checker)
        return pipe, name

    def generate(self, prompt, negative_prompt="", num_inference_steps=DEFAULTS.num_inference_steps,
                 guidance_scale=DEFAULTS.guidance_scale, seed=DEFAULTS.seed, scheduler=DEFAULTS.scheduler,
                 width=0, height=0, batch_size=DEFAULTS.batch_size, model=None, init_image=None,
                 strength=DEFAULTS.strength, lang="en", gr_request: gr.Request = None, example: bool = False):
        # defaults: all but the prompt are optional through the API
        """``/text_to_image``: stream a pipeline run, then its pictures, slider and summary."""
        tr = self.tr
        new_id = RUNS.new_id()
        RUNS.reserve(new_id)  # a Stop pressed before the run is queued still reaches it
        try:
            yield {"status": progress_html(0, tr.text("example.preparing" if example else "text2image.loading", lang)),
                   "scrub": gr.update(interactive=False, value=1), "notice": "", "run_id": new_id}
            pipe, name = self.pipeline_for(self.default_model if model is None else model)
            request = t2i.T2IRequest(prompt, negative_prompt, num_inference_steps, guidance_scale, seed, scheduler,
                                     width, height, batch_size, strength).validated(t2i.default_side(pipe),
                                                                                    t2i.is_lcm(pipe))
            start = None
            if init_image:
                pixels, _ = load_image(check_upload(init_image), max_side=MAX_INIT_SIDE, mode="RGB")
                start = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
            unknown = t2i.unknown_words(pipe, request.prompt)
            note = tr.text("text2image.unknown", lang, words=", ".join(unknown)) if unknown else ""
            init = hashlib.sha256(start.tobytes()).hexdigest() if start is not None else None
            weights = models.weights_digest(models.T2I if name == t2i.EMBEDDED else name)
            key = request_key("text2image", {**vars(request), "model": name, "init": init,
                                             "device": self.settings.device,
                                             "content_filter": self.settings.safety_checker}, weights)
            work = gpu.GpuWork(t2i_calls.generate, {
                "ref": None if name == t2i.EMBEDDED else name, "device": self.settings.device,
                "offline": self.settings.offline, "request": request, "model": name, "init_image": start,
                "pictures": gpu.on_zero_gpu(), "safety": self.settings.safety_checker},
                gpu_s=t2i_calls.gpu_seconds(request), partial=t2i_calls.rebuilt)
            ticket = self.jobs.submit(
                "text2image", lambda callback, stop_flag: gpu.execute(work, callback, stop_flag),
                key=key, client=EXAMPLES_CLIENT if example else client_of(gr_request), capped=not example,
                estimate_s=0.05 * request.num_inference_steps * request.batch_size)
        except BaseException:  # the page went away or the request was refused: no run takes the id
            RUNS.release(new_id)
            raise
        RUNS.add_live(new_id, ticket)
        generation = None
        try:
            for info in ticket.updates():
                if isinstance(info, Waiting):
                    yield {"status": waiting_html(tr, lang, info), "notice": note}
                    continue
                text = tr.text("text2image.progress", lang, step=info.step + 1, total=info.total,
                               t=display_t(info.t), seconds=time.perf_counter() - ticket.job.live.started)
                blocked = getattr(info, "blocked", ())
                latent = t2i.latent_picture(info.x_t)
                if any(blocked):  # a picture whose x̂₀ was blocked: its latent view is hidden too
                    latent = t2i_safety.replace_pictures(latent, len(blocked), blocked)
                update = {"status": progress_html((info.step + 1) / info.total, text), "latent": latent,
                          "notice": note + (" " + tr.text("text2image.blocked", lang) if any(blocked) else "")}
                if getattr(info, "preview", None) is not None:
                    update["x0"] = info.preview
                yield update
            generation = ticket.result
        finally:
            ticket.close()
            RUNS.finish(new_id, generation)
        n = len(generation)
        total = n if not generation.stopped else max(n, request.num_inference_steps)
        key = "text2image.stopped" if generation.stopped else "text2image.finished"
        text = tr.text(key, lang, done=n, total=total, seconds=generation.seconds)
        if example:
            text = tr.text("example.shown", lang) + " " + text
        elif ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        latent, x0 = _pictures(generation, generation.frame(n - 1)) if n else (None, None)
        items = [(np.asarray(im), f"{i + 1}") for i, im in enumerate(generation.images)]
        result = dict(generation.summary(), run_id=new_id, unknown_words=unknown, shared=ticket.shared)
        if any(result["blocked"]):
            note = (note + " " + tr.text("text2image.blocked", lang)).strip()
        yield {"status": progress_html(1.0 if not generation.stopped else n / max(total, 1), text),
               "latent": latent, "x0": x0, "scrub": gr.update(interactive=n > 1, maximum=max(n, 2), value=max(n, 1)),
               "gallery": items, "notice": note, "run_id": new_id, "summary": result}

    def replay(self, current_id, step, lang):
        """``/text_to_image_scrub``: z_t and the decoded x̂₀ of step ``step`` (1-based) of a kept run."""
        generation = RUNS.get(current_id)
        n = len(generation)
        info = generation.scrub(step)
        text = self.tr.text("text2image.scrubbed", lang, step=info.step + 1, total=n, t=display_t(info.t),
                            alpha_bar=info.alpha_bar)
        latent, x0 = _pictures(generation, info)
        return {"status": progress_html((info.step + 1) / n, text), "latent": latent, "x0": x0}

    def player(self, current_id, lang):
        """The browser player's value for a kept run: z_t and the decoded x̂₀ at up to :data:`PLAYER_FRAMES` steps.

        Sent once, by a private event after each run; the VAE decodes each of those steps
        once per run (kept for every page showing it), and Play and the player's slider
        then need no request. An empty or expired run id gives an empty player, not an error.
        """
        generation, lang, tr = kept_run(RUNS, current_id), normalize_lang(lang), self.tr
        if generation is None:
            return {"player": ""}
        decodes = generation.decoder is not None or bool(generation.x0_pictures)
        frames = PLAYERS.get(generation, "frames", lambda: draw_frames(
            generation, (lambda info: _player_pictures(generation, info)) if decodes else (lambda info: [
                t2i_safety.screen_latent(generation.verdicts, info.step, t2i.latent_picture(info.x_t))]),
            PLAYER_FRAMES, max_side=PLAYER_SIDE, average=(False, True)))

        def note(n: int) -> str:
            key = "text2image.player_note" if n < frames.total else "text2image.player_note_all"
            text = tr.text(key, lang, n=n, total=frames.total)
            shrunk = tr.text("text2image.player_note_shrunk", lang, s=frames.factor) if frames.factor > 1 else ""
            return f"{text} {shrunk}".strip()
        titles = [tr.text("text2image.latent", lang), tr.text("text2image.x0", lang)][:len(frames.pictures)]
        small = max(p.shape[1] for p in frames.pictures[-1]) <= 256  # tiny models: show their pixels sharp
        return {"player": PLAYERS.get(generation, lang, lambda: pack_run(
            frames, titles, tr, lang, caption_key="text2image.player_caption", note=note, pixelated=small))}

    def explain_strength(self, model, scheduler, num_inference_steps, strength, lang):
        """The image-to-image start as lesson 2's closed form, for the strength chosen."""
        pipe, _ = self.pipeline_for(model)
        request = t2i.T2IRequest(num_inference_steps=num_inference_steps, scheduler=scheduler,
                                 strength=strength).validated(t2i.default_side(pipe), t2i.is_lcm(pipe))
        start = t2i.strength_to_timestep(pipe, request.scheduler, request.num_inference_steps, request.strength)
        if start["t"] is None or start["alpha_bar"] is None:
            return {"strength_info": ""}
        a = start["alpha_bar"]
        return {"strength_info": self.tr.text(
            "text2image.strength_info", lang, strength=request.strength, steps=start["steps_run"],
            total=request.num_inference_steps, t=display_t(start["t"]), alpha_bar=a, a=math.sqrt(a),
            b=math.sqrt(1 - a))}

    def model_defaults(self, model, lang):
        """The settings that suit the chosen model (:func:`~diffusion.lessons.text2image.defaults_for`)."""
        suits = t2i.defaults_for(model if isinstance(model, str) and model.strip() else t2i.EMBEDDED)
        sweep = ", ".join(f"{w:g}" for w in suits.sweep)
        return {"steps": suits.num_inference_steps, "guidance": suits.guidance_scale, "width": suits.side,
                "height": suits.side, "scheduler": gr.update(choices=scheduler_choices(suits), value=suits.scheduler),
                "model_note": self.tr.text("text2image.defaults_set", lang, steps=suits.num_inference_steps,
                                           guidance=suits.guidance_scale, scheduler=SCHEDULER_LABELS[suits.scheduler],
                                           sweep=sweep)}

    @staticmethod
    def stop(current_id) -> None:
        """``/text_to_image_stop``: end the live run after its current step (it stays scrubbable)."""
        RUNS.stop(current_id)


def build_generate(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> dict[str, Any]:
    """Lay out the main section and wire its events to :class:`TextToImageHandlers`.

    Returns:
        Its handlers and the components the tab's other sections read (``handlers``,
        ``model``, ``prompt``, the settings, ``run_id``, ``lang``, ``run_event``).
    """
    gr.Markdown(tr("text2image.intro"), latex_delimiters=LATEX)
    embedded_ok = models.text2image_available()
    if not embedded_ok:
        log.warning("lesson 6's embedded model is off: no usable folder at %s", models.MODELS[models.T2I].path)
        gr.Markdown(tr("text2image.no_model"), elem_classes=["dl-warning"], elem_id="t2i-no-model")
    extra = tuple(settings.t2i_models)
    choices = ([(tr("text2image.model_embedded"), t2i.EMBEDDED)] if embedded_ok else []) + \
        [(m, m) for m in (*extra, *t2i.SUGGESTED) if m]
    default_model = extra[0] if extra else (t2i.EMBEDDED if embedded_ok else t2i.SUGGESTED[0])
    handlers = TextToImageHandlers(tr, settings, default_model)
    heavy = settings.model_events()
    suits = t2i.defaults_for(default_model)

    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            model = gr.Dropdown(choices, value=default_model, label=tr("text2image.model"), elem_id="t2i-model",
                                allow_custom_value=settings.allow_any_model)
            prompt = gr.Textbox(DEFAULTS.prompt, label=tr("text2image.prompt"), lines=2, elem_id="t2i-prompt",
                                max_length=t2i.MAX_PROMPT_CHARS)
            gr.Examples([[e] for e in EXAMPLES], [prompt], label=tr("text2image.examples"))
            model_note = gr.Markdown(tr("text2image.defaults_note"), elem_id="t2i-defaults-note")
            negative = gr.Textbox("", label=tr("text2image.negative_prompt"), elem_id="t2i-negative",
                                  max_length=t2i.MAX_PROMPT_CHARS)
            with gr.Row():
                steps = gr.Slider(*t2i.LIMITS["num_inference_steps"], value=suits.num_inference_steps, step=1,
                                  label=tr("text2image.steps"), elem_id="t2i-steps")
                guidance = gr.Slider(*t2i.LIMITS["guidance_scale"], value=suits.guidance_scale, step=0.5,
                                     label=tr("text2image.guidance"), elem_id="t2i-guidance")
            with gr.Row():
                # Every scheduler is a valid choice on the server; choosing a model narrows the list shown.
                scheduler = gr.Dropdown([(SCHEDULER_LABELS[s], s) for s in t2i.SCHEDULERS], value=suits.scheduler,
                                        label=tr("text2image.scheduler"), elem_id="t2i-scheduler")
                seed = gr.Number(DEFAULTS.seed, precision=0, label=tr("text2image.seed"), elem_id="t2i-seed")
            with gr.Row():
                width = gr.Slider(0, t2i.MAX_SIDE, value=suits.side, step=8, label=tr("text2image.width"),
                                  elem_id="t2i-width")
                height = gr.Slider(0, t2i.MAX_SIDE, value=suits.side, step=8, label=tr("text2image.height"),
                                   elem_id="t2i-height")
            batch = gr.Slider(*t2i.LIMITS["batch_size"], value=DEFAULTS.batch_size, step=1,
                              label=tr("text2image.batch"), elem_id="t2i-batch")
            with gr.Accordion(tr("text2image.img2img"), open=False, elem_id="t2i-img2img"):
                init_image = ImageInput(label=tr("text2image.init_image"), type="filepath", sources=["upload"],
                                        height=180, elem_id="t2i-init")
                strength = gr.Slider(*t2i.LIMITS["strength"], value=DEFAULTS.strength, step=0.05,
                                     label=tr("text2image.strength"), elem_id="t2i-strength")
                strength_info = gr.Markdown(elem_id="t2i-strength-info")
            with gr.Row():
                run = gr.Button(tr("text2image.generate"), variant="primary", elem_id="t2i-run")
                stop = gr.Button(tr("text2image.stop"), variant="stop", elem_id="t2i-stop")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="t2i-status")
            notice = gr.Markdown(elem_id="t2i-notice")
            with gr.Row():
                latent = gr.Image(label=tr("text2image.latent"), format="png", height=260, interactive=False,
                                  elem_id="t2i-latent", elem_classes=["dl-pixelated"])
                x0 = gr.Image(label=tr("text2image.x0"), format="png", height=260, interactive=False,
                              elem_id="t2i-x0", elem_classes=["dl-pixelated"])
            scrub = gr.Slider(1, t2i.LIMITS["num_inference_steps"][1], value=1, step=1, interactive=False,
                              label=tr("text2image.scrub"), elem_id="t2i-scrub")
            # The whole run, played and scrubbed in the browser (its frames arrive once, after the run).
            player = frame_player(tr, "t2i-player", "text2image.player_slider")
            gallery = gr.Gallery(label=tr("text2image.gallery"), columns=4, height="auto", format="png",
                                 object_fit="contain", elem_id="t2i-gallery", elem_classes=["dl-pixelated"])
            summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-summary")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="t2i-run-id")
    lang = lang_input()

    outputs = dict(status=status, latent=latent, x0=x0, scrub=scrub, gallery=gallery, notice=notice, run_id=run_id,
                   summary=summary)
    scrub_out = dict(status=status, latent=latent, x0=x0)
    inputs = [prompt, negative, steps, guidance, seed, scheduler, width, height, batch, model, init_image, strength,
              lang]
    generate = bind(guarded(tr)(handlers.generate), outputs)  # its GPU work is one call inside (serving.gpu)
    # The player's frames follow each finished run (the example's too), read back by run id.
    player_event = dict(fn=bind(guarded(tr)(handlers.player), {"player": player}), inputs=[run_id, lang],
                        outputs=[player], js=LANG_JS, api_visibility="private", concurrency_id="light",
                        show_progress="minimal", trigger_mode="always_last")
    event = run.click(generate, inputs, list(outputs.values()), js=LANG_JS, api_name="text_to_image",
                      show_progress="hidden", **heavy)
    event.success(**player_event)
    run.click(lambda: "", None, [player], queue=False, api_visibility="private")  # a new run: the old frames go
    if default_model == t2i.EMBEDDED:  # the tab opens with the first example prompt's picture (embedded model)
        def example(lang):
            yield from handlers.generate(DEFAULTS.prompt, model=default_model, lang=lang, example=True)
        demo.load(bind(guarded(tr)(example), outputs), [lang], list(outputs.values()), js=LANG_JS,
                  show_progress="hidden", api_visibility="private", **heavy).success(**player_event)
        # At start-up: the example, and its player in both languages, before the first page asks.
        settings.examples.append(lambda: [handlers.player(list(example("en"))[-1]["run_id"], code)
                                          for code in ("en", "zh-CN")])
    stop.click(handlers.stop, [run_id], None, queue=False, api_name="text_to_image_stop")
    # Choosing a model sets the settings that suit it; the student can still change each one.
    suited = dict(steps=steps, guidance=guidance, scheduler=scheduler, width=width, height=height,
                  model_note=model_note)
    model.change(bind(guarded(tr)(handlers.model_defaults), suited), [model, lang], list(suited.values()),
                 js=LANG_JS, api_visibility="private", queue=False, show_progress="hidden")
    scrub.input(bind(guarded(tr)(handlers.replay), scrub_out), [run_id, scrub, lang], list(scrub_out.values()),
                js=LANG_JS, api_name="text_to_image_scrub", concurrency_id="light", trigger_mode="always_last",
                show_progress="hidden")
    explain = bind(guarded(tr)(handlers.explain_strength), {"strength_info": strength_info})
    for trigger in (strength.release, steps.release, scheduler.input):  # a student's change, not a model's defaults
        trigger(explain, [model, scheduler, steps, strength, lang], strength_info, js=LANG_JS,
                api_visibility="private", concurrency_id="light", show_progress="hidden")
    return dict(handlers=handlers, model=model, prompt=prompt, negative=negative, steps=steps, guidance=guidance,
                seed=seed, scheduler=scheduler, width=width, height=height, run_id=run_id, lang=lang, run_event=event,
                x0=x0)
