"""Lesson 7 tab: what diffusion models are used for, each claim tested with lesson 4's digit model.

One sub-tab per section, each built by its own function (``build(tr, settings, demo)``),
in the order of :data:`SECTIONS`; the lesson's math lives in :mod:`diffusion.lessons.applications`.
"""

from __future__ import annotations

import gradio as gr

from diffusion.ui.applications import anomaly, augment, restore
from diffusion.ui.i18n import Translator
from diffusion.ui.settings import AppSettings
from diffusion.ui.widgets import LATEX

# (name, build function) pairs, in the order shown; each section's strings are ``applications.<name>.*``.
SECTIONS = (
    ("anomaly", anomaly.build_anomaly),
    ("augment", augment.build_augment),
    ("inpaint", restore.build_inpaint),
    ("superres", restore.build_super_resolve),
)


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """The lesson's introduction, then one sub-tab per section."""
    gr.Markdown(tr("applications.intro"), latex_delimiters=LATEX)
    with gr.Tabs(elem_id="applications-sections"):
        for name, build_section in SECTIONS:
            with gr.Tab(tr(f"applications.{name}.tab"), id=f"applications-{name}", elem_id=f"applications-{name}"):
                build_section(tr, settings, demo)
