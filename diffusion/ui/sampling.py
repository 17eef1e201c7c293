"""Lesson 3 tab: DDPM/DDIM sampling from the shipped digit model, streamed live and scrubbable.

One run works like this:

1. :func:`diffusion.lessons.sampling.sampler.sample` runs in a worker thread (:class:`LiveRun`) and its
   callback keeps the newest step. The event handler, a generator, yields the first step
   at once and then the newest step's x_t, x̂_0 and ε̂ about four times a second, so
   DDPM's 1000 steps neither flood the browser nor starve the sampler of CPU.
2. The Stop button sets the run's stop flag; the loop ends after the current step and
   the run finishes normally, with its partial trajectory. Closing the page does the same.
3. The finished :class:`~diffusion.lessons.sampling.sampler.Trajectory` stays in memory (:class:`RunStore`,
   bounded in bytes) under a random run id, so the step slider and the GIF export read it
   back without recomputing anything.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from diffusion.models import registry as models
from diffusion.errors import InputError
from diffusion.images import save_gif
from diffusion.lessons.sampling.sampler import (
    DIGITS, LIMITS, SAMPLERS, SampleRequest, StepInfo, Trajectory, sample, to_uint8_grid,
)
from diffusion.lessons.sampling.figures import SAMPLING_TEXT, plot_std
from diffusion.serving.gpu import model_device
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, progress_html

MODEL = "mnist"
DEFAULTS = SampleRequest()
# At most ~4 streamed frames a second. Each frame costs the server about 0.1 s of CPU
# (three PNGs and gradio's bookkeeping); on a 2-core machine DDIM-50 for 16 digits took
# 6.5 s at 8 frames/s, 4.2 s at 4 and 3.0 s at 2, against 2.7 s without streaming.
FRAME_INTERVAL_S = 0.25
FIRST_FRAME_POLL_S = 0.02  # the first step is sent as soon as it exists
RUN_STORE_BYTES = 600 * 2**20  # finished runs kept for scrubbing: DDPM-1000 × 16 digits is 75 MB
GIF_MAX_FRAMES = 60
log = logging.getLogger("diffusion.ui.sampling")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class LiveRun:
    """One sampling run in a worker thread, with its newest step kept for streaming.

    ``target(callback, stop)`` runs the sampler and returns its result. The
    callback stores CPU copies of the newest :class:`StepInfo`; the stop flag
    is polled by the sampler after every step.
    """

    def __init__(self, target: Callable[[Callable[[StepInfo], None], Callable[[], bool]], Any]) -> None:
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._latest: StepInfo | None = None
        self._lock = threading.Lock()
        self._target = target
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._main, daemon=True, name="sampling-run")
        self._thread.start()

    def _callback(self, info: StepInfo) -> None:
        copy = StepInfo(step=info.step, total=info.total, t=info.t, alpha_bar=info.alpha_bar,
                        x_t=info.x_t.detach().float().cpu(), x0_pred=info.x0_pred.detach().float().cpu(),
                        eps_pred=info.eps_pred.detach().float().cpu())
        with self._lock:
            self._latest = copy

    def _main(self) -> None:
        try:
            self.result = self._target(self._callback, self.stop_event.is_set)
        except BaseException as error:  # noqa: BLE001 - handed to the streaming thread
            self.error = error
        finally:
            self.done.set()

    def steps(self, interval: float = FRAME_INTERVAL_S) -> Iterator[StepInfo]:
        """Yield the first step at once, then the newest step about every ``interval`` seconds."""
        last = -1
        while True:
            finished = self.done.wait(interval if last >= 0 else FIRST_FRAME_POLL_S)
            with self._lock:
                info = self._latest
            # A run that ends before the first poll still shows one step before its final frame.
            if info is not None and info.step != last and (not finished or last < 0):
                last = info.step
                yield info
            if finished:
                break
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Ask the sampler to end after its current step."""
        self.stop_event.set()


class RunStore:
    """Live runs (for Stop) and finished trajectories (for scrubbing), by random run id.

    Finished runs are kept least-recently-used first within ``max_bytes`` of frames.
    """

    def __init__(self, max_bytes: int = RUN_STORE_BYTES, code_prefix: str = "") -> None:
        self.max_bytes = max_bytes
        self.code_prefix = code_prefix  # error codes name the lesson, so each can say which button to press
        self._live: dict[str, LiveRun] = {}
        self._done: OrderedDict[str, Trajectory] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    def add_live(self, run_id: str, run: LiveRun) -> None:
        with self._lock:
            self._live[run_id] = run

    def stop(self, run_id: Any) -> bool:
        """Stop the live run ``run_id``; False if there is none."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            return False
        with self._lock:
            run = self._live.get(run_id)
        if run is None:
            return False
        run.stop()
        return True

    def finish(self, run_id: str, trajectory: Trajectory | None) -> None:
        with self._lock:
            self._live.pop(run_id, None)
            if trajectory is None or len(trajectory) == 0:
                return
            self._done[run_id] = trajectory
            total = sum(t.nbytes for t in self._done.values())
            while total > self.max_bytes and len(self._done) > 1:
                _, old = self._done.popitem(last=False)
                total -= old.nbytes

    def get(self, run_id: Any) -> Trajectory:
        """The finished run ``run_id``.

        Raises:
            InputError: ``no_run`` for an empty id, ``run_expired`` for one that is not kept.
        """
        if not run_id:
            raise InputError(self.code_prefix + "no_run", "Run first.")
        with self._lock:
            trajectory = self._done.get(run_id) if isinstance(run_id, str) and _RUN_ID.match(run_id) else None
            if trajectory is None:
                raise InputError(self.code_prefix + "run_expired", "This run is no longer kept; run again.")
            self._done.move_to_end(run_id)
            return trajectory


RUNS = RunStore()


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


def stream_run(request: SampleRequest, device: str, run_id: str,
               record: bool = True) -> tuple[LiveRun, Iterator[StepInfo]]:
    """Start ``request`` in a worker thread registered under ``run_id``."""
    unet, scheduler_config = models.load_unet_model(MODEL, device)
    request = request.validated(scheduler_config["num_train_timesteps"])  # fail before the thread starts
    live = LiveRun(lambda callback, stop: sample(unet, scheduler_config, request, device=device,
                                                 callback=callback, stop=stop, record=record))
    RUNS.add_live(run_id, live)
    return live, live.steps()


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Build the sampling tab and wire its events."""
    gr.Markdown(tr("sampling.intro"), latex_delimiters=LATEX)
    if not models.available(MODEL):
        log.warning("lesson 3 is off: no usable model at %s", models.MODELS[MODEL].path)
        gr.Markdown(tr("sampling.no_model"), elem_classes=["dl-warning"], elem_id="sample-no-model")
        return
    device = model_device(settings.device)
    heavy = dict(concurrency_id="heavy", concurrency_limit=settings.heavy_concurrency)
    t_max = 1000  # the slider's top; the model's own T is checked on the server
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

    @guarded(tr)
    def run_sampler(sampler, num_inference_steps, eta, seed, batch_size, digit, guidance_scale, lang):
        request = _request(sampler, num_inference_steps, eta, seed, batch_size, digit, guidance_scale)
        new_id = RUNS.new_id()
        idle = gr.update(interactive=False, maximum=t_max, value=1)
        yield (progress_html(0, tr.text("sampling.loading", lang)), gr.skip(), gr.skip(), gr.skip(),
               [], idle, new_id, gr.skip())
        live, steps_iter = stream_run(request, device, new_id)
        trajectory = None
        try:
            for info in steps_iter:
                pictures = step_pictures(info)
                text = tr.text("sampling.progress", lang, step=info.step + 1, total=info.total, t=info.t,
                                              seconds=time.perf_counter() - live.started)
                yield (progress_html((info.step + 1) / info.total, text), *pictures,
                       gr.skip(), gr.skip(), gr.skip(), gr.skip())
            trajectory = live.result
        finally:
            live.stop()  # the page was closed or the event cancelled: end the worker too
            RUNS.finish(new_id, trajectory)
        last = trajectory.frame(len(trajectory) - 1)
        n = len(trajectory)
        if trajectory.stopped:
            text = tr.text("sampling.stopped", lang, done=n, total=trajectory.request.num_inference_steps,
                           seconds=trajectory.seconds)
        else:
            text = tr.text("sampling.finished", lang, total=n, seconds=trajectory.seconds)
        final_x_t = picture(trajectory.samples)  # x_0 itself, after the last update
        slider = gr.update(interactive=n > 1, maximum=max(n, 2), value=n)
        yield (progress_html(n / trajectory.request.num_inference_steps, text), final_x_t,
               picture(last.x0_pred), picture(last.eps_pred, -3.0, 3.0),
               gallery_items(trajectory, tr, lang), slider, new_id, run_summary(trajectory, new_id))

    @guarded(tr)
    def replay(current_id, step, lang):
        trajectory = RUNS.get(current_id)
        n = len(trajectory)
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
            raise InputError("not_a_number", "step must be a number.", name="step")
        info = trajectory.frame(int(min(max(step, 1), n)) - 1)
        text = tr.text("sampling.scrubbed", lang, step=info.step + 1, total=n, t=info.t,
                       alpha_bar=info.alpha_bar)
        return (progress_html((info.step + 1) / n, text), *step_pictures(info))

    @guarded(tr)
    def export_gif(current_id, lang):
        trajectory = RUNS.get(current_id)
        n = len(trajectory)
        picks = sorted(set(np.linspace(0, n - 1, min(n, GIF_MAX_FRAMES)).round().astype(int).tolist()))
        frames = []
        for i in picks:
            info = trajectory.frame(i)
            left, right = step_pictures(info)[:2]
            gap = np.full((left.shape[0], 4), 255, dtype=np.uint8)
            frames.append(np.kron(np.hstack([left, gap, right]), np.ones((3, 3), dtype=np.uint8)))
        r = trajectory.request
        out = Path(tempfile.mkdtemp(prefix="dl-gif-")) / f"sampling_{r.sampler}_{len(trajectory)}steps_seed{r.seed}.gif"
        return str(save_gif(frames, out, duration_ms=80))

    @guarded(tr)
    def compare(ddpm_n, ddim_n, eta, seed, batch_size, digit, guidance_scale, lang):
        new_id = RUNS.new_id()
        text = tr.table("sampling.plot.", lang)
        big_t = models.load_unet_model(MODEL, device)[1]["num_train_timesteps"]
        yield (progress_html(0, tr.text("sampling.loading", lang)), None, None, gr.skip(), new_id, gr.skip())
        runs: dict[str, Trajectory] = {}
        finals: dict[str, np.ndarray] = {}
        for name, n in (("ddim", ddim_n), ("ddpm", ddpm_n)):
            # Same seed, same x_T: sample() draws x_T from the seed before anything else.
            request = _request(name, n, eta if name == "ddim" else 0.0, seed, batch_size, digit, guidance_scale)
            live, steps_iter = stream_run(request, device, new_id, record=False)
            label = text.get(f"sampler_{name}", name)
            try:
                for info in steps_iter:
                    status_text = tr.text("sampling.compare_progress", lang, sampler=label, step=info.step + 1,
                                          total=info.total, t=info.t)
                    yield (progress_html((info.step + 1) / info.total, status_text),
                           *([gr.skip(), picture(info.x0_pred)] if name == "ddim" else [picture(info.x0_pred),
                                                                                        gr.skip()]),
                           gr.skip(), gr.skip(), gr.skip())
            finally:
                live.stop()
                RUNS.finish(new_id, None)
            runs[name] = live.result
            final = finals[name] = picture(runs[name].samples)
            yield (gr.skip(), *([gr.skip(), final] if name == "ddim" else [final, gr.skip()]),
                   gr.skip(), gr.skip(), gr.skip())
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
            status_text = tr.text("sampling.compare_stopped", lang)
        else:
            ratio = ddpm.seconds / max(ddim.seconds, 1e-9)
            result["speedup_ddim_over_ddpm"] = round(ratio, 2)
            result["mean_abs_pixel_difference"] = round(float((ddpm.samples - ddim.samples).abs().mean()), 4)
            status_text = tr.text("sampling.compare_done", lang, ddpm_s=ddpm.seconds, ddim_s=ddim.seconds,
                                  ratio=ratio)
        # Every output again in the last yield: API callers see only this one.
        yield (progress_html(1.0, status_text), finals.get("ddpm"), finals.get("ddim"), figure, new_id, result)

    def stop_run(current_id):
        RUNS.stop(current_id)

    inputs = [sampler, steps, eta, seed, batch, digit, guidance, lang]
    run.click(run_sampler, inputs, [status, x_t, x0, eps, gallery, scrub, run_id, summary], js=LANG_JS,
              api_name="sample", show_progress="hidden", **heavy)
    stop.click(stop_run, [run_id], None, queue=False, api_name="sample_stop")
    scrub.input(replay, [run_id, scrub, lang], [status, x_t, x0, eps], js=LANG_JS, api_name="sample_scrub",
                concurrency_id="light", trigger_mode="always_last", show_progress="hidden")
    gif_btn.click(export_gif, [run_id, lang], gif_file, js=LANG_JS, api_name="sample_gif",
                  concurrency_id="light")
    sampler.change(lambda s: gr.update(visible=s == "ddim"), sampler, eta, queue=False,
                   api_visibility="private")
    compare_run.click(compare, [ddpm_steps, ddim_steps, eta, seed, batch, digit, guidance, lang],
                      [compare_status, ddpm_img, ddim_img, std_plot, compare_id, compare_summary],
                      js=LANG_JS, api_name="sample_compare", show_progress="hidden", **heavy)
    compare_stop.click(stop_run, [compare_id], None, queue=False, api_visibility="private")

