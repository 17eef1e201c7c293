"""Gradio user interface: the only package that imports gradio.

- one module per lesson tab (``heat``, ``noising``, ``sampling``, ``denoising``, ``text2image``),
  each with ``build(tr, settings, demo)``, which lays out the tab and wires its events to
  handlers that live outside it and return ``{output name: value}`` (:mod:`.handlers`);
- :mod:`.i18n`: both languages, with the strings as data in ``locales/en.json`` and
  ``locales/zh-CN.json``; :mod:`.widgets`, :mod:`.settings`, and :mod:`.patches` (the one
  change to gradio's behaviour, applied explicitly by ``app.py``).
"""
