"""Lesson 4 tab: DDPM/DDIM sampling from the shipped digit model, streamed live and scrubbable.

One run works like this:

1. The validated request goes to the server's job queue (:mod:`diffusion.serving.jobs`),
   which runs :func:`diffusion.lessons.sampling.sample` in a worker thread (through
   :func:`diffusion.serving.gpu.execute`, a GPU call on ZeroGPU) and streams the
   newest step's x_t, x̂_0 and ε̂ a few times a second. While it waits, the student sees
   their place in the queue; identical requests (same seed and settings) share one run.
2. The Stop button sets the run's stop flag; the loop ends after the current step and
   the run finishes normally, with its partial trajectory. Closing the page does the same.
3. The finished :class:`~diffusion.lessons.sampling.Trajectory` stays in memory
   (:class:`~diffusion.serving.store.RunStore`, bounded in bytes) under a random run id, so
   the step slider and the GIF export read it back without recomputing anything.

The handlers (:class:`SamplingHandlers`) return ``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from diffusion.images import save_gif
from diffusion.lessons.sampling import (
    DIGITS, LIMITS, SAMPLERS, SampleRequest, StepInfo, Trajectory, calls, to_uint8_grid,
)
from diffusion.lessons.sampling.batched import batch_key
from diffusion.lessons.sampling.figures import plot_std
from diffusion.models import registry as models
from diffusion.schedule import display_t
from diffusion.devices import choose_precision
from diffusion.serving import gpu
from diffusion.serving.jobs import JobQueue, Ticket, Waiting, request_key
from diffusion.serving.store import RunStore
from diffusion.ui.handlers import EXAMPLES_CLIENT, bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input, normalize_lang
from diffusion.ui.player import frame_player
from diffusion.ui.run_player import RunPlayers, draw_frames, kept_run, pack_run
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, progress_html, waiting_html

MODEL = "mnist"
DEFAULTS = SampleRequest()
RUN_STORE_BYTES = 600 * 2**20  # finished runs kept for scrubbing: DDPM-1000 × 16 digits is 75 MB
GIF_MAX_FRAMES = 60
PLAYER_FRAMES = 60  # steps of a run sent to the browser's player (first and last always)
T_MAX = 1000  # the sliders' top; the model's own T is checked on the server
log = logging.getLogger("diffusion.ui.sampling")
RUNS = RunStore(RUN_STORE_BYTES)
PLAYERS = RunPlayers(capacity=8)


def picture(batch: torch.Tensor, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """A batch of digits as one square-ish uint8 grid (shown upscaled by the browser)."""
    nrow = math.ceil(math.sqrt(batch.shape[0]))
    return to_uint8_grid(batch, nrow=nrow, lo=lo, hi=hi)


def step_pictures(info: StepInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x_t and x̂_0 of one step on the [-1, 1] pixel scale (clipped, as in lesson 2), ε̂ on ±3."""
    return picture(info.x_t), picture(info.x0_pred), picture(info.eps_pred, -3.0, 3.0)


def gallery_items(trajectory: Trajectory, tr: Translator, lang: str) -> list[tuple[np.ndarray, str]]:
    """Each sample as a native 28×28 uint8 picture with its digit as the caption."""
    items = []
    for image, label in zip(trajectory.samples, trajectory.labels):
        pixels = to_uint8_grid(image[None], nrow=1, pad=0)
        items.append((pixels, tr.text("sampling.caption", lang, digit=int(label))))
    return items


def run_summary(trajectory: Trajectory, run_id: str) -> dict[str, Any]:
    """The JSON summary: the issue's fixed keys first, then the run's details."""
    r = trajectory.request
    head = {"sampler": r.sampler, "steps": r.num_inference_steps, "seconds": round(trajectory.seconds, 3),
            "digit": r.digit, "guidance_scale": r.guidance_scale, "seed": r.seed}
    # The per-step spread is left out: the comparison plot shows it, and 1000 numbers drown the rest.
    details = {k: v for k, v in trajectory.summary().items() if k not in head and k != "x_t_std"}
    return {**head, **details, "run_id": run_id}


def _request(sampler, num_inference_steps, eta, seed, batch_size, digit, guidance_scale) -> SampleRequest:
    # Validation happens in sample(); here only the shape of the request is built.
    return SampleRequest(sampler=sampler, num_inference_steps=num_inference_steps, eta=eta, seed=seed,
                         batch_size=batch_size, digit=digit, guidance_scale=guidance_scale)


class SamplingHandlers:
    """The tab's event handlers; each yields or returns ``{output name: value}``.

    Args:
        tr: The UI strings.
        device: Where the digit model runs.
    """

    def __init__(self, tr: Translator, device: str, jobs: JobQueue | None = None) -> None:
        self.tr, self.device = tr, device
        self.jobs = jobs or JobQueue()
        self.precision = choose_precision(device)
        if self.jobs.batcher is not None:
            self.jobs.batcher.register("sampling", self.run_batch)

    def submit(self, request: SampleRequest, client: str, record: bool = True, capped: bool = True) -> Ticket:
        """Queue ``request`` (or join an identical one); its trajectory comes from the ticket."""
        unet, scheduler_config = models.load_unet_model(MODEL, self.device)
        request = request.validated(scheduler_config["num_train_timesteps"])  # fail before it queues
        key = request_key("sampling", {**vars(request), "record": record, "precision": self.precision,
                                       "device": self.device}, models.weights_digest(MODEL))
        work = gpu.GpuWork(calls.run_request, {"request": request, "device": self.device, "record": record,
                                               "precision": self.precision},
                           gpu_s=calls.gpu_seconds(request), partial=calls.rebuilt)
        return self.jobs.submit(
            "sampling", lambda callback, stop: gpu.execute(work, callback, stop),
            key=key, client=client, estimate_s=calls.cpu_seconds(request), capped=capped,
            batch_key=batch_key(request, record, self.precision),
            payload=lambda live: (request, live.report, live.stop_event.is_set, record))

    def run_batch(self, payloads: list[tuple]) -> list[Trajectory]:
        """Run queued sampling jobs of the same shape in one loop (the job queue's batcher calls it)."""
        requests, callbacks, stops, records = zip(*payloads)
        kwargs = {"requests": list(requests), "device": self.device, "record": records[0],
                  "precision": self.precision}
        work = gpu.GpuWork(calls.run_requests, kwargs, gpu_s=sum(map(calls.gpu_seconds, requests)))
        return gpu.execute_batch(work, callbacks, stops, lambda kw, i, steps, seconds: calls.rebuilt_member(
            kw["requests"][i], steps, seconds, device=kw["device"], record=kw["record"], precision=kw["precision"]))

    def example(self, lang):
        """The run the tab opens with: the default settings, shared by every student (and cached)."""
        d = DEFAULTS
        yield from self.run(d.sampler, d.num_inference_steps, d.eta, d.seed, d.batch_size, d.digit, d.guidance_scale,
                            lang, example=True)

    def run(self, sampler, num_inference_steps, eta, seed, batch_size, digit, guidance_scale, lang,
            request: gr.Request = None, example: bool = False):
        """``/sample``: stream a run, then show its samples, slider and summary."""
        tr = self.tr
        asked = _request(sampler, num_inference_steps, eta, seed, batch_size, digit, guidance_scale)
        new_id = RUNS.new_id()
        RUNS.reserve(new_id)  # a Stop pressed before the run is queued still reaches it
        first = tr.text("example.preparing" if example else "sampling.loading", lang)
        try:
            yield {"status": progress_html(0, first), "gallery": [],
                   "scrub": gr.update(interactive=False, maximum=T_MAX, value=1), "run_id": new_id}
            ticket = self.submit(asked, EXAMPLES_CLIENT if example else client_of(request), capped=not example)
        except BaseException:  # the page went away or the request was refused: no run takes the id
            RUNS.release(new_id)
            raise
        RUNS.add_live(new_id, ticket)
        trajectory = None
        try:
            for info in ticket.updates():
                if isinstance(info, Waiting):
                    yield {"status": waiting_html(tr, lang, info)}
                    continue
                x_t, x0, eps = step_pictures(info)
                text = tr.text("sampling.progress", lang, step=info.step + 1, total=info.total, t=display_t(info.t),
                               seconds=time.perf_counter() - ticket.job.live.started)
                yield {"status": progress_html((info.step + 1) / info.total, text), "x_t": x_t, "x0": x0, "eps": eps}
            trajectory = ticket.result
        finally:
            ticket.close()  # the page was closed or the event cancelled: the run ends unless others watch it
            RUNS.finish(new_id, trajectory)
        last = trajectory.frame(len(trajectory) - 1)
        n = len(trajectory)
        if trajectory.stopped:
            text = tr.text("sampling.stopped", lang, done=n, total=trajectory.request.num_inference_steps,
                           seconds=trajectory.seconds)
        else:
            text = tr.text("sampling.finished", lang, total=n, seconds=trajectory.seconds)
        if example:
            text = tr.text("example.shown", lang) + " " + text
        elif ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        yield {"status": progress_html(n / trajectory.request.num_inference_steps, text),
               "x_t": picture(trajectory.samples),  # x_0 itself, after the last update
               "x0": picture(last.x0_pred), "eps": picture(last.eps_pred, -3.0, 3.0),
               "gallery": gallery_items(trajectory, tr, lang),
               "scrub": gr.update(interactive=n > 1, maximum=max(n, 2), value=n),
               "run_id": new_id, "summary": {**run_summary(trajectory, new_id), "shared": ticket.shared}}

    def replay(self, current_id, step, lang):
        """``/sample_scrub``: step ``step`` (1-based) of a finished run, from the store."""
        trajectory = RUNS.get(current_id)
        n = len(trajectory)
        info = trajectory.scrub(step)
        text = self.tr.text("sampling.scrubbed", lang, step=info.step + 1, total=n, t=display_t(info.t),
                            alpha_bar=info.alpha_bar)
        x_t, x0, eps = step_pictures(info)
        return {"status": progress_html((info.step + 1) / n, text), "x_t": x_t, "x0": x0, "eps": eps}

    def player(self, current_id, lang):
        """The browser player's value for a finished run: x_t and x̂_0 at up to :data:`PLAYER_FRAMES` steps.

        Sent once, by a private event after each run; Play and the player's slider then need
        no request. An empty or expired run id gives an empty player, not an error.
        """
        trajectory, lang, tr = kept_run(RUNS, current_id), normalize_lang(lang), self.tr
        if trajectory is None:
            return {"player": ""}
        frames = PLAYERS.get(trajectory, "frames", lambda: draw_frames(
            trajectory, lambda info: step_pictures(info)[:2], PLAYER_FRAMES))
        return {"player": PLAYERS.get(trajectory, lang, lambda: pack_run(
            frames, [tr.text("sampling.x_t", lang), tr.text("sampling.x0", lang)], tr, lang,
            caption_key="sampling.player_caption", pixelated=True,
            note=lambda n: tr.text("sampling.player_note" if n < len(trajectory) else "sampling.player_note_all",
                                   lang, n=n, total=len(trajectory))))}

    def export_gif(self, current_id, lang):
        """``/sample_gif``: the run as an animated GIF (x_t beside x̂_0), at most 60 frames."""
        trajectory = RUNS.get(current_id)
        n = len(trajectory)
        picks = sorted(set(np.linspace(0, n - 1, min(n, GIF_MAX_FRAMES)).round().astype(int).tolist()))
        frames = []
        for i in picks:
            left, right = step_pictures(trajectory.frame(i))[:2]
            gap = np.full((left.shape[0], 4), 255, dtype=np.uint8)
            frames.append(np.kron(np.hstack([left, gap, right]), np.ones((3, 3), dtype=np.uint8)))
        r = trajectory.request
        out = Path(tempfile.mkdtemp(prefix="dl-gif-")) / f"sampling_{r.sampler}_{len(trajectory)}steps_seed{r.seed}.gif"
        return {"gif": str(save_gif(frames, out, duration_ms=80))}

    def compare(self, ddpm_n, ddim_n, eta, seed, batch_size, digit, guidance_scale, lang,
                request: gr.Request = None):
        """``/sample_compare``: DDIM, then DDPM, from the same x_T; the pixel-spread plot."""
        tr = self.tr
        new_id = RUNS.new_id()
        text = tr.table("sampling.plot.", lang)
        big_t = models.load_unet_model(MODEL, self.device)[1]["num_train_timesteps"]
        yield {"status": progress_html(0, tr.text("sampling.loading", lang)), "ddpm": None, "ddim": None,
               "run_id": new_id}
        runs: dict[str, Trajectory] = {}
        finals: dict[str, np.ndarray] = {}
        for name, n in (("ddim", ddim_n), ("ddpm", ddpm_n)):
            # Same seed, same x_T: sample() draws x_T from the seed before anything else.
            asked = _request(name, n, eta if name == "ddim" else 0.0, seed, batch_size, digit, guidance_scale)
            ticket = self.submit(asked, client_of(request), record=False)
            RUNS.add_live(new_id, ticket)
            label = text.get(f"sampler_{name}", name)
            try:
                for info in ticket.updates():
                    if isinstance(info, Waiting):
                        yield {"status": waiting_html(tr, lang, info)}
                        continue
                    status = tr.text("sampling.compare_progress", lang, sampler=label, step=info.step + 1,
                                     total=info.total, t=display_t(info.t))
                    yield {"status": progress_html((info.step + 1) / info.total, status), name: picture(info.x0_pred)}
            finally:
                ticket.close()
                RUNS.finish(new_id, None)
            runs[name] = ticket.result
            finals[name] = picture(runs[name].samples)
            yield {name: finals[name]}
            if runs[name].stopped:
                break
        figure = plot_std(list(runs.values()), text, num_train_timesteps=big_t)
        result = {name: {"steps": len(t), "stopped": t.stopped, "seconds": round(t.seconds, 3),
                         **({"eta": t.request.eta} if name == "ddim" else {})} for name, t in runs.items()}
        ddim, ddpm = runs.get("ddim"), runs.get("ddpm")
        stopped = any(t.stopped for t in runs.values()) or ddpm is None
        result.update(seed=int(ddim.request.seed), digit=ddim.request.digit,
                      guidance_scale=ddim.request.guidance_scale, labels=[int(v) for v in ddim.labels])
        if stopped:
            status = tr.text("sampling.compare_stopped", lang)
        else:
            ratio = ddpm.seconds / max(ddim.seconds, 1e-9)
            result["speedup_ddim_over_ddpm"] = round(ratio, 2)
            result["mean_abs_pixel_difference"] = round(float((ddpm.samples - ddim.samples).abs().mean()), 4)
            status = tr.text("sampling.compare_done", lang, ddpm_s=ddpm.seconds, ddim_s=ddim.seconds, ratio=ratio)
        # Every output again in the last answer: API callers see only this one.
        yield {"status": progress_html(1.0, status), "ddpm": finals.get("ddpm"), "ddim": finals.get("ddim"),
               "plot": figure, "run_id": new_id, "summary": result}

    @staticmethod
    def stop(current_id) -> None:
        """``/sample_stop``: end the live run after its current step (it stays scrubbable)."""
        RUNS.stop(current_id)


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Lay out the sampling tab and wire its events to :class:`SamplingHandlers`."""
    gr.Markdown(tr("sampling.intro"), latex_delimiters=LATEX)
    if not models.available(MODEL):
        log.warning("lesson 4 is off: no usable model at %s", models.MODELS[MODEL].path)
        gr.Markdown(tr("sampling.no_model"), elem_classes=["dl-warning"], elem_id="sample-no-model")
        return
    handlers = SamplingHandlers(tr, settings.device, settings.jobs)
    heavy = settings.model_events()
    t_max = T_MAX
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            sampler = gr.Dropdown([(tr(f"sampler.{s}"), s) for s in SAMPLERS], value=DEFAULTS.sampler,
                                  label=tr("param.sampler"), elem_id="sample-sampler")
            steps = gr.Slider(1, t_max, value=DEFAULTS.num_inference_steps, step=1,
                              label=tr("param.num_inference_steps"), elem_id="sample-steps")
            eta = gr.Slider(*LIMITS["eta"], value=DEFAULTS.eta, step=0.05, label=tr("param.eta"),
                            visible=DEFAULTS.sampler == "ddim", elem_id="sample-eta")
            digit = gr.Dropdown([(tr("sampling.digit_random"), "random")] + [(d, d) for d in DIGITS[1:]],
                                value=DEFAULTS.digit, label=tr("param.digit"), elem_id="sample-digit",
                                allow_custom_value=True)
            batch = gr.Slider(*LIMITS["batch_size"], value=DEFAULTS.batch_size, step=1,
                              label=tr("param.batch_size"), elem_id="sample-batch")
            guidance = gr.Slider(*LIMITS["guidance_scale"], value=DEFAULTS.guidance_scale, step=0.5,
                                 label=tr("param.guidance_scale"), elem_id="sample-guidance")
            seed = gr.Number(DEFAULTS.seed, precision=0, label=tr("sampling.seed"), elem_id="sample-seed")
            with gr.Row():
                run = gr.Button(tr("sampling.run"), variant="primary", elem_id="sample-run")
                stop = gr.Button(tr("sampling.stop"), variant="stop", elem_id="sample-stop")
            gif_btn = gr.Button(tr("sampling.gif"), elem_id="sample-gif-btn")
            gif_file = gr.File(label=tr("sampling.gif_file"), height=90, elem_id="sample-gif")
        with gr.Column(scale=3):
            status = gr.HTML(elem_id="sample-status")
            with gr.Row():
                x_t = gr.Image(label=tr("sampling.x_t"), format="png", height=300, elem_id="sample-xt",
                               elem_classes=["dl-pixelated"], interactive=False)
                x0 = gr.Image(label=tr("sampling.x0"), format="png", height=300, elem_id="sample-x0",
                              elem_classes=["dl-pixelated"], interactive=False)
                eps = gr.Image(label=tr("sampling.eps"), format="png", height=300, elem_id="sample-eps",
                               elem_classes=["dl-pixelated"], interactive=False)
            scrub = gr.Slider(1, t_max, value=1, step=1, label=tr("sampling.scrub"), info=tr("sampling.scrub_info"),
                              interactive=False, elem_id="sample-scrub")
            # The whole run, played and scrubbed in the browser (its frames arrive once, after the run).
            player = frame_player(tr, "sample-player", "sampling.player_slider")
            gallery = gr.Gallery(label=tr("sampling.gallery"), columns=8, height=230, format="png", object_fit="contain",
                                 elem_id="sample-gallery", elem_classes=["dl-pixelated"])
            summary = gr.JSON(label=tr("sampling.summary"), elem_id="sample-summary")
    with gr.Accordion(tr("sampling.compare"), open=False, elem_id="sample-compare-box"):
        gr.Markdown(tr("sampling.compare_intro"), latex_delimiters=LATEX)
        with gr.Row():
            ddpm_steps = gr.Slider(1, t_max, value=1000, step=1, label=tr("param.ddpm_steps"),
                                   elem_id="compare-ddpm-steps")
            ddim_steps = gr.Slider(1, t_max, value=50, step=1, label=tr("param.ddim_steps"),
                                   elem_id="compare-ddim-steps")
            with gr.Column(min_width=160):
                compare_run = gr.Button(tr("sampling.compare_run"), variant="primary", elem_id="compare-run")
                compare_stop = gr.Button(tr("sampling.stop"), variant="stop", elem_id="compare-stop")
        compare_status = gr.HTML(elem_id="compare-status")
        with gr.Row():
            ddpm_img = gr.Image(label=tr("sampling.compare_ddpm"), format="png", height=300, scale=1,
                                elem_id="compare-ddpm", elem_classes=["dl-pixelated"], interactive=False)
            ddim_img = gr.Image(label=tr("sampling.compare_ddim"), format="png", height=300, scale=1,
                                elem_id="compare-ddim", elem_classes=["dl-pixelated"], interactive=False)
            std_plot = gr.Plot(label=tr("sampling.compare_plot"), format="png", show_label=False, scale=2,
                               elem_id="compare-plot")
        compare_summary = gr.JSON(label=tr("sampling.compare_summary"), elem_id="compare-summary")
    # Hidden run ids: the Stop buttons, the slider and the GIF export refer to runs by them.
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="sample-run-id")
    compare_id = gr.Textbox(visible=False, max_length=64, elem_id="compare-run-id")
    lang = lang_input()

    run_out = dict(status=status, x_t=x_t, x0=x0, eps=eps, gallery=gallery, scrub=scrub, run_id=run_id,
                   summary=summary)
    scrub_out = dict(status=status, x_t=x_t, x0=x0, eps=eps)
    compare_out = dict(status=compare_status, ddpm=ddpm_img, ddim=ddim_img, plot=std_plot, run_id=compare_id,
                       summary=compare_summary)
    inputs = [sampler, steps, eta, seed, batch, digit, guidance, lang]
    # The player's frames follow each finished run (the example's too), read back by run id.
    player_event = dict(fn=bind(guarded(tr)(handlers.player), {"player": player}), inputs=[run_id, lang],
                        outputs=[player], js=LANG_JS, api_visibility="private", concurrency_id="light",
                        show_progress="minimal", trigger_mode="always_last")
    ran = run.click(bind(guarded(tr)(handlers.run), run_out), inputs, list(run_out.values()), js=LANG_JS,
                    api_name="sample", show_progress="hidden", **heavy)
    ran.success(**player_event)
    run.click(lambda: "", None, [player], queue=False, api_visibility="private")  # a new run: the old frames go
    # The tab opens with a finished run of the default settings (computed once, at start-up).
    opening = bind(guarded(tr)(handlers.example), run_out)
    demo.load(opening, [lang], list(run_out.values()), js=LANG_JS, show_progress="hidden",
              api_visibility="private", **heavy).success(**player_event)
    # At start-up: the example, and its player in both languages, before the first page asks.
    settings.examples.append(lambda: [handlers.player(list(handlers.example("en"))[-1]["run_id"], code)
                                      for code in ("en", "zh-CN")])
    stop.click(handlers.stop, [run_id], None, queue=False, api_name="sample_stop")
    scrub.input(bind(guarded(tr)(handlers.replay), scrub_out), [run_id, scrub, lang], list(scrub_out.values()),
                js=LANG_JS, api_name="sample_scrub", concurrency_id="light", trigger_mode="always_last",
                show_progress="hidden")
    gif_btn.click(bind(guarded(tr)(handlers.export_gif), {"gif": gif_file}), [run_id, lang], gif_file, js=LANG_JS,
                  api_name="sample_gif", concurrency_id="light")
    sampler.change(lambda s: gr.update(visible=s == "ddim"), sampler, eta, queue=False,
                   api_visibility="private")
    compare_run.click(bind(guarded(tr)(handlers.compare), compare_out),
                      [ddpm_steps, ddim_steps, eta, seed, batch, digit, guidance, lang], list(compare_out.values()),
                      js=LANG_JS, api_name="sample_compare", show_progress="hidden", **heavy)
    compare_stop.click(handlers.stop, [compare_id], None, queue=False, api_visibility="private")
