"""Gradio user interface: one module per lesson tab, plus shared plumbing in ``common``.

Only this package and ``app.py`` import gradio. Each tab module exposes ``STRINGS``
(English and Chinese) and ``build(tr, settings)``, which creates the tab's widgets and
wires them to the core library.
"""
