"""Training CLIs: ``python -m diffusion.train mnist|denoiser|text2image ...``."""
