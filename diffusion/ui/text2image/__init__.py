"""Lesson 6 tab: text to image through a diffusers pipeline, and what happens inside a run.

The main section (:mod:`.run`) generates, streams and scrubs one run. Below it, one
sub-tab per way of looking inside, in the order of :data:`SECTIONS`: two prompts from the
same noise and a guidance sweep (:mod:`.compare`), the attention per word and the latent's
path of the run shown above (:mod:`.inside`). The lesson's math lives in
:mod:`diffusion.lessons.text2image`.
"""

from __future__ import annotations

import gradio as gr

from diffusion.ui.i18n import Translator
from diffusion.ui.settings import AppSettings
from diffusion.ui.text2image import compare, inside
from diffusion.ui.text2image.run import RUNS, TextToImageHandlers, build_generate

SECTIONS = ("compare", "sweep", "attention", "path")


def build(tr: Translator, settings: AppSettings, demo: gr.Blocks) -> None:
    """The main section, then one sub-tab per section of :data:`SECTIONS`."""
    main = build_generate(tr, settings, demo)
    many = compare.ManyRunHandlers(main["handlers"])
    looking = inside.InsideHandlers(many)
    with gr.Tabs(elem_id="t2i-sections"):
        with gr.Tab(tr("text2image.section_compare"), id="t2i-compare", elem_id="t2i-section-compare"):
            compare.build_compare(tr, settings, main, many)
        with gr.Tab(tr("text2image.section_sweep"), id="t2i-sweep", elem_id="t2i-section-sweep"):
            compare.build_sweep(tr, settings, main, many)
        with gr.Tab(tr("text2image.section_attention"), id="t2i-attention", elem_id="t2i-section-attention"):
            inside.build_attention(tr, settings, main, looking)
        with gr.Tab(tr("text2image.section_path"), id="t2i-path", elem_id="t2i-section-path"):
            inside.build_path(tr, settings, main, looking)


__all__ = ["RUNS", "SECTIONS", "TextToImageHandlers", "build"]
