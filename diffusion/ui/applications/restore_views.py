"""What the inpainting and super-resolution sections show and read: digits, holes, pictures.

* **The digit** comes from one of three sources (:data:`SOURCES`): a held-out digit of the
  model's own split (never trained on; :func:`heldout_digit`), an upload
  (:func:`digit_from_upload`, through :mod:`diffusion.images`' safe loader) or a drawing.
* **Drawings and drawn holes** are made on :func:`pixel_canvas`, a 28×28 grid shown
  enlarged, painted cell by cell in the browser. Its value is JSON
  ``{"pixels": "<784 hex digits>", "under": "<784 hex digits>"}``: one grey level 0-f per
  cell, row by row (``under`` is the digit shown beneath a hole, for display only). The
  server reads only ``pixels``, strictly and with a size cap (:func:`read_pixels`); an API
  caller may also send the 784 hex digits alone.
* **Pictures** are native 28×28 (or small grids of them), shown enlarged without blur by
  the page's ``dl-pixelated`` style.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageOps

from diffusion.errors import InputError, check_choice, check_range
from diffusion.images import check_upload, load_image
from diffusion.lessons.applications.classifier import model_split
from diffusion.lessons.applications.inpaint import LIMITS, preset_mask
from diffusion.lessons.applications.superres import bicubic_upscale, check_factor, downsample
from diffusion.lessons.sampling import to_uint8_grid
from diffusion.ui.canvas import STATIC
from diffusion.ui.i18n import Translator
from diffusion.ui.widgets import ImageInput

SIDE = 28
SOURCES = ("heldout", "upload", "drawing")
HEX = "0123456789abcdef"
MAX_CANVAS_CHARS = 4096  # a canvas value is two strings of 784 characters and a little JSON
HOLE_RGB = np.array([249, 115, 22], dtype=np.float64)  # the orange of the progress bars

_TEMPLATE = """
<div class="dl-cells" data-mode="${mode}">
  <canvas width="336" height="336" style="touch-action: none" data-en="${hint_en}" data-zh="${hint_zh}"></canvas>
  <div class="dl-cells-tools">
    <label><input type="checkbox" data-role="erase"> <span data-en="${erase_en}" data-zh="${erase_zh}">${erase_en}</span></label>
    <button type="button" data-action="clear" data-en="${clear_en}" data-zh="${clear_zh}">${clear_en}</button>
  </div>
</div>
"""
_CSS = """
.dl-cells canvas { width: 100%; max-width: 336px; aspect-ratio: 1; border: 1px solid #a1a1aa; border-radius: 6px;
                   cursor: crosshair; display: block; image-rendering: pixelated; }
.dl-cells-tools { display: flex; gap: 1em; align-items: center; margin-top: 0.4em; }
.dl-cells-tools button { padding: 0.2em 0.8em; border-radius: 4px; border: 1px solid #a1a1aa; }
"""
# Paints whole cells of a 28×28 grid. "ink" draws a soft white stroke on black (like the
# data's digits); "mask" paints the hole in orange over the digit in ``under``.
_SCRIPT = """
(() => {
  const N = 28, EMPTY = "0".repeat(N * N);
  let pixels = EMPTY, under = "", erase = false, last = null;
  const mode = () => (element.querySelector(".dl-cells") || { dataset: { mode: "ink" } }).dataset.mode;
  function parse() {
    let v = {};
    try { v = JSON.parse(props.value || "{}") || {}; } catch (e) { v = {}; }
    const ok = (s) => typeof s === "string" && s.length === N * N && /^[0-9a-f]*$/.test(s);
    pixels = ok(v.pixels) ? v.pixels : EMPTY;
    under = ok(v.under) ? v.under : "";
  }
  function paint() {
    const c = element.querySelector("canvas");
    if (!c) return;
    const ctx = c.getContext("2d"), s = c.width / N, mask = mode() === "mask";
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
    for (let i = 0; i < N * N; i++) {
      const x = (i % N) * s, y = Math.floor(i / N) * s;
      const g = parseInt((mask ? under[i] : pixels[i]) || "0", 16) * 17;
      if (g) { ctx.fillStyle = `rgb(${g},${g},${g})`; ctx.fillRect(x, y, s, s); }
      if (mask && pixels[i] !== "0") { ctx.fillStyle = "rgba(249,115,22,0.7)"; ctx.fillRect(x, y, s, s); }
    }
    const box = element.querySelector("input[data-role=erase]");
    if (box) box.checked = erase;
  }
  const publish = () => { props.value = JSON.stringify(under ? { pixels, under } : { pixels }); trigger("change"); };
  function cell(event) {
    const c = element.querySelector("canvas"), b = c.getBoundingClientRect();
    return [Math.floor((event.clientX - b.left) / b.width * N), Math.floor((event.clientY - b.top) / b.height * N)];
  }
  function stamp(cx, cy, cells) {
    for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
      const x = cx + dx, y = cy + dy;
      if (x < 0 || y < 0 || x >= N || y >= N) continue;
      const i = y * N + x, near = dx === 0 || dy === 0, old = parseInt(cells[i], 16);
      if (erase) cells[i] = "0";
      else if (mode() === "mask") cells[i] = "f";
      else cells[i] = Math.max(old, dx === 0 && dy === 0 ? 15 : near ? 11 : 4).toString(16);
    }
  }
  function line(from, to) {
    const cells = pixels.split(""), n = Math.max(Math.abs(to[0] - from[0]), Math.abs(to[1] - from[1]), 1);
    for (let k = 0; k <= n; k++)
      stamp(Math.round(from[0] + (to[0] - from[0]) * k / n), Math.round(from[1] + (to[1] - from[1]) * k / n), cells);
    pixels = cells.join("");
    paint();
  }
  element.addEventListener("pointerdown", (event) => {
    if (event.target.tagName !== "CANVAS") return;
    event.preventDefault();
    event.target.setPointerCapture(event.pointerId);
    last = cell(event);
    line(last, last);
  });
  element.addEventListener("pointermove", (event) => {
    if (!last) return;
    const now = cell(event);
    if (now[0] !== last[0] || now[1] !== last[1]) { line(last, now); last = now; }
  });
  const finish = () => { if (last) { last = null; publish(); } };
  element.addEventListener("pointerup", finish);
  element.addEventListener("pointercancel", finish);
  element.addEventListener("change", (event) => {
    if (event.target.dataset && event.target.dataset.role === "erase") erase = event.target.checked;
  });
  element.addEventListener("click", (event) => {
    if (event.target.dataset && event.target.dataset.action === "clear") { pixels = EMPTY; paint(); publish(); }
  });
  watch("value", () => { parse(); paint(); dlRelocalize(); });
  parse(); paint();
})();
"""


def _hex(picture: np.ndarray) -> str:
    levels = np.clip(np.rint(np.asarray(picture, dtype=np.float64) * 15.0), 0, 15).astype(int).reshape(-1)
    return "".join(HEX[v] for v in levels)


def canvas_value(pixels: np.ndarray | None = None, under: np.ndarray | None = None) -> str:
    """A :func:`pixel_canvas` value: ``pixels`` (28×28 in [0, 1], default none) over ``under``."""
    value = {"pixels": _hex(np.zeros((SIDE, SIDE)) if pixels is None else pixels)}
    if under is not None:
        value["under"] = _hex(under)
    return json.dumps(value, separators=(",", ":"))


def pixel_canvas(tr: Translator, mode: str, elem_id: str, value: str = "") -> gr.HTML:
    """A 28×28 grid to paint on: a digit (``mode="ink"``) or a hole over a digit (``mode="mask"``).

    The tools carry both languages (gr.HTML's template props are plain text) and the
    shared helper shows the page's one; the canvas's fallback text says what to do.
    """
    keys = {"erase": "erase", "clear": "clear", "hint": f"hint_{mode}"}
    texts = {f"{name}_{code[:2]}": tr.text(f"applications.canvas.{key}", code)
             for name, key in keys.items() for code in ("en", "zh-CN")}
    script = (STATIC / "localize.js").read_text(encoding="utf-8") + _SCRIPT
    return gr.HTML(value=value or canvas_value(), html_template=_TEMPLATE, css_template=_CSS, js_on_load=script,
                   mode=mode, elem_id=elem_id, apply_default_css=False, **texts)


def _drawing_error() -> InputError:
    return InputError("restore_drawing_bad", "The drawing could not be read: paint on the grid again.")


def read_pixels(value: Any) -> np.ndarray:
    """The painted cells of a :func:`pixel_canvas` value as float32 ``(28, 28)`` in [0, 1].

    An empty value reads as nothing painted (all zero).

    Raises:
        InputError: ``restore_drawing_bad`` for anything else than 784 hex digits (bare or
            as the ``pixels`` of a JSON object), checked before parsing for length.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return np.zeros((SIDE, SIDE), np.float32)
    if not isinstance(value, str) or len(value) > MAX_CANVAS_CHARS:
        raise _drawing_error()
    text = value.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise _drawing_error() from None
        text = data.get("pixels") if isinstance(data, dict) else None
    if not isinstance(text, str) or len(text) != SIDE * SIDE or not set(text.lower()) <= set(HEX):
        raise _drawing_error()
    codes = np.frombuffer(text.lower().encode("ascii"), dtype=np.uint8).astype(np.int64)
    levels = np.where(codes >= ord("a"), codes - ord("a") + 10, codes - ord("0"))
    return (levels.reshape(SIDE, SIDE) / 15.0).astype(np.float32)


def drawn_digit(value: Any) -> np.ndarray:
    """The digit painted on the ink canvas; ``restore_drawing_empty`` when nothing is."""
    picture = read_pixels(value)
    if not picture.any():
        raise InputError("restore_drawing_empty", "Draw a digit on the grid first.")
    return picture


def heldout_digit(index: Any) -> tuple[np.ndarray, int]:
    """Held-out digit ``index`` of the digit model's own split (never trained on) and its class.

    Raises:
        InputError: ``out_of_range`` / ``not_an_integer`` naming ``heldout_index``.
    """
    split = model_split()
    i = int(check_range("heldout_index", index, 0, len(split.heldout_idx) - 1, integer=True))
    k = int(split.heldout_idx[i])
    return (split.images[k] / 255.0).astype(np.float32), int(split.labels[k])


def digit_from_upload(path: Any) -> np.ndarray:
    """An uploaded picture as a 28×28 digit in [0, 1], white on black like the data.

    The file is checked and decoded by :mod:`diffusion.images` (size before decoding). A
    28×28 picture is kept as it is; any other is padded to a square with its border's
    colour and resized (Lanczos). A light border (dark ink on paper) is inverted.

    Raises:
        InputError: The loader's ``image_missing``, ``image_unreadable``, ``image_too_large``
            or ``image_too_small``.
    """
    pixels, _ = load_image(check_upload(path), max_side=256, mode="L")
    grey = np.clip((pixels[:, :, 0] + 1.0) / 2.0, 0.0, 1.0)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if grey.shape != (SIDE, SIDE):
        image = Image.fromarray(np.rint(grey * 255.0).astype(np.uint8))
        square = ImageOps.pad(image, (SIDE, SIDE), method=Image.Resampling.LANCZOS,
                              color=int(round(background * 255.0)))
        grey = np.asarray(square, dtype=np.float32) / 255.0
    return (1.0 - grey if background > 0.5 else grey).astype(np.float32)


def chosen_digit(source: Any, heldout_index: Any, upload: Any, drawing: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The digit the student chose and what to say about it in the summary.

    Raises:
        InputError: ``bad_choice`` naming ``source``, or the chosen source's own errors.
    """
    source = check_choice("source", source, SOURCES)
    if source == "heldout":
        picture, label = heldout_digit(heldout_index)
        return picture, {"source": source, "heldout_index": int(heldout_index), "heldout_class": label}
    if source == "upload":
        return digit_from_upload(upload), {"source": source}
    return drawn_digit(drawing), {"source": source}


def native(picture: np.ndarray) -> np.ndarray:
    """A picture in [0, 1] as uint8 (rounded, clipped), at its own size."""
    return np.rint(np.clip(np.asarray(picture, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def enlarged(picture: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a ``factor``×``factor`` block: a low-resolution picture at 28×28, visibly pixelated."""
    return np.kron(native(picture), np.ones((factor, factor), dtype=np.uint8))


def with_hole(picture: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The digit in grey with its hole tinted orange: uint8 RGB ``(28, 28, 3)``."""
    grey = np.repeat(np.clip(np.asarray(picture, dtype=np.float64), 0, 1)[:, :, None] * 255.0, 3, axis=2)
    tinted = np.where(np.asarray(hole, dtype=bool)[:, :, None], 0.35 * grey + 0.65 * HOLE_RGB, grey)
    return np.rint(tinted).astype(np.uint8)


def grid(batch: torch.Tensor, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """The fills of one step side by side (one row), the network's [-1, 1] scale shown black to white."""
    return to_uint8_grid(batch, nrow=batch.shape[0], lo=lo, hi=hi)


def block_mean(picture: np.ndarray, factor: int) -> np.ndarray:
    """y = A x: the mean of each ``factor``×``factor`` block (as the core computes it from an original)."""
    side = SIDE // factor
    return np.asarray(picture, dtype=np.float64).reshape(side, factor, side, factor).mean(axis=(1, 3)) \
        .astype(np.float32)


def consistency(picture: np.ndarray, low: np.ndarray, factor: int) -> float:
    """‖A x - y‖₂ over the low-resolution pixels ([0, 1] scale), as the core measures its results."""
    residual = downsample(torch.from_numpy(np.asarray(picture, dtype=np.float64))[None, None], factor)[0, 0] \
        - torch.from_numpy(np.asarray(low, dtype=np.float64))
    return float(residual.norm())


def db(value: float | None) -> str:
    """A PSNR for a caption or table: one decimal, ∞ for a perfect match, – where unknown."""
    if value is None:
        return "–"
    return f"{value:.1f}" if np.isfinite(value) else "∞"


def scores_table(head: list[str], rows: list[tuple[str, float | None, float]]) -> str:
    """A Markdown table: a picture's name, its PSNR (dB) and its ‖A x - y‖."""
    lines = [f"| {' | '.join(head)} |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {name} | {db(psnr)} | {gap:.2e} |" for name, psnr, gap in rows])


@contextmanager
def worded(tr: Translator, lang: Any):
    """This lesson's own wording of an error (``applications.error.<code>``), where it has one."""
    try:
        yield
    except InputError as error:
        key = f"applications.error.{error.code}"
        if key not in tr.strings["en"]:
            raise
        raise gr.Error(tr.text(key, lang, **error.params)) from None


def preview_hole(mask: Any, mask_drawing: Any) -> np.ndarray:
    """The hole to show while choosing (none while it cannot be read)."""
    try:
        return read_pixels(mask_drawing) > 0 if mask == "drawn" else preset_mask(mask)
    except InputError:
        return np.zeros((SIDE, SIDE), dtype=bool)


def inpaint_preview(source, heldout_index, upload, drawing, mask, mask_drawing, canvas: bool) -> dict[str, Any]:
    """The chosen digit with its hole (and with ``canvas`` the hole canvas over it); nothing while unreadable."""
    try:
        picture, _ = chosen_digit(source, heldout_index, upload, drawing)
    except InputError:
        return {"picture": None}
    answer = {"picture": with_hole(picture, preview_hole(mask, mask_drawing))}
    if canvas:
        try:
            painted = read_pixels(mask_drawing)
        except InputError:
            painted = None
        answer["mask_canvas"] = canvas_value(painted, picture)
    return answer


def superres_preview(source, heldout_index, upload, drawing, factor, low_resolution) -> dict[str, Any]:
    """The chosen digit, its measurement y (pixelated) and bicubic of y; nothing while unreadable."""
    try:
        picture, _ = chosen_digit(source, heldout_index, upload, drawing)
        factor = check_factor(factor)
    except InputError:
        return {"original": None, "low": None, "bicubic": None}
    low = block_mean(picture, factor)
    return {"original": None if low_resolution is True else native(picture), "low": enlarged(low, factor),
            "bicubic": native(bicubic_upscale(low, factor))}


def image_box(label: Any, elem_id: str, value: np.ndarray | None = None) -> gr.Image:
    """An output picture, enlarged without blur, stored as PNG (lossless)."""
    return gr.Image(value=value, label=label, format="png", height=220, interactive=False, elem_id=elem_id,
                    elem_classes=["dl-pixelated"])


def source_inputs(tr: Translator, section: str, source: str, index: int) -> tuple:
    """The digit to start from, one way shown at a time: ``(source, index, upload, drawing)``."""
    chooser = gr.Radio([(tr(f"applications.source.{s}"), s) for s in SOURCES], value=source,
                       label=tr("applications.param.source"), elem_id=f"{section}-source")
    slider = gr.Slider(0, len(model_split().heldout_idx) - 1, value=index, step=1, label=tr("applications.param.heldout_index"),
                       info=tr("applications.heldout_info"), visible=source == "heldout", elem_id=f"{section}-index")
    upload = ImageInput(type="filepath", sources=["upload", "clipboard"], label=tr("applications.upload"),
                        height=200, visible=source == "upload", elem_id=f"{section}-upload")
    with gr.Group(visible=source == "drawing", elem_id=f"{section}-drawing-box") as box:
        gr.Markdown(tr("applications.draw_hint"))
        drawing = pixel_canvas(tr, "ink", f"{section}-drawing")
    chooser.change(lambda s: (gr.update(visible=s == "heldout"), gr.update(visible=s == "upload"),
                              gr.update(visible=s == "drawing")), chooser, [slider, upload, box], queue=False,
                   api_visibility="private")
    return chooser, slider, upload, drawing


def class_inputs(tr: Translator, section: str, digit: str, defaults: Any) -> tuple:
    """The class to draw (or any), guidance, number of fills and seed: ``(digit, guidance, fills, seed)``."""
    choices = [(tr("applications.class_any"), "any")] + [(str(d), str(d)) for d in range(10)]
    return (gr.Dropdown(choices, value=digit, label=tr("applications.param.digit"), info=tr("applications.digit_info"),
                        allow_custom_value=True, elem_id=f"{section}-digit"),  # the core words a bad one
            gr.Slider(*LIMITS["guidance_scale"], value=defaults.guidance_scale, step=0.5,
                      label=tr("param.guidance_scale"), elem_id=f"{section}-guidance"),
            gr.Slider(*LIMITS["fills"], value=defaults.fills, step=1, label=tr("param.fills"),
                      elem_id=f"{section}-fills"),
            gr.Number(defaults.seed, precision=0, label=tr("param.seed"), elem_id=f"{section}-seed"))


def run_buttons(tr: Translator, section: str) -> tuple[gr.Button, gr.Button]:
    """The section's Start and Stop buttons."""
    with gr.Row():
        return (gr.Button(tr("applications.restore.run"), variant="primary", elem_id=f"{section}-run"),
                gr.Button(tr("applications.restore.stop"), variant="stop", elem_id=f"{section}-stop"))


def result_widgets(tr: Translator, section: str, steps: int) -> dict[str, Any]:
    """The step slider (off until a run is kept) and the gallery of results."""
    return dict(scrub=gr.Slider(1, steps, value=1, step=1, label=tr("applications.restore.scrub"),
                                info=tr("applications.restore.scrub_info"), interactive=False,
                                elem_id=f"{section}-scrub"),
                gallery=gr.Gallery(label=tr(f"applications.{section}.gallery"), columns=8, height=200, format="png",
                                   object_fit="contain", elem_id=f"{section}-gallery",
                                   elem_classes=["dl-pixelated"]))
