"""Lesson 7, section 1: anomaly detection. Is this picture a digit like the ones the models learnt?

A picture comes from the sketch canvas, an upload or a bundled example; the score
(:mod:`diffusion.lessons.applications.anomaly`) is one short model job of the server's queue,
run as one GPU call (:mod:`~diffusion.lessons.applications.anomaly_calls`). The section shows
the picture as the model sees it, the reconstruction, the per-pixel error map, the score
against the histogram of the 1,000 held-out real digits with the threshold, and a verdict.

Uploads and drawings reach the handlers unopened (:class:`ImageInput`, :class:`DrawingInput`):
:mod:`diffusion.images` checks and decodes them, so a bad file gets the same translated
message as in the other lessons. The handlers (:class:`AnomalyHandlers`) return
``{output name: value}`` and need no Blocks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import gradio as gr
import matplotlib
import numpy as np
from matplotlib.figure import Figure

from diffusion.errors import InputError, check_choice, check_range
from diffusion.images import MAX_UPLOAD_BYTES, check_upload, load_image
from diffusion.lessons.applications import anomaly_calls as calls
from diffusion.lessons.applications.anomaly import (
    DEFAULT_FALSE_ALARM, FALSE_ALARM_LIMITS, METHODS, MODEL_OF, AnomalyResult, prepare_picture,
)
from diffusion.lessons.applications.outliers import EXAMPLES, example_paths
from diffusion.models import registry as models
from diffusion.serving import gpu
from diffusion.serving.jobs import JobQueue, request_key
from diffusion.serving.render_pool import png_data_url
from diffusion.ui.handlers import EXAMPLES_CLIENT, bind, client_of, guarded
from diffusion.ui.i18n import LANG_JS, Translator, lang_input
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX, ImageInput, plot_picture

SCOPE = "applications.anomaly"
P = SCOPE + "."
START_EXAMPLE = "cjk"  # the picture the section opens with, already scored
DISPLAY = 8  # each of the 28×28 pixels shown as an 8×8 block
# `python -m diffusion.evaluate anomaly` on the 1,000 held-out digits (the model card's table):
# (set, pictures, AUROC diffusion, AUROC autoencoder, AUROC diffusion error only).
MEASURED = (("letters", 500, 0.815, 0.786, 0.696), ("cjk", 500, 0.948, 0.997, 0.978),
            ("shapes", 500, 0.943, 0.823, 0.889), ("noise", 500, 0.994, 0.985, 1.000),
            ("upside_down", 1000, 0.813, 0.827, 0.781))


class DrawingInput(gr.Sketchpad):
    """``gr.Sketchpad`` that hands the drawing's encoded composite to the core unopened.

    The value is ``{"composite": bytes | path}``: the browser's PNG bytes (sent as a blob)
    or the path of a file gradio has cached; :func:`read_drawing` checks and decodes it.
    """

    def get_block_name(self) -> str:
        return "imageeditor"

    def preprocess(self, payload: Any) -> dict[str, Any] | None:
        if payload is None:
            return None
        if payload.id is not None:
            cached = self.blob_storage.pop(payload.id, None)
            return {"composite": cached.composite if cached is not None else None}
        composite = payload.composite
        return {"composite": str(composite.path) if composite is not None and composite.path else None}


def decoded(source: Any) -> np.ndarray:
    """An upload (path), encoded bytes or an array as uint8 RGB ``(H, W, 3)``, long side ≤ 256, safely decoded.

    Raises:
        InputError: ``image_missing``, ``image_unreadable``, ``image_too_large`` or ``image_too_small``.
    """
    if source is None or (isinstance(source, (str, bytes)) and not source):
        raise InputError("image_missing", "Please provide an image.")
    if isinstance(source, str):
        source = check_upload(source)
    elif isinstance(source, (bytes, bytearray)):
        if len(source) > MAX_UPLOAD_BYTES:
            raise InputError("image_unreadable", "The image could not be read: {detail}.", detail="too many bytes")
        source = bytes(source)
    elif not isinstance(source, np.ndarray):
        raise InputError("image_unreadable", "The image could not be read: {detail}.", detail="not an image")
    pixels, _ = load_image(source, max_side=256, mode="RGB")
    return np.rint((pixels + 1.0) * 127.5).astype(np.uint8)


def read_drawing(value: Any) -> np.ndarray:
    """The sketch canvas's picture (``{"composite": …}``, strokes over white) as uint8 RGB."""
    if isinstance(value, dict):
        value = value.get("composite")
    elif value is not None and not isinstance(value, (str, bytes, np.ndarray)):
        raise InputError("image_unreadable", "The image could not be read: {detail}.", detail="not a drawing")
    return decoded(value)


def enlarged(picture: np.ndarray) -> np.ndarray:
    """A 28×28 (or 28×28×3) uint8 picture with each pixel a :data:`DISPLAY`-sized block."""
    block = np.ones((DISPLAY, DISPLAY) + (1,) * (picture.ndim - 2), dtype=np.uint8)
    return np.kron(picture, block)


def error_colours(error_map: np.ndarray) -> np.ndarray:
    """The per-pixel error as an RGB heat map (inferno), 0 black, the map's maximum bright yellow."""
    scaled = np.asarray(error_map, dtype=np.float64) / max(float(np.max(error_map)), 1e-12)
    return np.rint(matplotlib.colormaps["inferno"](scaled)[:, :, :3] * 255).astype(np.uint8)


def histogram_figure(result: AnomalyResult, text: dict[str, str]) -> Figure:
    """The held-out real digits' scores, the threshold and this picture's score (``text``: translated labels)."""
    figure = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    reference = np.asarray(result.reference, dtype=np.float64)
    low, high = min(reference.min(), result.score), max(reference.max(), result.score)
    axes.hist(reference, bins=np.linspace(low, high + 1e-9, 41), color="#60a5fa", edgecolor="white",
              label=text["reference"].format(n=len(reference)))
    axes.axvline(result.threshold, color="#f97316", linestyle="--", linewidth=2,
                 label=text["threshold"].format(rate=100 * result.false_alarm_rate))
    axes.axvline(result.score, color="#dc2626" if result.is_anomaly else "#16a34a", linewidth=2.5,
                 label=text["input"].format(score=result.score))
    axes.set_xlabel(text[f"x_{result.method}"])
    axes.set_ylabel(text["y"])
    axes.legend(loc="upper right", fontsize=8)
    return figure


@dataclass(eq=False)
class Kept:
    """A finished score as the job queue keeps it for identical requests (it says its bytes)."""

    value: AnomalyResult
    stopped: bool = False

    @property
    def nbytes(self) -> int:
        v = self.value
        return v.picture.nbytes + v.reconstruction.nbytes + v.error_map.nbytes + v.reference.nbytes + 4096


class AnomalyHandlers:
    """The section's event handlers; each returns ``{output name: value}``.

    Args:
        tr: The UI strings.
        device: Where the models run.
        jobs: The server's job queue.
    """

    def __init__(self, tr: Translator, device: str, jobs: JobQueue | None = None) -> None:
        self.tr, self.device = tr, device
        self.jobs = jobs or JobQueue()

    def result_of(self, picture: np.ndarray, method: Any, client: str, capped: bool = True,
                  false_alarm_rate: Any = DEFAULT_FALSE_ALARM) -> tuple[AnomalyResult, bool]:
        """Score a decoded picture (checked before it queues); identical digits share one run."""
        method = check_choice("method", method, METHODS)
        alpha = check_range("false_alarm_rate", false_alarm_rate, *FALSE_ALARM_LIMITS)
        digit = prepare_picture(picture)  # a blank or unreadable picture is said before the job queues
        if method == "diffusion":  # a missing model is said before the job queues
            models.load_unet_model("mnist", self.device)
        else:
            models.load_autoencoder(self.device)
        key = request_key("anomaly", {"digit": hashlib.sha256(digit.tobytes()).hexdigest(), "method": method,
                                      "false_alarm_rate": alpha, "device": self.device},
                          models.weights_digest(MODEL_OF[method]))
        work = gpu.GpuWork(calls.score_call, {"picture": picture, "method": method, "false_alarm_rate": alpha,
                                              "device": self.device}, gpu_s=calls.gpu_seconds(method))
        ticket = self.jobs.submit("anomaly_" + method, lambda callback, stop: Kept(gpu.execute(work)), key=key,
                                  client=client, estimate_s=calls.cpu_seconds(method), capped=capped, max_threads=2)
        try:
            for _ in ticket.updates():
                pass
        finally:
            ticket.close()
        if ticket.result is None:  # the server shut down before the job ran
            raise InputError("busy", "The server is busy. Please try again in a moment.")
        return ticket.result.value, ticket.shared

    def show(self, result: AnomalyResult, lang: str, note: str = "") -> dict[str, Any]:
        """The outputs of one scored picture."""
        tr = self.tr
        figure = histogram_figure(result, tr.table(P + "plot.", lang))
        verdict = tr.text(P + f"verdict.{result.verdict}", lang, percentile=result.percentile,
                          rate=100 * result.false_alarm_rate, score=result.score, threshold=result.threshold,
                          method=tr.text(P + f"method_short.{result.method}", lang))
        if result.best_class is not None:
            verdict += " " + tr.text(P + "best_class", lang, digit=result.best_class)
        return {"picture": enlarged(result.picture), "reconstruction": enlarged(
                    np.rint(np.clip(result.reconstruction, 0, 1) * 255).astype(np.uint8)),
                "error_map": enlarged(error_colours(result.error_map)),
                "histogram": plot_picture(png_data_url(figure)),
                "verdict": "**" + verdict + "**" + (f"\n\n{note}" if note else ""), "summary": result.summary()}

    def score(self, image, method, lang, request: gr.Request = None) -> dict[str, Any]:
        """``/anomaly_score``: score an uploaded picture (or an example) against the held-out real digits."""
        result, shared = self.result_of(decoded(image), method, client_of(request))
        return self.show(result, lang, self.tr.text("queue.shared", lang) if shared else "")

    def score_drawing(self, drawing, method, lang, request: gr.Request = None) -> dict[str, Any]:
        """Score what was drawn on the sketch canvas."""
        result, shared = self.result_of(read_drawing(drawing), method, client_of(request))
        return self.show(result, lang, self.tr.text("queue.shared", lang) if shared else "")

    def example(self, lang) -> dict[str, Any]:
        """The section's opening: the start-up example with the diffusion score (computed once, shared)."""
        picture = decoded(str(example_paths()[START_EXAMPLE]))
        result, _ = self.result_of(picture, "diffusion", EXAMPLES_CLIENT, capped=False)
        return self.show(result, lang, self.tr.text("example.shown", lang))


def measured_markdown(tr: Translator, lang: str) -> str:
    """:data:`MEASURED` as a Markdown table; the numbers are the same in every language."""
    head = [tr.text(P + f"measured.{c}", lang) for c in ("set", "pictures", "diffusion", "autoencoder", "error_only")]
    lines = [tr.text(P + "measured.intro", lang), "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, count, diffusion, autoencoder, error_only in MEASURED:
        lines.append(f"| {tr.text(P + f'set.{name}', lang)} | {count} | {diffusion:.3f} | {autoencoder:.3f} "
                     f"| {error_only:.3f} |")
    return "\n".join(lines + ["", tr.text(P + "measured.notes", lang)])


def image_box(label: Any, elem_id: str) -> gr.Image:
    """An output picture, enlarged without blur, stored as PNG (lossless)."""
    return gr.Image(label=label, format="png", height=230, interactive=False, elem_id=elem_id,
                    elem_classes=["dl-pixelated"], buttons=["download"])


def build_anomaly(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """Lay out the anomaly-detection section and wire its events to :class:`AnomalyHandlers`."""
    gr.Markdown(tr(P + "intro"), latex_delimiters=LATEX)
    if not (models.available("mnist") and models.available(models.AUTOENCODER)):
        gr.Markdown(tr(P + "no_model"), elem_classes=["dl-warning"], elem_id="anomaly-no-model")
        gr.Markdown(measured_markdown(tr, "en"), elem_id="anomaly-measured")
        return
    handlers = AnomalyHandlers(tr, settings.device, settings.jobs)
    heavy = settings.model_events()
    paths = example_paths()
    with gr.Row():
        with gr.Column(scale=2, min_width=300):
            with gr.Group(elem_id="anomaly-upload-box"):
                gr.Markdown("**" + tr(P + "upload_tab") + "**")
                image = ImageInput(value=str(paths[START_EXAMPLE]), type="filepath", sources=["upload", "clipboard"],
                                   label=tr(P + "image"), height=240, elem_id="anomaly-image")
                examples = gr.Examples([[str(paths[name])] for name in EXAMPLES], inputs=[image],
                                       # gradio shows example labels as they are (no I18n): both languages
                                       example_labels=[" · ".join(tr.text(P + f"example.{name}", lang) for lang in
                                                                  ("en", "zh-CN")) for name in EXAMPLES],
                                       label=tr(P + "examples"), elem_id="anomaly-examples")
                run = gr.Button(tr(P + "run"), variant="primary", elem_id="anomaly-run")
            with gr.Accordion(tr(P + "draw_tab"), open=False, elem_id="anomaly-draw-box"):
                drawing = DrawingInput(label=tr(P + "drawing"), type="numpy", image_mode="RGBA", canvas_size=(280, 280),
                                       layers=False, format="png",
                                       brush=gr.Brush(colors=["#000000"], default_size=18, color_mode="fixed"),
                                       elem_id="anomaly-drawing")
                run_drawing = gr.Button(tr(P + "run_drawing"), variant="primary", elem_id="anomaly-run-drawing")
            method = gr.Radio([(tr(P + f"method.{m}"), m) for m in METHODS], value="diffusion",
                              label=tr(P + "param.method"), info=tr(P + "method_info"), elem_id="anomaly-method")
            method.preprocess = lambda payload: payload  # the core checks it and answers in the student's language
        with gr.Column(scale=3):
            verdict = gr.Markdown(elem_id="anomaly-verdict")
            with gr.Row():
                picture = image_box(tr(P + "picture"), "anomaly-picture")
                reconstruction = image_box(tr(P + "reconstruction"), "anomaly-reconstruction")
                error_map = image_box(tr(P + "error_map"), "anomaly-error-map")
            histogram = gr.Plot(format="png", show_label=False, elem_id="anomaly-histogram")
            summary = gr.JSON(label=tr(P + "summary"), elem_id="anomaly-summary")
    gr.Markdown(tr(P + "explain"), latex_delimiters=LATEX)
    measured = gr.Markdown(measured_markdown(tr, "en"), elem_id="anomaly-measured")
    lang = lang_input()

    out = dict(picture=picture, reconstruction=reconstruction, error_map=error_map, histogram=histogram,
               verdict=verdict, summary=summary)
    outputs = list(out.values())
    score = bind(guarded(tr, SCOPE)(handlers.score), out)
    run.click(score, [image, method, lang], outputs, js=LANG_JS, api_name="anomaly_score", **heavy)
    examples.load_input_event.then(score, [image, method, lang], outputs, js=LANG_JS, api_visibility="private",
                                   **heavy)
    run_drawing.click(bind(guarded(tr, SCOPE)(handlers.score_drawing), out), [drawing, method, lang], outputs,
                      js=LANG_JS, api_visibility="private", **heavy)
    # The section opens with an example already scored, computed once at start-up and shared.
    demo.load(bind(guarded(tr, SCOPE)(handlers.example), out), [lang], outputs, js=LANG_JS, show_progress="hidden",
              api_visibility="private", **heavy)
    settings.examples.append(lambda: handlers.example("en"))
    demo.load(lambda code: {measured: measured_markdown(tr, code)}, [lang], [measured], js=LANG_JS,
              show_progress="hidden", api_visibility="private", concurrency_id="light")
