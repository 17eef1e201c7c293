"""Lesson 4: a diffusion model as a denoiser, side by side with the classical methods."""
