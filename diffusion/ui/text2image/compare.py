"""Lesson 6 tab, two sections that run one request several times from the same noise.

* **Two prompts** (``/text_to_image_compare``): prompt A and prompt B from the same seed,
  hence the same z_T, and optionally a third column whose text embedding is halfway
  between theirs. Each column is exactly a ``/text_to_image`` run of its request.
* **Guidance sweep** (``/text_to_image_guidance_sweep``): one prompt at the model's sweep
  of guidance scales, with a sentence per scale on what it did, measured on the picture.

Both are one job of the server's queue and one GPU call (:func:`diffusion.lessons.text2image.calls.generate_many`);
each column's run is kept in the tab's run store under its own id, so the step slider, the
attention maps and the latent's path work on every column.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np

from diffusion.errors import InputError
from diffusion.lessons import text2image as t2i
from diffusion.lessons.text2image import calls as t2i_calls
from diffusion.lessons.text2image.inside import guidance_effects
from diffusion.models import registry as models
from diffusion.schedule import display_t
from diffusion.serving import gpu
from diffusion.serving.jobs import Waiting, request_key
from diffusion.ui.handlers import bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator
from diffusion.ui.settings import AppSettings
from diffusion.ui.text2image.run import RUNS, TextToImageHandlers
from diffusion.ui.widgets import LATEX, progress_html, waiting_html

PROMPT_B = "a large blue square in the center on a white background"
_IDS = re.compile(r"^[0-9a-f]{32}(,[0-9a-f]{32}){0,3}$")


class ManyRunHandlers:
    """The two sections' handlers, on the tab's pipelines and run store."""

    def __init__(self, tab: TextToImageHandlers) -> None:
        self.tab, self.tr = tab, tab.tr

    def _run(self, requests: list[t2i.T2IRequest], name: str, lang: str, gr_request: Any, titles: list[str],
             ids: list[str]):
        """Queue one :func:`generate_many` job and stream it; yields ``(update, runs, shared)``, runs last."""
        tr, settings = self.tr, self.tab.settings
        weights = models.weights_digest(models.T2I if name == t2i.EMBEDDED else name)
        key = request_key("text2image_many", {"requests": [vars(r) for r in requests], "model": name,
                                              "device": settings.device,
                                              "content_filter": settings.safety_checker}, weights)
        work = gpu.GpuWork(t2i_calls.generate_many, {
            "ref": None if name == t2i.EMBEDDED else name, "device": settings.device, "offline": settings.offline,
            "requests": requests, "model": name, "pictures": gpu.on_zero_gpu(), "safety": settings.safety_checker},
            gpu_s=t2i_calls.many_gpu_seconds(requests), partial=t2i_calls.rebuilt_many)
        ticket = self.tab.jobs.submit(
            "text2image", lambda callback, stop_flag: gpu.execute(work, callback, stop_flag), key=key,
            client=client_of(gr_request), estimate_s=0.05 * sum(r.num_inference_steps for r in requests))
        RUNS.add_live(ids[0], ticket)
        runs = None
        try:
            for info in ticket.updates():
                if isinstance(info, Waiting):
                    yield {"status": waiting_html(tr, lang, info)}, None, False
                    continue
                column = getattr(info, "column", 0)
                done = column * requests[0].num_inference_steps + info.step + 1
                total = len(requests) * requests[0].num_inference_steps
                text = tr.text("text2image.many_progress", lang, column=titles[column], step=info.step + 1,
                               total=info.total, t=display_t(info.t),
                               seconds=time.perf_counter() - ticket.job.live.started)
                update = {"status": progress_html(done / max(total, 1), text)}
                if getattr(info, "preview", None) is not None:
                    update[f"col{column}"] = info.preview
                yield update, None, False
            runs = ticket.result
        finally:
            ticket.close()
            for i, run_id in enumerate(ids):
                RUNS.finish(run_id, runs[i] if runs is not None and i < len(runs) else None)
        yield {}, runs, ticket.shared

    def _setup(self, model: Any, prompt: Any, negative: Any, steps: Any, guidance: Any, seed: Any, scheduler: Any,
               width: Any, height: Any) -> tuple[t2i.T2IRequest, str]:
        pipe, name = self.tab.pipeline_for(self.tab.default_model if model is None else model)
        request = t2i.T2IRequest(prompt, negative, steps, guidance, seed, scheduler, width, height, 1).validated(
            t2i.default_side(pipe), t2i.is_lcm(pipe))
        return request, name

    def compare(self, prompt_a, prompt_b, negative_prompt="", num_inference_steps=30, guidance_scale=2.0, seed=0,
                scheduler="ddim", width=0, height=0, model=None, lang="en", gr_request: gr.Request = None):
        """``/text_to_image_compare``: prompts A and B from the same noise, step by step, then both pictures."""
        tr = self.tr
        ids = [RUNS.new_id(), RUNS.new_id()]
        for run_id in ids:
            RUNS.reserve(run_id)
        try:
            yield {"status": progress_html(0, tr.text("text2image.loading", lang)), "col0": None, "col1": None,
                   "run_ids": ",".join(ids), "scrub": gr.update(interactive=False, value=1)}
            request_a, name = self._setup(model, prompt_a, negative_prompt, num_inference_steps, guidance_scale,
                                          seed, scheduler, width, height)
            request_b, _ = self._setup(model, prompt_b, negative_prompt, num_inference_steps, guidance_scale, seed,
                                       scheduler, width, height)
            if not request_a.prompt or not request_b.prompt:
                raise InputError("compare_needs_prompts", "Type both prompts, A and B.")
            stream = self._run([request_a, request_b], name, lang, gr_request, ["A", "B"], ids)
        except BaseException:
            for run_id in ids:
                RUNS.release(run_id)
            raise
        runs, shared = None, False
        for update, runs, shared in stream:
            if update:
                yield update
        pictures = [np.asarray(run.images[0]) if run.images else None for run in runs] + [None] * (2 - len(runs))
        stopped = len(runs) < 2 or any(run.stopped for run in runs)
        key = "text2image.compare_stopped" if stopped else "text2image.compare_done"
        seconds = sum(run.seconds for run in runs)
        difference = None
        if pictures[0] is not None and pictures[1] is not None and pictures[0].shape == pictures[1].shape:
            difference = float(np.abs(pictures[0].astype(np.int16) - pictures[1].astype(np.int16)).mean() / 255.0)
        text = tr.text(key, lang, seconds=seconds)
        if difference is not None:
            text += " " + tr.text("text2image.compare_difference", lang, d=difference)
        if shared:
            text += " " + tr.text("queue.shared", lang)
        steps = max((len(run) for run in runs), default=0)
        summary = {"run_ids": ids[:len(runs)], "run_id_a": ids[0], "run_id_b": ids[1] if len(runs) > 1 else None,
                   "prompt_a": request_a.prompt, "prompt_b": request_b.prompt, "seed": request_a.seed,
                   "steps": request_a.num_inference_steps, "guidance_scale": request_a.guidance_scale,
                   "scheduler": request_a.scheduler, "width": request_a.width, "height": request_a.height,
                   "model": name, "stopped": stopped, "seconds": round(seconds, 3),
                   "mean_abs_difference": None if difference is None else round(difference, 4), "shared": shared}
        yield {"status": progress_html(1.0, text), "col0": pictures[0], "col1": pictures[1],
               "scrub": gr.update(interactive=steps > 1, maximum=max(steps, 2), value=max(steps, 1)),
               "run_ids": ",".join(ids), "summary": summary}

    def scrub(self, run_ids, step, lang):
        """``/text_to_image_compare_scrub``: x̂₀ of every column at the slider's step (1-based)."""
        if not isinstance(run_ids, str) or not _IDS.match(run_ids):
            raise InputError("t2i_no_run", "Run it first; then it can be replayed.")
        update, text = {}, ""
        for column, run_id in enumerate(run_ids.split(",")[:2]):
            run = RUNS.get(run_id)
            info = run.scrub(step)
            update[f"col{column}"] = run.x0_picture(info)
            text = self.tr.text("text2image.scrubbed", lang, step=info.step + 1, total=len(run), t=display_t(info.t),
                                alpha_bar=info.alpha_bar)
        update["status"] = progress_html(1.0, text)
        return update

    def sweep(self, prompt, negative_prompt="", num_inference_steps=30, seed=0, scheduler="ddim", width=0, height=0,
              model=None, lang="en", gr_request: gr.Request = None):
        """``/text_to_image_guidance_sweep``: one prompt and seed at the model's guidance scales, side by side."""
        tr = self.tr
        choice = self.tab.default_model if model is None else model
        scales = t2i.defaults_for(choice if isinstance(choice, str) else t2i.EMBEDDED).sweep
        ids = [RUNS.new_id() for _ in scales]
        for run_id in ids:
            RUNS.reserve(run_id)
        try:
            yield {"status": progress_html(0, tr.text("text2image.loading", lang)), "gallery": [], "sentences": "",
                   "run_ids": ",".join(ids)}
            base, name = self._setup(model, prompt, negative_prompt, num_inference_steps, scales[0], seed, scheduler,
                                     width, height)
            requests = [replace(base, guidance_scale=float(w)) for w in scales]
            stream = self._run(requests, name, lang, gr_request, [f"w = {w:g}" for w in scales], ids)
        except BaseException:
            for run_id in ids:
                RUNS.release(run_id)
            raise
        runs, shared = None, False
        shown: dict[int, Any] = {}
        for update, runs, shared in stream:
            previews = {int(k[3:]): v for k, v in update.items() if k.startswith("col")}
            if previews:
                shown.update(previews)
                update = {"status": update["status"],
                          "gallery": [(shown[c], f"w = {scales[c]:g}") for c in sorted(shown)]}
            if update:
                yield update
        pictures = [np.asarray(run.images[0]) for run in runs if run.images]
        effects = guidance_effects(scales[:len(pictures)], pictures)
        lines = []
        for effect in effects:
            line = tr.text(f"text2image.sweep_{effect.regime}", lang, w=effect.scale)
            first = effects[0]
            line += " " + tr.text("text2image.sweep_measured", lang, s=effect.saturation, c=effect.contrast,
                                  w0=first.scale, ds=effect.saturation - first.saturation,
                                  dc=effect.contrast - first.contrast)
            if effect.change is not None:
                line += " " + tr.text("text2image.sweep_change", lang, d=effect.change)
            lines.append(f"- **w = {effect.scale:g}**: {line}")
        stopped = len(runs) < len(scales) or any(run.stopped for run in runs)
        text = tr.text("text2image.sweep_stopped" if stopped else "text2image.sweep_done", lang,
                       seconds=sum(run.seconds for run in runs))
        if shared:
            text += " " + tr.text("queue.shared", lang)
        summary = {"scales": list(scales[:len(runs)]), "run_ids": ids[:len(runs)], "prompt": base.prompt,
                   "seed": base.seed, "steps": base.num_inference_steps, "scheduler": base.scheduler, "model": name,
                   "stopped": stopped, "shared": shared,
                   "effects": [{"scale": e.scale, "saturation": round(e.saturation, 4),
                                "contrast": round(e.contrast, 4),
                                "change": None if e.change is None else round(e.change, 4)} for e in effects]}
        yield {"status": progress_html(1.0, text),
               "gallery": [(p, f"w = {w:g}") for p, w in zip(pictures, scales)],
               "sentences": "\n".join(lines), "summary": summary, "run_ids": ",".join(ids)}

    @staticmethod
    def stop(run_ids) -> None:
        """Stop the section's live job (its first run id holds it)."""
        if isinstance(run_ids, str) and _IDS.match(run_ids):
            RUNS.stop(run_ids.split(",")[0])


def build_compare(tr: Translator, settings: AppSettings, main: dict[str, Any], handlers: ManyRunHandlers) -> None:
    """The two-prompts section: prompt B, Compare and Stop, both columns, one step slider."""
    gr.Markdown(tr("text2image.compare_intro"), latex_delimiters=LATEX)
    with gr.Row():
        prompt_b = gr.Textbox(PROMPT_B, label=tr("text2image.prompt_b"), lines=1, elem_id="t2i-prompt-b",
                              max_length=t2i.MAX_PROMPT_CHARS, scale=3)
        run = gr.Button(tr("text2image.compare_run"), variant="primary", elem_id="t2i-compare-run", scale=1)
        stop = gr.Button(tr("text2image.stop"), variant="stop", elem_id="t2i-compare-stop", scale=1)
    status = gr.HTML(elem_id="t2i-compare-status")
    with gr.Row():
        col0 = gr.Image(label=tr("text2image.column_a"), format="png", height=240, interactive=False,
                        elem_id="t2i-compare-a", elem_classes=["dl-pixelated"])
        col1 = gr.Image(label=tr("text2image.column_b"), format="png", height=240, interactive=False,
                        elem_id="t2i-compare-b", elem_classes=["dl-pixelated"])
    scrub = gr.Slider(1, t2i.LIMITS["num_inference_steps"][1], value=1, step=1, interactive=False,
                      label=tr("text2image.compare_scrub"), elem_id="t2i-compare-scrub")
    summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-compare-summary")
    run_ids = gr.Textbox(visible=False, max_length=140, elem_id="t2i-compare-ids")
    outputs = dict(status=status, col0=col0, col1=col1, scrub=scrub, run_ids=run_ids, summary=summary)
    m = main
    inputs = [m["prompt"], prompt_b, m["negative"], m["steps"], m["guidance"], m["seed"], m["scheduler"], m["width"],
              m["height"], m["model"], m["lang"]]
    run.click(bind(guarded(tr)(handlers.compare), outputs), inputs, list(outputs.values()), js=LANG_JS,
              api_name="text_to_image_compare", show_progress="hidden", **settings.model_events())
    stop.click(handlers.stop, [run_ids], None, queue=False, api_name="text_to_image_compare_stop")
    scrubbed = dict(status=status, col0=col0, col1=col1)
    scrub.input(bind(guarded(tr)(handlers.scrub), scrubbed), [run_ids, scrub, m["lang"]], list(scrubbed.values()),
                js=LANG_JS, api_name="text_to_image_compare_scrub", concurrency_id="light",
                trigger_mode="always_last", show_progress="hidden")


def build_sweep(tr: Translator, settings: AppSettings, main: dict[str, Any], handlers: ManyRunHandlers) -> None:
    """The guidance-sweep section: one button, the pictures side by side, a sentence per scale."""
    gr.Markdown(tr("text2image.sweep_intro"), latex_delimiters=LATEX)
    with gr.Row():
        run = gr.Button(tr("text2image.sweep_run"), variant="primary", elem_id="t2i-sweep-run")
        stop = gr.Button(tr("text2image.stop"), variant="stop", elem_id="t2i-sweep-stop")
    status = gr.HTML(elem_id="t2i-sweep-status")
    gallery = gr.Gallery(label=tr("text2image.sweep_gallery"), columns=4, height="auto", format="png",
                         object_fit="contain", elem_id="t2i-sweep-gallery", elem_classes=["dl-pixelated"])
    sentences = gr.Markdown(elem_id="t2i-sweep-sentences")
    summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-sweep-summary")
    run_ids = gr.Textbox(visible=False, max_length=140, elem_id="t2i-sweep-ids")
    outputs = dict(status=status, gallery=gallery, sentences=sentences, summary=summary, run_ids=run_ids)
    m = main
    inputs = [m["prompt"], m["negative"], m["steps"], m["seed"], m["scheduler"], m["width"], m["height"], m["model"],
              m["lang"]]
    run.click(bind(guarded(tr)(handlers.sweep), outputs), inputs, list(outputs.values()), js=LANG_JS,
              api_name="text_to_image_guidance_sweep", show_progress="hidden", **settings.model_events())
    stop.click(handlers.stop, [run_ids], None, queue=False, api_name="text_to_image_guidance_sweep_stop")
