"""Diffusion Lab core library.

Plain numpy / torch / diffusers code behind the lessons. Nothing in this package
imports gradio, so every function can be used from a notebook or a script.
"""

__version__ = "0.1.0"
