"""Run lifecycle shared by every model tab: live runs, stop, bounded stores, caches, drawing processes.

No gradio here: the tabs in :mod:`diffusion.ui` turn what this layer streams into widgets.
"""
