"""Lesson 3: sampling the shipped digit model with DDPM, DDIM and other diffusers schedulers."""
