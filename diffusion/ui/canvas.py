"""Two small browser-side widgets built on ``gr.HTML``: a drawing canvas and a points player.

Both ship their JavaScript in ``static/`` (nothing is loaded from a CDN: classrooms and
tests are offline) and keep their state in the component's value, a JSON string:

* :func:`stroke_canvas`: the strokes a student draws, ``{"strokes", "width", "height"}``
  in canvas pixels; an input like any other (the server validates it again).
* :func:`points_player`: particle trajectories sent once; Play and the slider step
  through them in the browser, without a request per frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from diffusion.ui.i18n import Translator

STATIC = Path(__file__).resolve().parent / "static"
MAX_CANVAS_JSON = 2_000_000  # characters; a drawing of the allowed 20,000 points is well under this

_CANVAS_TEMPLATE = """
<div class="dl-canvas">
  <canvas width="360" height="360" style="touch-action: none"></canvas>
  <button type="button" data-action="clear" class="dl-canvas-clear" data-en="${clear_en}" data-zh="${clear_zh}">${clear_en}</button>
</div>
"""
_CANVAS_CSS = """
.dl-canvas canvas { width: 100%; max-width: 360px; aspect-ratio: 1; border: 1px solid #a1a1aa;
                    border-radius: 6px; cursor: crosshair; background: #fff; display: block; }
.dl-canvas-clear { margin-top: 0.4em; padding: 0.2em 0.8em; border-radius: 4px; border: 1px solid #a1a1aa; }
"""
_PLAYER_TEMPLATE = """
<div class="dl-player">
  <div class="dl-player-panels"></div>
  <div class="dl-player-controls">
    <button type="button" disabled>▶</button>
    <input type="range" min="0" max="0" value="0" step="1" disabled data-en="${slider_en}" data-zh="${slider_zh}"
           aria-label="${slider_en}">
    <span class="dl-player-label"></span>
  </div>
</div>
"""
_PLAYER_CSS = """
.dl-player-panels { display: flex; flex-wrap: wrap; gap: 0.6em; }
.dl-player-panels figure { margin: 0; flex: 1 1 220px; max-width: 340px; }
.dl-player-panels figcaption { font-weight: 600; margin-bottom: 0.2em; }
.dl-player-panels canvas { width: 100%; aspect-ratio: 1; }
.dl-player-controls { display: flex; align-items: center; gap: 0.8em; margin-top: 0.4em; }
.dl-player-controls input { flex: 1; }
.dl-player-controls button { min-width: 5em; padding: 0.2em 0.8em; border-radius: 4px; border: 1px solid #a1a1aa; }
.dl-player-label { font-variant-numeric: tabular-nums; min-width: 7em; }
"""


def _script(name: str) -> str:
    # Every widget's script starts with the shared helper that shows its labels in the page's language.
    return (STATIC / "localize.js").read_text(encoding="utf-8") + (STATIC / name).read_text(encoding="utf-8")


def stroke_canvas(tr: Translator, clear_key: str, elem_id: str) -> gr.HTML:
    """A square drawing canvas; its value is the JSON of the strokes drawn so far.

    gr.HTML's template props are plain text, not translated labels, so the button carries
    both languages and the script shows the one the page is in.
    """
    return gr.HTML(value="", html_template=_CANVAS_TEMPLATE, css_template=_CANVAS_CSS,
                   js_on_load=_script("stroke_canvas.js"), clear_en=tr.text(clear_key, "en"),
                   clear_zh=tr.text(clear_key, "zh-CN"), elem_id=elem_id, apply_default_css=False)


def points_player(tr: Translator, slider_key: str, elem_id: str) -> gr.HTML:
    """Panels of moving points with Play and a step slider, all in the browser."""
    return gr.HTML(value="", html_template=_PLAYER_TEMPLATE, css_template=_PLAYER_CSS,
                   js_on_load=_script("points_player.js"), slider_en=tr.text(slider_key, "en"),
                   slider_zh=tr.text(slider_key, "zh-CN"), elem_id=elem_id, apply_default_css=False)


def read_strokes(value: Any) -> tuple[list | None, tuple[float, float] | None]:
    """The strokes and canvas size of a :func:`stroke_canvas` value; ``(None, None)`` for none.

    Anything malformed comes back as it is (inside the list) for the core's own checks to
    refuse with a clear message; an oversized value is refused here before parsing.
    """
    if not isinstance(value, str) or not value.strip():
        return None, None
    if len(value) > MAX_CANVAS_JSON:
        return [[["too", "big"]]], None  # refused by the core's drawing checks
    try:
        data = json.loads(value)
    except ValueError:
        return [[["bad"]]], None
    if not isinstance(data, dict):
        return [[["bad"]]], None
    strokes = data.get("strokes")
    size = data.get("width"), data.get("height")
    return (strokes or None), (size if all(isinstance(v, (int, float)) for v in size) else None)


def player_value(panels: list[dict[str, Any]], labels: list[str], background: np.ndarray, extent: list[float],
                 play: str, pause: str, fps: int = 12) -> str:
    """The JSON a :func:`points_player` plays: coordinates rounded to 3 decimals to keep it small."""
    def flat(points: np.ndarray) -> list[float]:
        return np.round(np.asarray(points, dtype=np.float64).reshape(-1), 3).tolist()

    return json.dumps({
        "panels": [{"title": p["title"], "color": p["color"], "frames": [flat(f) for f in p["frames"]]}
                   for p in panels],
        "labels": labels, "background": flat(background), "extent": [round(float(v), 3) for v in extent],
        "play": play, "pause": pause, "fps": fps,
    }, separators=(",", ":"))
