"""Evaluation CLIs: ``python -m diffusion.evaluate mnist|denoise|text2image ...``."""
