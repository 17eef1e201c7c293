"""Lesson 7, data augmentation: the section's event handlers, the kept zip files and the measured table.

Both heavy events are model jobs of the server's queue (:mod:`diffusion.serving.jobs`): a
waiting student sees their place, each client has at most ``max_jobs_per_client`` jobs,
identical requests share one run, and each job runs as one GPU call
(:func:`diffusion.serving.gpu.execute`; the calls are :mod:`~diffusion.lessons.applications.augment_calls`).
Stop ends a run after its current sampler step or training round. The zip of an export is
built here, from the returned digits, and written to a folder this process owns
(:class:`ZipFiles`, bounded in count); no file name or path ever comes from the request.

The handlers (:class:`AugmentHandlers`) return ``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from diffusion.datasets.digits import NUM_CLASSES
from diffusion.devices import choose_precision
from diffusion.errors import InputError
from diffusion.lessons.applications import augment_calls as calls
from diffusion.lessons.applications.augment import (
    ExperimentRequest, ExportRequest, GeneratedSet, export_filename, to_zip,
)
from diffusion.lessons.applications.augment_figures import plot_curves, plot_result
from diffusion.lessons.applications.classifier import TrainSettings
from diffusion.models import registry as models
from diffusion.serving import gpu
from diffusion.serving.cache import LRUCache
from diffusion.serving.jobs import JobQueue, Ticket, Waiting, request_key
from diffusion.serving.render_pool import png_data_url
from diffusion.serving.store import RunStore
from diffusion.ui.handlers import EXAMPLES_CLIENT, client_of, guarded
from diffusion.ui.i18n import Translator
from diffusion.ui.widgets import plot_picture, progress_html, waiting_html

MODEL = "mnist"
SCOPE = "applications.augment"
P = SCOPE + "."  # this section's strings
PREVIEW_PER_CLASS = 3  # digits of each class shown under an export
ZIPS_KEPT = 16  # export zips kept on disk (1,000 digits are about 0.5 MB)
LIVE = RunStore(0)  # live runs by id, for the Stop buttons; finished results are not kept here

# `python -m diffusion.evaluate augment` (5 seeds, guidance 1, DDIM-20, 400 classifier steps):
# (k real per class, n generated per class, accuracy mean, std, gain mean, std, verdict), in %.
MEASURED = (
    (5, 0, 72.2, 2.7, None, None, "real"), (5, 10, 82.6, 1.8, 10.4, 2.1, "helps"),
    (5, 50, 89.7, 1.0, 17.5, 2.4, "helps"), (5, 100, 92.1, 0.7, 19.8, 3.2, "helps"),
    (10, 0, 80.8, 1.7, None, None, "real"), (10, 10, 84.6, 2.3, 3.8, 1.2, "helps"),
    (10, 50, 90.4, 1.0, 9.6, 2.1, "helps"), (10, 100, 92.7, 0.5, 11.9, 2.2, "helps"),
    (50, 0, 91.1, 0.7, None, None, "real"), (50, 10, 91.2, 0.5, 0.1, 0.7, "none"),
    (50, 50, 92.4, 1.1, 1.3, 1.6, "none"), (50, 100, 93.2, 1.0, 2.1, 1.4, "helps"),
)


def translated(tr: Translator, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with every error as a message in the caller's language, this section's own words first.

    The core's error codes of this section (``bad_digits``, ``export_too_big``, …) and its
    parameter names (``applications.augment.param.<name>``) are translated here; every
    other error goes through :func:`~diffusion.ui.handlers.guarded`.
    """
    at = list(inspect.signature(fn).parameters).index("lang")

    def convert(error: InputError, args: tuple) -> Exception:
        key = f"{P}error.{error.code}"
        lang = args[at] if len(args) > at else "en"
        return gr.Error(tr.text(key, lang, **error.params)) if key in tr.strings["en"] else error

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args: Any) -> Any:
            try:
                yield from fn(*args)
            except InputError as error:
                raise convert(error, args) from None
        return guarded(tr, SCOPE)(stream)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except InputError as error:
            raise convert(error, args) from None
    return guarded(tr, SCOPE)(call)


@dataclass(eq=False)
class Kept:
    """A finished call's result as the job queue keeps it for identical requests (it says its bytes)."""

    value: Any

    @property
    def stopped(self) -> bool:
        return bool(self.value.stopped)

    @property
    def nbytes(self) -> int:
        generated = self.value if isinstance(self.value, GeneratedSet) else getattr(self.value, "synthetic", None)
        arrays = [generated.images, generated.labels] if generated is not None else []
        arrays += [getattr(self.value, "real_indices", np.zeros(0))]
        return sum(a.nbytes for a in arrays) + 64 * 1024  # curves, request and bookkeeping


class ZipFiles:
    """Export zips written once per set of digits, in a folder this process owns, at most ``capacity`` kept.

    Each zip gets its own sub-folder, so the file a student downloads is named by
    :func:`~diffusion.lessons.applications.augment.export_filename` alone. The least
    recently used zip is deleted first; the folder is removed at exit.
    """

    def __init__(self, capacity: int = ZIPS_KEPT) -> None:
        self._files = LRUCache(capacity, on_evict=lambda file: shutil.rmtree(Path(file).parent, ignore_errors=True))
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def folder(self) -> Path:
        """The folder all zips live under (made on first use, and again if a cleaner removed it)."""
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="dl-exports-"))
                atexit.register(shutil.rmtree, self._folder, True)
            elif not self._folder.is_dir():
                self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self._folder

    def path(self, key: Hashable, generated: GeneratedSet, name: str) -> str:
        """The zip file of ``generated`` (kept under ``key``), written on first use."""
        file = self._files.get_or_make(key, lambda: self._write(generated, name))
        if not os.path.exists(file):  # deleted behind our back: write it again
            self._files.forget(key)
            file = self._files.get_or_make(key, lambda: self._write(generated, name))
        return file

    def _write(self, generated: GeneratedSet, name: str) -> str:
        folder = Path(tempfile.mkdtemp(dir=self.folder(), prefix="zip-"))
        try:
            staging = folder / f".{name}.part"
            staging.write_bytes(to_zip(generated))
            os.replace(staging, folder / name)  # a download never sees a half-written file
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return str(folder / name)


ZIPS = ZipFiles()


def kept_digits(generated: GeneratedSet) -> str:
    """The classes a set holds, ``"0123…"`` style (fewer than asked for when it was stopped)."""
    return "".join(str(int(d)) for d in np.unique(generated.labels))


def percent(value: float | None) -> str:
    """An accuracy in [0, 1] as ``"83.1 %"``; ``"–"`` before the first round."""
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


class AugmentHandlers:
    """The section's event handlers; each yields ``{output name: value}``.

    Args:
        tr: The UI strings.
        device: Where the digit model runs.
        jobs: The server's job queue.
        train: How the experiment's classifiers train (tests pass shorter settings).
        zips: Where export zips are written.
    """

    def __init__(self, tr: Translator, device: str, jobs: JobQueue | None = None,
                 train: TrainSettings = TrainSettings(), zips: ZipFiles | None = None) -> None:
        self.tr, self.device = tr, device
        self.jobs = jobs or JobQueue()
        self.train = train.validated()
        self.zips = zips or ZIPS
        self.precision = choose_precision(device)
        self._pictures = LRUCache(64)  # (job key, round, language) → the live curves, drawn once for all who watch

    # -- submitting ------------------------------------------------------------------------
    def _submit(self, kind: str, fn: Callable[..., Any], kwargs: dict[str, Any], partial: Callable[..., Any],
                gpu_s: float, estimate_s: float, client: str, capped: bool) -> Ticket:
        fields = {**vars(kwargs["request"]), "precision": self.precision, "device": self.device,
                  **({"train": vars(kwargs["settings"])} if "settings" in kwargs else {})}
        key = request_key(kind, fields, models.weights_digest(MODEL))
        work = gpu.GpuWork(fn, kwargs, gpu_s=gpu_s, partial=partial)
        return self.jobs.submit(kind, lambda callback, stop: Kept(gpu.execute(work, callback, stop)), key=key,
                                client=client, estimate_s=estimate_s, capped=capped)

    def submit_export(self, request: ExportRequest, client: str, capped: bool = True) -> Ticket:
        """Queue an export (or join an identical one); validated first, so a bad request never queues."""
        request = self.validated_export(request)
        kwargs = {"request": request, "device": self.device, "precision": self.precision}
        return self._submit("augment_export", calls.export_call, kwargs, calls.rebuilt_export,
                            calls.gpu_seconds(request), calls.cpu_seconds(request), client, capped)

    def submit_experiment(self, request: ExperimentRequest, client: str, capped: bool = True) -> Ticket:
        """Queue an experiment (or join an identical one); validated first."""
        request = request.validated()
        models.load_unet_model(MODEL, self.device)  # a missing model is said before the run queues
        kwargs = {"request": request, "device": self.device, "precision": self.precision, "settings": self.train}
        return self._submit("augment_experiment", calls.experiment_call, kwargs, calls.rebuilt_experiment,
                            calls.gpu_seconds(request, self.train), calls.cpu_seconds(request, self.train),
                            client, capped)

    def validated_export(self, request: ExportRequest) -> ExportRequest:
        """``request`` checked against the digit model's own number of timesteps."""
        return request.validated(models.load_unet_model(MODEL, self.device)[1]["num_train_timesteps"])

    def _follow(self, ticket: Ticket, run_id: str, lang: str, show: Callable[[Any], dict[str, Any]]):
        """Stream a ticket's queue place and records (``show`` turns one into outputs); return its result."""
        LIVE.add_live(run_id, ticket)
        try:
            for update in ticket.updates():
                yield {"status": waiting_html(self.tr, lang, update)} if isinstance(update, Waiting) else show(update)
        finally:
            ticket.close()  # the page was closed or the event cancelled: the run ends unless others watch it
            LIVE.finish(run_id, None)
        if ticket.result is None:  # the server shut down before the job ran
            raise gr.Error(self.tr.text("error.busy", lang))
        return ticket.result.value

    # -- export ----------------------------------------------------------------------------
    def export(self, digits, per_class, guidance_scale, sampler, num_inference_steps, seed, lang,
               request: gr.Request = None):
        """``/augment_export``: generate a labelled set, then offer it as a zip with a preview and a summary."""
        tr = self.tr
        asked = self.validated_export(ExportRequest(digits=digits, per_class=per_class, guidance_scale=guidance_scale,
                                                    sampler=sampler, num_inference_steps=num_inference_steps,
                                                    seed=seed))
        run_id = LIVE.new_id()
        LIVE.reserve(run_id)  # a Stop pressed before the run is queued still reaches it
        try:
            yield {"status": progress_html(0, tr.text(P + "export_loading", lang)), "file": None, "gallery": [],
                   "run_id": run_id}
            ticket = self.submit_export(asked, client_of(request))
        except BaseException:
            LIVE.release(run_id)
            raise
        generated = yield from self._follow(ticket, run_id, lang, lambda u: self._export_progress(asked, u, lang))
        kept = kept_digits(generated)
        name = file = None
        if len(generated.labels):
            effective = replace(generated.request, digits=kept)  # exactly the export of the classes kept
            name = export_filename(effective)
            key = request_key("augment_zip", {**vars(effective), "precision": generated.precision},
                              models.weights_digest(MODEL))
            file = self.zips.path(key, generated, name)
        count, seconds = len(generated.labels), generated.seconds
        if not generated.stopped:
            text = tr.text(P + "export_done", lang, count=count, seconds=seconds, name=name)
        elif count:
            text = tr.text(P + "export_stopped_some", lang, count=count, digits=kept, asked=asked.digits)
        else:
            text = tr.text(P + "export_stopped_none", lang)
        if ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        summary = {**generated.summary(), "digits_kept": kept, "file": name, "shared": ticket.shared}
        fraction = count / (asked.per_class * len(asked.digits))
        yield {"status": progress_html(fraction, text), "file": file, "gallery": self.preview(generated, lang),
               "run_id": run_id, "summary": summary}

    def _export_progress(self, asked: ExportRequest, update: calls.Update, lang: str) -> dict[str, Any]:
        p, steps = update.progress, asked.num_inference_steps
        position = min((p.done - 1) // steps, len(asked.digits) - 1)
        finished = (p.done // steps) * asked.per_class
        text = self.tr.text(P + "export_progress", lang, digit=asked.digits[position], i=position + 1,
                            n=len(asked.digits), step=p.done - position * steps, steps=steps, done=finished,
                            total=asked.per_class * len(asked.digits))
        return {"status": progress_html(p.done / p.total, text)}

    def preview(self, generated: GeneratedSet, lang: str) -> list[tuple[np.ndarray, str]]:
        """The first :data:`PREVIEW_PER_CLASS` digits of each class, captioned with their name in the zip."""
        items = []
        for index, (image, label) in enumerate(zip(generated.images, generated.labels)):
            if index % generated.request.per_class < PREVIEW_PER_CLASS:
                items.append((image, self.tr.text(P + "preview_caption", lang, file=f"{index:05d}_{int(label)}.png",
                                                  digit=int(label))))
        return items

    # -- experiment ------------------------------------------------------------------------
    def example(self, lang):
        """The experiment the section opens with: the defaults, shared by every student (computed once)."""
        d = ExperimentRequest()
        yield from self.experiment(d.k_real, d.n_synthetic, d.seed, lang, example=True)

    def experiment(self, k_real, n_synthetic, seed, lang, request: gr.Request = None, example: bool = False):
        """``/augment_experiment``: train with and without generated digits; show both accuracies and curves."""
        tr = self.tr
        asked = ExperimentRequest(k_real=k_real, n_synthetic=n_synthetic, seed=seed).validated()
        run_id = LIVE.new_id()
        LIVE.reserve(run_id)
        try:
            first = tr.text("example.preparing" if example else P + "experiment_loading", lang)
            yield {"status": progress_html(0, first), "table": "", "plot": None, "run_id": run_id}
            ticket = self.submit_experiment(asked, EXAMPLES_CLIENT if example else client_of(request),
                                            capped=not example)
        except BaseException:
            LIVE.release(run_id)
            raise
        result = yield from self._follow(ticket, run_id, lang, lambda u: self._experiment_progress(
            asked, ticket, u, lang))
        if result.stopped:
            rounds = len(result.real_only.steps)
            text = tr.text(P + "experiment_stopped", lang, step=result.real_only.steps[-1], total=self.train.steps) \
                if rounds else tr.text(P + "experiment_stopped_generating", lang)
        else:
            text = tr.text(P + "experiment_done", lang, seconds=result.seconds)
        if example:
            text = tr.text("example.shown", lang) + " " + text
        elif ticket.shared:
            text += " " + tr.text("queue.shared", lang)
        figure = plot_result(result, self.tr.table(P + "plot.", lang))
        summary = {**result.summary(), "shared": ticket.shared}
        yield {"status": progress_html(1.0, text), "table": self.result_table(summary, lang),
               "plot": plot_picture(png_data_url(figure)), "run_id": run_id, "summary": summary}

    def _experiment_progress(self, asked: ExperimentRequest, ticket: Ticket, update: calls.Update,
                             lang: str) -> dict[str, Any]:
        p, tr = update.progress, self.tr
        generate = calls.cpu_seconds(asked.export_request()) if asked.n_synthetic else 0.0
        share = generate / max(calls.cpu_seconds(asked, self.train), 1e-9)  # of the whole run's time
        if p.phase == "generate":
            steps = asked.export_request().num_inference_steps
            text = tr.text(P + "experiment_generating", lang, n=asked.n_synthetic,
                           done=(p.done // steps) * asked.n_synthetic, total=NUM_CLASSES * asked.n_synthetic)
            return {"status": progress_html(share * p.done / p.total, text)}
        text = tr.text(P + "experiment_training", lang, step=p.done, total=p.total)
        curves = p.curves
        picture = self._pictures.get_or_make((ticket.job.key, p.done, lang), lambda: png_data_url(plot_curves(
            curves[0], curves[1] if len(curves) > 1 else None, asked.k_real, asked.n_synthetic, total_steps=p.total,
            text=self.tr.table(P + "plot.", lang))))
        return {"status": progress_html(share + (1 - share) * p.done / p.total, text), "plot": plot_picture(picture)}

    def result_table(self, summary: dict[str, Any], lang: str) -> str:
        """Both accuracies side by side with the gain in points (Markdown), and what five seeds measured."""
        tr, k, n = self.tr, summary["k_real"], summary["n_synthetic"]
        real, synthetic = summary["accuracy_real_only"], summary["accuracy_with_synthetic"]
        gain = "–" if summary["gain"] is None else tr.text(P + "table.points", lang, gain=100 * summary["gain"])
        rows = [f"| | {tr.text(P + 'table.real', lang)} | {tr.text(P + 'table.synthetic', lang)} |", "|---|---|---|",
                f"| {tr.text(P + 'table.digits', lang)} | {NUM_CLASSES * k} ({k}) | "
                f"{NUM_CLASSES * (k + n)} ({k} + {n}) |",
                f"| {tr.text(P + 'table.accuracy', lang, heldout=summary['heldout_digits'])} | {percent(real)} | "
                f"{percent(synthetic)} |", f"| {tr.text(P + 'table.gain', lang)} | | **{gain}** |"]
        notes = [tr.text(P + "table.one_seed", lang)]
        measured = [r for r in MEASURED if r[0] == k and r[1]]
        if measured:
            notes.append(tr.text(P + "table.measured", lang, k=k, rows=tr.text(P + "table.separator", lang).join(
                tr.text(P + "table.measured_row", lang, n=r[1], gain=r[4], std=r[5],
                        verdict=tr.text(P + f"verdict.{r[6]}", lang)) for r in measured)))
        return "\n".join(rows) + "\n\n" + "\n\n".join(notes)

    def measured_table(self, lang) -> dict[str, Any]:
        """The five-seed results of ``python -m diffusion.evaluate augment``, in the caller's language."""
        return {"measured": measured_markdown(self.tr, lang)}

    @staticmethod
    def stop(run_id) -> None:
        """``/augment_export_stop``, ``/augment_experiment_stop``: end that run after its current step."""
        LIVE.stop(run_id)


def measured_markdown(tr: Translator, lang: str) -> str:
    """:data:`MEASURED` as a Markdown table; the numbers are the same in every language."""
    head = [tr.text(P + f"measured.{c}", lang) for c in ("k", "n", "accuracy", "gain", "verdict")]
    lines = [tr.text(P + "measured.intro", lang), "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for k, n, mean, std, gain, gain_std, verdict in MEASURED:
        shown = "–" if gain is None else f"{gain:+.1f} ± {gain_std:.1f}"
        lines.append(f"| {k} | {n} | {mean:.1f} ± {std:.1f} | {shown} | {tr.text(P + f'verdict.{verdict}', lang)} |")
    return "\n".join(lines)
