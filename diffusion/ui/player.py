"""A browser-side frame player: pictures of a process sent once, played and scrubbed there.

A process that unfolds in time (heat spreading, an image being noised, a sampler's
steps) is computed on the server; :func:`pack_frames` turns its pictures at a few dozen
moments into one JSON value (PNG data URLs and a caption per moment), and
:func:`frame_player` shows it with Play/Pause and its own slider. Moving that slider
costs no request: every frame is already in the browser.

The value is capped (:data:`MAX_PLAYER_BYTES`): when the pictures do not fit, evenly
spaced moments are left out (always keeping the first, the last and the starting one),
so a classroom's page never receives more than a few MB per player. Every picture shown
is a real computed one, encoded losslessly.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from diffusion.ui.canvas import STATIC
from diffusion.ui.i18n import Translator

MAX_PLAYER_BYTES = 3_000_000  # characters of JSON; about 2.2 MB of PNG once base64 is undone
MAX_FRAMES = 120
MAX_PANELS = 4
MAX_SIDE = 1024  # pixels, each side of each frame
MAX_TEXT = 300   # characters of a title, caption or note

_TEMPLATE = """
<div class="dl-frames">
  <div class="dl-frames-panels"></div>
  <div class="dl-frames-controls">
    <button type="button" class="dl-frames-play" disabled
            data-play-en="${play_en}" data-play-zh="${play_zh}"
            data-pause-en="${pause_en}" data-pause-zh="${pause_zh}">${play_en}</button>
    <input type="range" min="0" max="0" value="0" step="1" disabled
           data-en="${slider_en}" data-zh="${slider_zh}" aria-label="${slider_en}">
  </div>
  <div class="dl-frames-caption" aria-live="polite"></div>
  <div class="dl-frames-note"></div>
</div>
"""
_CSS = """
.dl-frames-panels { display: flex; flex-wrap: wrap; gap: 0.6em; }
.dl-frames-panels figure { margin: 0; flex: 1 1 240px; }
.dl-frames-panels figcaption { font-weight: 600; margin-bottom: 0.2em; }
.dl-frames-panels figcaption:empty { display: none; }
.dl-frames-panels img { width: 100%; max-width: var(--dl-frame-width, 640px); height: auto; display: block;
                        border: 1px solid #d4d4d8; border-radius: 4px; }
.dl-frames-panels img.dl-pixelated { image-rendering: pixelated; }
.dl-frames-controls { display: flex; align-items: center; gap: 0.8em; margin-top: 0.4em; }
.dl-frames-controls input { flex: 1; }
.dl-frames-controls button { min-width: 6em; padding: 0.25em 0.9em; border-radius: 4px; border: 1px solid #a1a1aa; }
.dl-frames-caption { font-variant-numeric: tabular-nums; margin-top: 0.3em; }
.dl-frames-note { font-size: 0.85em; opacity: 0.8; margin-top: 0.2em; }
"""


def frame_player(tr: Translator, elem_id: str, slider_key: str, play_key: str = "player.play",
                 pause_key: str = "player.pause") -> gr.HTML:
    """An empty frame player; give it a :func:`pack_frames` value as an event's output.

    The button and the slider's accessible name carry both languages (gr.HTML's template
    props are plain text, not translated labels) and the script shows the page's one,
    also after a language switch.

    Args:
        tr: The app's strings.
        elem_id: The component's id, for tests and styling.
        slider_key: The string key naming the player's slider (e.g. ``heat.player_slider``).
        play_key: The string key of the Play button.
        pause_key: The string key of the Pause button.

    Returns:
        The ``gr.HTML`` component.
    """
    script = (STATIC / "localize.js").read_text(encoding="utf-8") + \
        (STATIC / "frame_player.js").read_text(encoding="utf-8")
    both = {f"{name}_{code}": tr.text(key, lang) for name, key in
            (("play", play_key), ("pause", pause_key), ("slider", slider_key))
            for code, lang in (("en", "en"), ("zh", "zh-CN"))}
    return gr.HTML(value="", html_template=_TEMPLATE, css_template=_CSS, js_on_load=script,
                   elem_id=elem_id, apply_default_css=False, **both)


def png_data_url(frame: np.ndarray) -> str:
    """A uint8 picture ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` as a PNG data URL (lossless)."""
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _check_frame(frame: Any) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise ValueError(f"player frames must be uint8 pictures, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"player frames must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    if not (0 < array.shape[0] <= MAX_SIDE and 0 < array.shape[1] <= MAX_SIDE):
        raise ValueError(f"player frames must be 1..{MAX_SIDE} pixels a side, got {array.shape[:2]}")
    return np.ascontiguousarray(array)


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ValueError(f"a player {what} must be text of at most {MAX_TEXT} characters")
    return text


def _spread(n_frames: int, keep: int, must: Sequence[int]) -> list[int]:
    """``keep`` evenly spaced indices of ``range(n_frames)``, plus those in ``must``."""
    picks = {int(round(v)) for v in np.linspace(0, n_frames - 1, max(keep, 2))}
    return sorted(picks | set(must))


def pack_frames(panels: Sequence[tuple[str, Sequence[np.ndarray]]], captions: Sequence[str], *,
                start: int | None = None, fps: int = 8, note: str | Callable[[int], str] = "",
                pixelated: bool = False, max_bytes: int = MAX_PLAYER_BYTES) -> str:
    """The value of a :func:`frame_player`: every panel's pictures and one caption per moment.

    Args:
        panels: ``(title, frames)`` per panel (1..:data:`MAX_PANELS`), each with one uint8
            picture per moment; an empty title shows none (the picture may hold its own).
        captions: One line per moment, shown under the pictures (the real numbers of that
            moment: its time, its coefficients).
        start: The moment shown first; the last one by default.
        fps: Moments per second while playing, 1..30.
        note: One line shown under the caption, e.g. how the pictures were shrunk; or a
            function of the number of moments kept (after the byte cap) that gives it.
        pixelated: Scale the pictures up without smoothing (each pixel a sharp square),
            for small pictures where every pixel is a value.
        max_bytes: Cap on the JSON's length; moments are left out evenly until it fits.

    Returns:
        Compact JSON ``{"panels": [{"title", "frames"}], "captions", "start", "fps", "note",
        "pixelated", "width"}``; ``width`` is the pictures' width in pixels.

    Raises:
        ValueError: Malformed input (sizes, types, counts, lengths), or not even the first
            and last moments fit in ``max_bytes``.
    """
    if not 1 <= len(panels) <= MAX_PANELS:
        raise ValueError(f"a player shows 1..{MAX_PANELS} panels, got {len(panels)}")
    captions = [_check_text(c, "caption") for c in captions]
    n = len(captions)
    if not 1 <= n <= MAX_FRAMES:
        raise ValueError(f"a player plays 1..{MAX_FRAMES} moments, got {n}")
    titles = [_check_text(title, "title") for title, _ in panels]
    if any(len(frames) != n for _, frames in panels):
        raise ValueError("every panel needs one picture per caption")
    start = n - 1 if start is None else int(start)
    if not 0 <= start < n:
        raise ValueError(f"start must be a moment of the player (0..{n - 1}), got {start}")
    if not 1 <= int(fps) <= 30:
        raise ValueError(f"fps must be 1..30, got {fps}")
    checked = [[_check_frame(f) for f in frames] for _, frames in panels]
    urls = [[png_data_url(f) for f in frames] for frames in checked]
    width = max(f.shape[1] for frames in checked for f in frames)
    keep = n
    while True:
        picks = _spread(n, keep, [start, n - 1]) if keep < n else list(range(n))
        line = note(len(picks)) if callable(note) else note
        value = json.dumps({
            "panels": [{"title": t, "frames": [u[i] for i in picks]} for t, u in zip(titles, urls)],
            "captions": [captions[i] for i in picks], "start": picks.index(start), "fps": int(fps),
            "note": _check_text(line, "note"), "pixelated": bool(pixelated), "width": int(width),
        }, ensure_ascii=False, separators=(",", ":"))
        if len(value) <= max_bytes:
            return value
        if keep <= 2:
            raise ValueError(f"the player's pictures do not fit in {max_bytes} characters")
        # Aim at the budget from this try's average cost of a moment; step down while still over.
        keep = max(2, min(keep - 1, int(keep * max_bytes / len(value))))

