"""Lesson 5: text to image through a diffusers pipeline, every step on record."""
