"""Point sets a student makes: the strokes of a drawing, or the glyphs of a text.

Both are mapped into the lesson's coordinate box ``[-BOX, BOX]²`` with the y axis up
(canvas and image rows run downwards, so y is flipped), the longer side of the shape
(or of the canvas) spanning the box. The model standardises them again
(:mod:`~diffusion.lessons.lab2d.data`), so the box only fixes the plotted units.

* :func:`from_strokes`: points uniformly along the polylines (by arc length), plus
  Gaussian jitter of std :data:`STROKE_JITTER`; a single-point stroke (a dot) counts as
  a short piece of line, so dots get points too.
* :func:`from_text`: the text rendered with an installed TrueType font through Pillow
  (a CJK font first, so ``"扩散"`` works where one is installed), then points drawn
  uniformly over the inked pixels, each spread uniformly over its pixel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffusion.errors import InputError
from diffusion.lessons.lab2d.config import LIMITS

BOX = 2.0
STROKE_JITTER = 0.04        # std of the jitter around a stroke, in box units
MAX_STROKES = 256
MAX_VERTICES = 20_000
TEXT_PIXELS = 160           # font size of the rendering that points are drawn from
# Fonts tried in order; the first that has every character of the text draws it.
FONT_FILES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
)
_MISSING = "\U0010ffff"     # a noncharacter: every font draws its "missing glyph" box for it


@functools.lru_cache(maxsize=1)
def installed_fonts() -> tuple[Any, ...]:
    """The Pillow fonts this machine has, from :data:`FONT_FILES`, then Pillow's own default."""
    fonts = [ImageFont.truetype(path, TEXT_PIXELS) for path in FONT_FILES if Path(path).is_file()]
    fonts.append(ImageFont.load_default(size=TEXT_PIXELS))
    return tuple(fonts)


def cjk_text_supported() -> bool:
    """Whether a font here can draw simplified Chinese (tests and the UI's example use it)."""
    return _font_for("扩散") is not None


def _mask(font: Any, text: str) -> np.ndarray:
    return np.asarray(font.getmask(text, mode="L"))


def _has_glyph(font: Any, char: str) -> bool:
    missing = _mask(font, _MISSING)
    mask = _mask(font, char)
    return mask.shape != missing.shape or not np.array_equal(mask, missing)


def _font_for(text: str) -> Any | None:
    chars = {c for c in text if not c.isspace()}
    for font in installed_fonts():
        if all(_has_glyph(font, c) for c in chars):
            return font
    return None


def render_text(text: str) -> np.ndarray:
    """The text drawn in white on black: ``bool (H, W)`` of the inked pixels.

    Raises:
        InputError: ``text_missing_glyph`` when no installed font has every character.
    """
    font = _font_for(text)
    if font is None:
        raise InputError("text_missing_glyph",
                         "No font on the server can draw every character of {text!r}.", text=text)
    left, top, right, bottom = font.getbbox(text)
    pad = 4
    image = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, fill=255, font=font)
    return np.asarray(image) >= 128


def check_text(text: Any) -> str:
    """The stripped text if it has 1..12 characters; else ``InputError``.

    Raises:
        InputError: ``text_not_string``, ``text_empty`` or ``text_too_long``.
    """
    if not isinstance(text, str):
        raise InputError("text_not_string", "The text must be a string.")
    text = " ".join(text.split())
    lo, hi = LIMITS["text_length"]
    if len(text) < lo:
        raise InputError("text_empty", "Type a word to turn into points.")
    if len(text) > hi:
        raise InputError("text_too_long", "The text may have at most {limit} characters (got {count}).",
                         limit=hi, count=len(text))
    return text


def _to_box(rows_cols: np.ndarray, height: float, width: float) -> np.ndarray:
    # (row, col) pixel positions → box coordinates, longer side spanning [-BOX, BOX], y up.
    size = max(height, width)
    x = (rows_cols[:, 1] - width / 2.0) / size * 2.0 * BOX
    y = (height / 2.0 - rows_cols[:, 0]) / size * 2.0 * BOX
    return np.stack([x, y], axis=1)


def from_text(text: str, n: int, seed: int) -> np.ndarray:
    """``n`` points spread uniformly over the glyphs of ``text``.

    Args:
        text: 1 to 12 characters (runs of white space count as one space).
        n: Number of points.
        seed: Seed of the ``numpy.random.Generator`` that places them.

    Returns:
        float32 ``(n, 2)`` in the box ``[-BOX, BOX]²``, y up, centred on the ink.

    Raises:
        InputError: ``text_*`` codes of :func:`check_text` and :func:`render_text`;
            ``text_no_ink`` when the glyphs draw nothing.
    """
    text = check_text(text)
    ink = render_text(text)
    rows, cols = np.nonzero(ink)
    if rows.size == 0:
        raise InputError("text_no_ink", "The text {text!r} draws no visible pixels.", text=text)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, rows.size, size=n)
    pixel = np.stack([rows[pick], cols[pick]], axis=1) + rng.uniform(0.0, 1.0, size=(n, 2))
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    pixel -= np.array([top, left], dtype=np.float64)
    return _to_box(pixel, float(bottom - top), float(right - left)).astype(np.float32)


def check_strokes(strokes: Any) -> list[np.ndarray]:
    """The strokes as float64 ``(k, 2)`` arrays of pixel positions, or ``InputError``.

    Raises:
        InputError: ``drawing_empty`` (no point at all), ``drawing_bad`` (not a list of
            lists of ``[x, y]`` finite numbers), ``drawing_too_big`` (over 256 strokes or
            20,000 points).
    """
    if strokes is None or isinstance(strokes, (str, bytes)) or not isinstance(strokes, Sequence):
        raise InputError("drawing_bad", "A drawing must be a list of strokes, each a list of [x, y] points.")
    if len(strokes) > MAX_STROKES:
        raise InputError("drawing_too_big", "A drawing may have at most {limit} strokes.", limit=MAX_STROKES)
    arrays, total = [], 0
    for stroke in strokes:
        try:
            array = np.asarray(stroke, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError("drawing_bad", "Every point of a stroke must be two numbers [x, y].") from None
        if array.size == 0:
            continue
        if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
            raise InputError("drawing_bad", "Every point of a stroke must be two numbers [x, y].")
        total += len(array)
        if total > MAX_VERTICES:
            raise InputError("drawing_too_big", "A drawing may have at most {limit} points.", limit=MAX_VERTICES)
        arrays.append(array)
    if not arrays:
        raise InputError("drawing_empty", "Draw something on the canvas first.")
    return arrays


def from_strokes(strokes: Sequence[Sequence[Sequence[float]]], n: int, seed: int,
                 canvas_size: tuple[int, int] | None = None) -> np.ndarray:
    """``n`` points along the polylines of a drawing, with a little jitter.

    Args:
        strokes: Polylines, each a list of ``[x, y]`` in canvas pixels (y pointing down).
        n: Number of points.
        seed: Seed of the ``numpy.random.Generator`` that places them.
        canvas_size: ``(width, height)`` of the canvas: the canvas is mapped onto the box,
            so a shape drawn in a corner stays there. ``None``: the drawing's own bounding
            box is mapped onto the box instead.

    Returns:
        float32 ``(n, 2)`` in the box ``[-BOX, BOX]²`` (before jitter), y up.

    Raises:
        InputError: The codes of :func:`check_strokes`; ``drawing_bad`` for a bad canvas size.
    """
    arrays = check_strokes(strokes)
    everything = np.concatenate(arrays)
    if canvas_size is None:
        low = everything.min(axis=0)
        extent = np.maximum(everything.max(axis=0) - low, 1e-9)
    else:
        try:
            width, height = (float(v) for v in canvas_size)
        except (TypeError, ValueError):
            raise InputError("drawing_bad", "The canvas size must be two numbers (width, height).") from None
        if not (1 <= width <= 10_000 and 1 <= height <= 10_000):
            raise InputError("drawing_bad", "The canvas size must be two numbers (width, height).")
        low, extent = np.zeros(2), np.array([width, height])
    # In box units a pixel is 2·BOX / (longer side); a dot stands for a piece of line
    # four jitter widths long, so it gets about as many points as a short dash.
    box_per_pixel = 2.0 * BOX / float(max(extent))
    dot_length = 4.0 * STROKE_JITTER / box_per_pixel
    starts, vectors, lengths = [], [], []
    for array in arrays:
        if len(array) == 1:
            starts.append(array[0])
            vectors.append(np.zeros(2))
            lengths.append(dot_length)
            continue
        seg = np.diff(array, axis=0)
        starts.extend(array[:-1])
        vectors.extend(seg)
        lengths.extend(np.hypot(seg[:, 0], seg[:, 1]))
    lengths_array = np.asarray(lengths)
    if not lengths_array.sum() > 0:  # only repeated vertices: treat every stroke as a dot
        lengths_array = np.ones_like(lengths_array)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(lengths_array), size=n, p=lengths_array / lengths_array.sum())
    u = rng.uniform(0.0, 1.0, size=(n, 1))
    pixels = np.asarray(starts)[pick] + u * np.asarray(vectors)[pick] - low
    rows_cols = pixels[:, ::-1]
    points = _to_box(rows_cols, float(extent[1]), float(extent[0]))
    points += rng.normal(0.0, STROKE_JITTER, size=(n, 2))
    return points.astype(np.float32)
