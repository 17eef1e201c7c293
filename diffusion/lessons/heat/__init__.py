"""Lesson 1: the heat equation, the physics behind the word *diffusion*."""
