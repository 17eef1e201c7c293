"""Lesson 7: what diffusion models are used for, each claim measured with lesson 4's digit model.

Four sections, one module each: anomaly detection (:mod:`.anomaly`), data augmentation
(:mod:`.augment`), inpainting (:mod:`.inpaint`) and super-resolution (:mod:`.superres`).
"""
