"""Lesson 3 tab: a 2-D diffusion model trained live, with its score field next to the exact one.

Training is a model job of the server's queue (:mod:`diffusion.serving.jobs`: a waiting
student sees their place, and a class training the same points with the same settings
shares one run, each student then getting their own copy); sampling and the score field
are short and run in the heavy group of gradio's queue. Stop ends a training after the
current step, and the trained run stays in a bounded :class:`~diffusion.serving.store.RunStore`
so "continue", sampling and the score field work on it later. Sampled trajectories go to
the browser once and play there (:func:`~diffusion.ui.canvas.points_player`).

The handlers (:class:`Lab2DHandlers`) return ``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np

from diffusion.errors import InputError
from diffusion.lessons import lab2d
from diffusion.lessons.lab2d import figures
from diffusion.lessons.lab2d.config import check_int, check_name
from diffusion.schedule import display_t
from diffusion.serving.cache import LRUCache
from diffusion.serving.jobs import JobQueue, Waiting, request_key
from diffusion.serving.render_pool import png_data_url
from diffusion.serving.store import RunStore
from diffusion.ui.canvas import player_value, points_player, read_strokes, stroke_canvas
from diffusion.ui.handlers import bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, plot_picture, progress_html, waiting_html

D, L = lab2d.DEFAULTS, lab2d.LIMITS
RUN_STORE_BYTES = 256 * 2**20
PLAYER_PARTICLES = 400  # particles sent to the browser for playback, per sampler
PLAYER_FRAMES = 60      # at most this many steps of a run are played back
FRESH_POINTS, FRESH_SEED, FLOOR_SEED = 2000, 1_000_003, 1_000_004
PANELS = (("ddpm", "learned", "#1f77b4"), ("ddim", "learned", "#d62728"), ("ddim", "exact", "#2ca02c"))  # the figures' colours


@dataclass(eq=False)
class Session:
    """One student's trained run and its latest samples, kept under a run id."""

    run: lab2d.Lab2DRun
    samples: dict[str, lab2d.SampleTrajectory] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one job per run at a time

    @functools.cached_property
    def fresh(self) -> np.ndarray:
        """Fresh points of the training distribution, what samples are compared with (made once)."""
        return self.run.dataset.fresh(FRESH_POINTS, FRESH_SEED)

    @functools.cached_property
    def fresh_nearest(self) -> np.ndarray:
        """Each fresh point's distance to its nearest training point: what not copying looks like."""
        return lab2d.nearest_distance(self.fresh, self.run.dataset.points)

    @property
    def nbytes(self) -> int:
        # Weights, EMA and AdamW's two moments; the data; the losses; each sampler's frames and its
        # three (n, 2) arrays (x_T, samples in model and in data coordinates); the fresh points.
        weights = sum(p.numel() * p.element_size() for p in self.run.model.parameters())
        made = [self.__dict__[k] for k in ("fresh", "fresh_nearest") if k in self.__dict__]
        return (4 * weights + self.run.dataset.points.nbytes + 8 * len(self.run.losses)
                + sum(a.nbytes for a in made) + sum(s.nbytes + s.samples.nbytes * 3 for s in self.samples.values()))


RUNS = RunStore(RUN_STORE_BYTES, missing_code="lab2d_no_run", expired_code="lab2d_run_expired")
TRAIN_STEP_S = 1.3e-3  # a first guess of one training step's seconds (the job queue corrects it)
PLOTS_PER_RUN = 4  # loss plots drawn while a run trains (the status line moves twice a second)


@dataclass
class Progress:
    """A training step as the live run streams it (``step`` counts over the whole run)."""

    step: int
    loss: float
    losses: list[float]  # the run's losses so far (the list the training appends to)


@dataclass(eq=False)
class Trained:
    """A finished training job: the run (shared by identical requests, so each copies it) and its result."""

    run: lab2d.Lab2DRun
    result: Any

    stopped = property(lambda self: bool(self.result.stopped))
    @property
    def nbytes(self) -> int:
        return Session(self.run).nbytes


def sampler_label(tr: Translator, lang: str, sampler: str, predictor: str) -> str:
    """"DDPM", "DDIM" or "exact score (DDIM)" in the user's language."""
    return tr.text("lab2d.panel.exact" if predictor == "exact" else f"lab2d.panel.{sampler}", lang)


class Lab2DHandlers:
    """The tab's event handlers; each yields or returns ``{output name: value}``."""

    def __init__(self, tr: Translator, jobs: JobQueue | None = None) -> None:
        self.tr = tr
        self.jobs = jobs or JobQueue()
        self._loss_pictures = LRUCache(64)  # (the run's loss list, steps, language) → PNG data URL

    def loss_picture(self, losses: list[float], steps: int, lang: str) -> Any:
        """The loss plot of the first ``steps`` losses, drawn once for everyone watching the same run."""
        key = (id(losses), steps, lang, losses[0] if steps else None, losses[steps - 1] if steps else None)
        return plot_picture(self._loss_pictures.get_or_make(
            key, lambda: png_data_url(figures.plot_loss(losses[:steps], self._text(lang)))))

    def _text(self, lang: str) -> dict[str, str]:
        return self.tr.table("lab2d.plot.", lang)

    @staticmethod
    def make_dataset(dataset, n_points, seed, text, drawing) -> lab2d.Dataset:
        strokes, size = read_strokes(drawing) if dataset == "drawing" else (None, None)
        return lab2d.make_dataset(dataset, n_points, seed, text=text, strokes=strokes, canvas_size=size)

    def forward(self, dataset, n_points, seed, text, drawing, t, schedule, lang):
        """The training points at t of the forward process, with N(0, I) and one point's cloud."""
        if dataset == "drawing" and read_strokes(drawing)[0] is None:  # nothing drawn yet: say what to do
            return {"forward_plot": None, "forward_info": self.tr.text("lab2d.draw_hint", lang)}
        data = self.make_dataset(dataset, n_points, seed, text, drawing)
        points = lab2d.forward_points(data, t, seed, schedule=schedule)
        info = points.summary()
        return {"forward_plot": figures.plot_forward(points, 0, self._text(lang)),
                "forward_info": self.tr.text("lab2d.forward_info", lang, t=info["t"],
                                             alpha_bar=info["alpha_bar"], variance=info["variance"],
                                             heat_time=lab2d.heat_time(info["variance"]))}

    def train(self, dataset, n_points, seed, train_steps, hidden, depth, learning_rate, schedule, text, lang,
              request: gr.Request = None):
        """``/lab2d_train``: a new run on a built-in set or a typed word (drawings come through the UI)."""
        yield from self.train_drawn(dataset, n_points, seed, train_steps, hidden, depth, learning_rate, schedule,
                                    text, None, lang, request)

    def train_drawn(self, dataset, n_points, seed, train_steps, hidden, depth, learning_rate, schedule, text,
                    drawing, lang, request: gr.Request = None):
        """Train a new run (the UI's button: the canvas is one more input)."""
        data = self.make_dataset(dataset, n_points, seed, text, drawing)
        run = lab2d.new_run(data, hidden, depth, schedule, learning_rate, seed)
        steps = check_int("steps", train_steps)
        # The same points and settings train the same network: a class pressing Train together shares one run.
        key = request_key("lab2d_train", {
            "points": hashlib.sha256(np.ascontiguousarray(data.points).tobytes()).hexdigest(), "name": data.name,
            "model": vars(run.model_config), "train": vars(run.train_config), "seed": seed, "steps": steps})
        yield from self._train(None, RUNS.new_id(), run, steps, key, lang, client_of(request))

    def resume(self, run_id, train_steps, lang, request: gr.Request = None):
        """``/lab2d_continue``: train a kept run further, from where it stopped."""
        session = RUNS.get(run_id)
        yield from self._train(session, run_id, session.run, check_int("steps", train_steps), None, lang,
                               client_of(request))

    def _train(self, session: Session | None, run_id: str, run: lab2d.Lab2DRun, steps: int, key: str | None,
               lang: str, client: str):
        tr = self.tr
        yield {"status": progress_html(0, tr.text("lab2d.training", lang, done=0, total=steps, loss="–")),
               "run_id": run_id}
        if session is not None and not session.lock.acquire(timeout=600):
            raise InputError("lab2d_busy", "This run is busy; try again in a moment.")
        try:
            first = run.step
            ticket = self.jobs.submit("lab2d", lambda callback, stop: Trained(run, lab2d.train(
                run, steps, callback=lambda s, loss: callback(Progress(s, loss, run.losses)), stop=stop)),
                key=key, client=client, estimate_s=TRAIN_STEP_S * steps, max_threads=1)
            RUNS.add_live(run_id, ticket)
            if session is not None:
                session.samples.clear()
            trained = None
            try:
                for progress in ticket.updates(interval=0.5):
                    if isinstance(progress, Waiting):
                        yield {"status": waiting_html(tr, lang, progress)}
                        continue
                    done = progress.step - first
                    shown = first + done - done % max(1, steps // PLOTS_PER_RUN)  # shared by all who watch
                    yield {"status": progress_html(done / steps, tr.text(
                        "lab2d.training", lang, done=done, total=steps, loss=f"{progress.loss:.4f}")),
                        "loss_plot": self.loss_picture(progress.losses, shown, lang)}
                trained = ticket.result
            finally:
                ticket.close()
                if trained is not None and session is None:  # its own copy: training it on changes no one else's
                    session = Session(copy.deepcopy(trained.run) if key is not None else trained.run)
                RUNS.finish(run_id, session if trained is not None else None)
        finally:
            if session is not None and session.lock.locked():
                session.lock.release()
        run, result = session.run, trained.result
        status = "lab2d.train_stopped" if result.stopped else "lab2d.trained"
        summary = {"run_id": run_id, "dataset": run.dataset.name, "n_train": len(run.dataset),
                   "train_steps": run.step, "steps_this_call": result.steps_run, "stopped": result.stopped,
                   "seconds": round(result.seconds, 3), "final_loss": None if result.loss is None
                   else round(result.loss, 6), "hidden": run.model_config.hidden, "depth": run.model_config.depth,
                   "schedule": run.train_config.schedule, "learning_rate": run.train_config.learning_rate,
                   "shared": ticket.shared}
        text = tr.text(status, lang, steps=run.step, seconds=result.seconds, loss=summary["final_loss"] or 0.0)
        if ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        yield {"status": progress_html(1.0, text),
               "loss_plot": self.loss_picture(trained.run.losses, len(run.losses), lang), "run_id": run_id,
               "summary": summary}

    def _sample(self, session: Session, sampler: str, predictor: str, num_inference_steps, eta, n_samples, seed):
        with session.lock:
            return lab2d.sample(session.run, sampler, num_inference_steps, eta, n_samples, seed,
                                predictor=predictor)

    def _figures(self, session: Session, trajectory: lab2d.SampleTrajectory) -> dict[str, Any]:
        data = session.run.dataset
        floor = data.fresh(len(trajectory.samples), FLOOR_SEED)
        report = lab2d.distribution_report(trajectory.samples, session.fresh, floor, data.points)
        return {"seconds": round(float(trajectory.seconds), 4),
                "nearest_train_distance_median": round(report["nearest_median"], 5),
                "nearest_fresh_distance_median": round(report["nearest_reference_median"], 5),
                "sliced_wasserstein": round(report["sw"], 5), "sliced_wasserstein_floor": round(report["floor"], 5),
                "sliced_wasserstein_ratio": round(report["ratio"], 3)}

    def sample(self, run_id, sampler, num_inference_steps, eta, n_samples, seed, lang):
        """``/lab2d_sample``: one sampler (``exact`` = DDIM with the exact score) on a kept run."""
        session = RUNS.get(run_id)
        name = check_name("sampler", "ddim" if sampler == "exact" else sampler)
        predictor = "exact" if sampler == "exact" else "learned"
        trajectory = self._sample(session, name, predictor, num_inference_steps, eta, n_samples, seed)
        return {"summary": {"run_id": run_id, **trajectory.summary(), "sampler": sampler,
                            **self._figures(session, trajectory),
                            "samples": np.round(trajectory.samples.astype(np.float64), 5).tolist()}}

    def sample_all(self, run_id, num_inference_steps, eta, n_samples, seed, lang):
        """The UI's Sample: DDPM, DDIM and the exact score from the same x_T, played in the browser."""
        tr, session = self.tr, RUNS.get(run_id)
        runs, summary = [], {"run_id": run_id}
        for k, (sampler, predictor, _) in enumerate(PANELS):
            label = sampler_label(tr, lang, sampler, predictor)
            yield {"status": progress_html(k / len(PANELS), tr.text("lab2d.sampling", lang, sampler=label))}
            trajectory = self._sample(session, sampler, predictor, num_inference_steps, eta, n_samples, seed)
            runs.append(trajectory)
            summary[f"{sampler}_{predictor}"] = {**trajectory.summary(), **self._figures(session, trajectory)}
        session.samples = {f"{s}_{p}": r for (s, p, _), r in zip(PANELS, runs)}
        data = session.run.dataset
        distances = {sampler_label(tr, lang, s, p): lab2d.nearest_distance(r.samples, data.points)
                     for (s, p, _), r in zip(PANELS, runs)}
        yield {"status": progress_html(1.0, tr.text("lab2d.sampled", lang, **{
                   k: summary[k]["nearest_train_distance_median"] for k in ("ddpm_learned", "ddim_learned",
                                                                            "ddim_exact")})),
               "player": self.player(runs, data, lang),
               "nearest_plot": figures.plot_nearest(distances, session.fresh_nearest, self._text(lang)),
               "summary": summary}

    def player(self, runs: list[lab2d.SampleTrajectory], data: lab2d.Dataset, lang: str) -> str:
        """The JSON the browser's player animates: every panel's particles, step by step, x_T to x_0."""
        steps = len(runs[0])
        picks = sorted(set(np.linspace(0, steps - 1, min(steps, PLAYER_FRAMES)).round().astype(int).tolist()))
        panels = []
        for (sampler, predictor, colour), run in zip(PANELS, runs):
            keep = min(PLAYER_PARTICLES, run.recorded_particles)
            frames = [run.to_data(run.x_t[i, :keep].numpy()) for i in picks if i < len(run)]
            frames.append(run.samples[:keep])
            panels.append({"title": sampler_label(self.tr, lang, sampler, predictor), "color": colour,
                           "frames": frames})
        labels = [f"t = {display_t(runs[0].timesteps[i])}" for i in picks] + ["t = 0"]
        everything = np.concatenate([data.points, *[p["frames"][0] for p in panels]])
        low, high = np.quantile(everything, 0.005, axis=0), np.quantile(everything, 0.995, axis=0)
        centre, half = (low + high) / 2, float(max(high - low)) / 2 * 1.1
        extent = [centre[0] - half, centre[0] + half, centre[1] - half, centre[1] + half]
        background = data.points[:: max(1, len(data) // 1000)]
        return player_value(panels, labels, background, extent, self.tr.text("lab2d.play", lang),
                            self.tr.text("lab2d.pause", lang))

    def field(self, run_id, t, lang):
        """The learned and the exact score at t on a grid, and the mean error between them."""
        session = RUNS.get(run_id)
        with session.lock:
            result = lab2d.score_field(session.run, t)
        return {"field_plot": figures.plot_score_fields(result, session.run.dataset.standardised, self._text(lang)),
                "field_info": self.tr.text("lab2d.field_info", lang, t=result.t, error=result.mean_error,
                                           relative=100 * result.relative_error)}

    @staticmethod
    def stop(run_id) -> None:
        """End a training run after its current step (the run is kept and can continue)."""
        RUNS.stop(run_id)


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Lay out the 2-D lab and wire its events to :class:`Lab2DHandlers`."""
    handlers = Lab2DHandlers(tr, settings.jobs)
    heavy = dict(concurrency_id="heavy", concurrency_limit=settings.heavy_concurrency)
    gr.Markdown(tr("lab2d.intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            dataset = gr.Dropdown([(tr(f"lab2d.dataset.{d}"), d) for d in lab2d.DATASETS], value=D["dataset"],
                                  label=tr("param.dataset"), elem_id="lab2d-dataset",
                                  allow_custom_value=True)  # the core refuses others, in the user's language
            text = gr.Textbox(D["text"], label=tr("lab2d.text"), max_length=L["text_length"][1], visible=False,
                              elem_id="lab2d-text")
            with gr.Group(visible=False, elem_id="lab2d-canvas-box") as canvas_box:
                gr.Markdown(tr("lab2d.draw_hint"))
                drawing = stroke_canvas(tr, "lab2d.clear", "lab2d-canvas")
            n_points = gr.Slider(*L["n_points"], value=D["n_points"], step=10, label=tr("lab2d.param.n_points"),
                                 elem_id="lab2d-n-points")
            seed = gr.Number(D["seed"], precision=0, label=tr("lab2d.seed"), elem_id="lab2d-seed")
            schedule = gr.Dropdown([(tr(f"noising.schedule.{s}"), s) for s in lab2d.SCHEDULES], value=D["schedule"], label=tr("param.schedule"),
                                   elem_id="lab2d-schedule", allow_custom_value=True)
        with gr.Column(scale=2):
            t = gr.Slider(0, D["num_train_timesteps"], value=D["t"], step=1, label=tr("lab2d.forward_t"),
                          elem_id="lab2d-t")
            forward_plot = gr.Plot(format="png", show_label=False, elem_id="lab2d-forward")
            forward_info = gr.Markdown(elem_id="lab2d-forward-info")
    gr.Markdown(tr("lab2d.train_intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            hidden = gr.Slider(*L["hidden"], value=D["hidden"], step=16, label=tr("param.hidden"),
                               elem_id="lab2d-hidden")
            depth = gr.Slider(*L["depth"], value=D["depth"], step=1, label=tr("param.depth"), elem_id="lab2d-depth")
            train_steps = gr.Slider(100, 20_000, value=D["steps"], step=100, label=tr("lab2d.param.steps"),
                                    elem_id="lab2d-steps")
            learning_rate = gr.Number(D["learning_rate"], label=tr("param.learning_rate"), elem_id="lab2d-lr")
            with gr.Row():
                train = gr.Button(tr("lab2d.train"), variant="primary", elem_id="lab2d-train")
                more = gr.Button(tr("lab2d.continue"), elem_id="lab2d-continue")
                stop = gr.Button(tr("lab2d.stop"), variant="stop", elem_id="lab2d-stop")
        with gr.Column(scale=2):
            status = gr.HTML(elem_id="lab2d-status")
            loss_plot = gr.Plot(format="png", show_label=False, elem_id="lab2d-loss")
            summary = gr.JSON(label=tr("lab2d.summary"), elem_id="lab2d-summary")
    gr.Markdown(tr("lab2d.sample_intro"), latex_delimiters=LATEX)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            steps = gr.Slider(*L["num_inference_steps"], value=D["num_inference_steps"], step=1,
                              label=tr("param.num_inference_steps"), elem_id="lab2d-sample-steps")
            eta = gr.Slider(*L["eta"], value=D["eta"], step=0.05, label=tr("param.eta"), elem_id="lab2d-eta")
            n_samples = gr.Slider(100, L["n_samples"][1], value=D["n_samples"], step=100,
                                  label=tr("param.n_samples"), elem_id="lab2d-n-samples")
            sample_seed = gr.Number(1, precision=0, label=tr("lab2d.sample_seed"), elem_id="lab2d-sample-seed")
            sample = gr.Button(tr("lab2d.sample"), variant="primary", elem_id="lab2d-sample")
        with gr.Column(scale=2):
            sample_status = gr.HTML(elem_id="lab2d-sample-status")
            player = points_player(tr, "lab2d.step_slider", "lab2d-player")
            nearest_plot = gr.Plot(format="png", show_label=False, elem_id="lab2d-nearest")
            sample_summary = gr.JSON(label=tr("lab2d.sample_summary"), elem_id="lab2d-sample-summary")
    gr.Markdown(tr("lab2d.field_intro"), latex_delimiters=LATEX)
    with gr.Row():
        field_t = gr.Slider(1, D["num_train_timesteps"], value=D["t"], step=1, label=tr("lab2d.field_t"),
                            elem_id="lab2d-field-t")
        show_field = gr.Button(tr("lab2d.show_field"), elem_id="lab2d-show-field")
    field_plot = gr.Plot(format="png", show_label=False, elem_id="lab2d-field")
    field_info = gr.Markdown(elem_id="lab2d-field-info")
    run_id = gr.Textbox(visible=False, max_length=64, elem_id="lab2d-run-id")
    api_train = gr.Button(visible=False)
    api_sample = gr.Button(visible=False)
    sampler = gr.Textbox("ddim", visible=False, max_length=16)
    lang = lang_input()

    data_in = [dataset, n_points, seed, text, drawing]
    forward_out = dict(forward_plot=forward_plot, forward_info=forward_info)
    show_forward = bind(guarded(tr, "lab2d")(handlers.forward), forward_out)
    for trigger in (dataset.change, n_points.release, seed.submit, t.release, schedule.change, text.submit,
                    drawing.change, demo.load):
        trigger(show_forward, [*data_in, t, schedule, lang], list(forward_out.values()), js=LANG_JS,
                concurrency_id="light", show_progress="hidden", api_visibility="private", trigger_mode="always_last")
    dataset.change(lambda d: (gr.update(visible=d == "text"), gr.update(visible=d == "drawing")), dataset,
                   [text, canvas_box], queue=False, api_visibility="private")
    train_out = dict(status=status, loss_plot=loss_plot, run_id=run_id, summary=summary)
    settings_in = [train_steps, hidden, depth, learning_rate, schedule]
    queued = settings.model_events()  # training waits in the job queue, where a student sees their place
    train.click(bind(guarded(tr, "lab2d")(handlers.train_drawn), train_out),
                [dataset, n_points, seed, *settings_in, text, drawing, lang], list(train_out.values()), js=LANG_JS,
                show_progress="hidden", api_visibility="private", **queued)
    api_train.click(bind(guarded(tr, "lab2d")(handlers.train), train_out), [dataset, n_points, seed, *settings_in, text, lang],
                    list(train_out.values()), js=LANG_JS, api_name="lab2d_train", show_progress="hidden", **queued)
    more.click(bind(guarded(tr, "lab2d")(handlers.resume), train_out), [run_id, train_steps, lang], list(train_out.values()),
               js=LANG_JS, api_name="lab2d_continue", show_progress="hidden", **queued)
    stop.click(handlers.stop, [run_id], None, queue=False, api_name="lab2d_stop")
    sample_out = dict(status=sample_status, player=player, nearest_plot=nearest_plot, summary=sample_summary)
    sample.click(bind(guarded(tr, "lab2d")(handlers.sample_all), sample_out), [run_id, steps, eta, n_samples, sample_seed, lang],
                 list(sample_out.values()), js=LANG_JS, show_progress="hidden", api_visibility="private", **heavy)
    api_sample.click(bind(guarded(tr, "lab2d")(handlers.sample), {"summary": sample_summary}),
                     [run_id, sampler, steps, eta, n_samples, sample_seed, lang], sample_summary, js=LANG_JS,
                     api_name="lab2d_sample", show_progress="hidden", **heavy)
    show_field.click(bind(guarded(tr, "lab2d")(handlers.field), dict(field_plot=field_plot, field_info=field_info)),
                     [run_id, field_t, lang], [field_plot, field_info], js=LANG_JS, api_name="lab2d_field",
                     show_progress="hidden", **heavy)
