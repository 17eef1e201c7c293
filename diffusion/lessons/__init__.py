"""The lessons: one package per lesson, each with its math and its figures (numpy, torch, diffusers).

Nothing here imports gradio: every function works in a notebook. The tab that shows a
lesson lives in :mod:`diffusion.ui`, and the run plumbing it shares with other tabs in
:mod:`diffusion.serving`.
"""
