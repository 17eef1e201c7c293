"""Procedural captioned scenes for lesson 6's own text-to-image model.

A scene is one filled shape on a plain background, drawn with Pillow and
described by a caption built from a small vocabulary::

    "a small red triangle at the top left on a white background"

Everything is generated from a seed, so ``python -m diffusion.train text2image``
can rebuild its data set exactly, and the evaluation can draw fresh scenes and
captions the model never saw.

Held-out combinations: :data:`HELDOUT_COLOUR_SHAPE` and
:data:`HELDOUT_SHAPE_POSITION` are pairings that never occur together in the
training scenes (each word on its own is seen plenty). Prompting them tests
whether the model composes words instead of memorising whole captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # drawn 4× larger, then box-filtered down: smooth, anti-aliased edges

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "orange": (245, 140, 20), "yellow": (240, 215, 30),
    "green": (40, 170, 60), "blue": (35, 80, 220), "purple": (140, 50, 190),
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 8.0, "large": 14.0}  # radius of the shape's bounding circle, pixels at 64×64
POSITIONS: dict[str, tuple[float, float]] = {  # centre (x, y) as fractions of the image side
    "top left": (0.28, 0.28), "top right": (0.72, 0.28), "center": (0.5, 0.5),
    "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72),
}
POSITION_PHRASES = {"top left": "at the top left", "top right": "at the top right", "center": "in the center",
                    "bottom left": "at the bottom left", "bottom right": "at the bottom right"}
SYNONYMS = {"grey": "gray", "centre": "center", "middle": "center"}  # accepted in prompts
FILLER = ("a", "an", "at", "the", "in", "on", "background")

# Pairings never drawn during training (see the module docstring).
HELDOUT_COLOUR_SHAPE = frozenset({
    ("red", "star"), ("orange", "circle"), ("yellow", "square"), ("green", "triangle"), ("blue", "star"),
    ("purple", "circle"), ("white", "square"), ("black", "triangle"), ("gray", "circle"),
})
HELDOUT_SHAPE_POSITION = frozenset({
    ("circle", "top left"), ("square", "bottom right"), ("triangle", "center"), ("star", "top right"),
})
ATTRIBUTES = ("colour", "shape", "size", "position", "background")


@dataclass(frozen=True)
class Scene:
    """What one picture shows; :func:`render` draws it and :func:`caption` describes it."""

    colour: str
    shape: str
    size: str
    position: str
    background: str
    dx: float = 0.0      # small random offsets (pixels) and scale, so no two scenes are identical
    dy: float = 0.0
    scale: float = 1.0

    @property
    def heldout(self) -> bool:
        """Whether the scene contains a pairing kept out of training."""
        return ((self.colour, self.shape) in HELDOUT_COLOUR_SHAPE
                or (self.shape, self.position) in HELDOUT_SHAPE_POSITION)

    def attributes(self) -> dict[str, str]:
        return {"colour": self.colour, "shape": self.shape, "size": self.size,
                "position": self.position, "background": self.background}


def vocabulary() -> list[str]:
    """Every word a caption can contain, plus the accepted synonyms."""
    words = set(FILLER) | set(COLOURS) | set(SHAPES) | set(SIZES) | set(SYNONYMS)
    for phrase in POSITION_PHRASES.values():
        words.update(phrase.split())
    return sorted(words)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r / math.sqrt(2) * 1.25  # a little larger than inscribed: similar area to the circle
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # pointing up, centred on its bounding box
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":  # five points, inner radius 0.45 r
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else 0.45 * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle) + 0.1 * r))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Draw ``scene`` as a ``(size, size, 3)`` uint8 RGB array."""
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    k = big / IMAGE_SIZE
    cx, cy = (fx * IMAGE_SIZE + scene.dx) * k, (fy * IMAGE_SIZE + scene.dy) * k
    r = SIZES[scene.size] * scene.scale * k
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=COLOURS[scene.colour])
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=COLOURS[scene.colour])
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def caption(scene: Scene, rng: np.random.Generator | None = None, drop: float = 0.0) -> str:
    """The caption of ``scene``; with ``rng``, size, position and background are each left out with ``drop``.

    Leaving words out teaches the model what a shorter prompt ("a red circle") means:
    whatever it does not say is free to vary.
    """
    def keep() -> bool:
        return rng is None or rng.random() >= drop

    words = [scene.size] if keep() else []
    words += [scene.colour, scene.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    text = " ".join([article, *words])
    if keep():
        text += " " + POSITION_PHRASES[scene.position]
    if keep():
        text += f" on {'an' if scene.background[0] in 'aeiou' else 'a'} {scene.background} background"
    return text


def random_scene(rng: np.random.Generator, heldout: bool | None = False) -> Scene:
    """A random scene; ``heldout=False`` avoids the held-out pairings, True requires one, None ignores them."""
    while True:
        colour = str(rng.choice(list(COLOURS)))
        background = str(rng.choice([c for c in COLOURS if c != colour]))
        scene = Scene(colour=colour, shape=str(rng.choice(SHAPES)), size=str(rng.choice(list(SIZES))),
                      position=str(rng.choice(list(POSITIONS))), background=background,
                      dx=float(rng.uniform(-2, 2)), dy=float(rng.uniform(-2, 2)),
                      scale=float(rng.uniform(0.9, 1.1)))
        if heldout is None or scene.heldout == heldout:
            return scene


def dataset(n: int, seed: int, heldout: bool | None = False, size: int = IMAGE_SIZE
            ) -> tuple[np.ndarray, list[Scene]]:
    """``n`` rendered scenes ``(n, size, size, 3)`` uint8 and their descriptions, all from ``seed``."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, heldout) for _ in range(n)]
    return np.stack([render(s, size) for s in scenes]), scenes
