"""Benchmarks: ``python -m diffusion.bench heat|noising|sampling|denoise|text2image|load ...``."""
