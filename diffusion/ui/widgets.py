"""Small widgets and formatting shared by the tabs: uploads, progress bars, plots, notices."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from diffusion.ui.i18n import Translator

LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]


def progress_html(fraction: float, text: str) -> str:
    """A progress bar with a line of text under it (the text is escaped)."""
    percent = max(0.0, min(100.0, 100.0 * fraction))
    return (f'<div class="dl-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{percent:.0f}"><div class="dl-progress-bar" style="width: {percent:.1f}%"></div></div>'
            f'<div class="dl-progress-text">{html.escape(text)}</div>')

def waiting_html(tr: Any, lang: str, waiting: Any) -> str:
    """The queue notice: a student's place and the estimated wait (a :class:`~diffusion.serving.jobs.Waiting`)."""
    return progress_html(0.0, tr.text("queue.waiting", lang, place=waiting.place, start=waiting.start_s,
                                      finish=waiting.finish_s))


def plot_picture(url: str) -> Any:
    """A PNG data URL (from :mod:`diffusion.serving.render_pool`) as the value of a ``gr.Plot``."""
    from gradio.components.plot import PlotData

    return PlotData(type="matplotlib", plot=url)



def unavailable_tab(tr: Translator, prefix: str) -> None:
    """Body of a lesson tab whose model has not landed: explanation plus a plain notice."""
    gr.Markdown(tr(f"{prefix}.intro"), latex_delimiters=LATEX)
    gr.Markdown(tr("unavailable"), elem_classes=["dl-notice"])



class ImageInput(gr.Image):
    """``gr.Image`` that passes an upload's cached file path to the core unopened.

    Gradio's own preprocessing opens the file with Pillow and fails with an
    untranslated, generic error on non-images. Here the core's loader does all the
    checks (size before decoding, truncation, modes) and reports them in the user's
    language. Only files gradio has already moved into its upload cache arrive here;
    inline ``data:`` URLs are not accepted and are reported as unreadable images.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        return str(payload.path) if payload.path else "(inline data is not accepted)"
