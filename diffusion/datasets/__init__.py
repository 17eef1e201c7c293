"""Data sets: digits, photo folders, procedural shapes and their captions."""
