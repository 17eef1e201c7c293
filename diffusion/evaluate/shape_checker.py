"""An independent reader of simple scenes: which colour, shape, size and place?

It grades lesson 6's text-to-image model. On purpose it shares no code and no
weights with the generator (:mod:`diffusion.datasets.shapes`): it knows only what the
words mean. Colours are read from hue, saturation and value (HSV) with fixed
ranges; the figure is the connected region that differs from the background,
measured with scikit-image's ``regionprops``:

* shape from *solidity* (area / convex-hull area: a star is far from convex)
  and *extent* (area / bounding-box area: square ≈ 1, circle ≈ π/4, triangle ≈ ½);
* size from the bounding box's longer side;
* position from the bounding box's centre, to the nearest of five places.

It never looks at a caption; the evaluation compares its reading with the prompt.
"""

from __future__ import annotations

import colorsys

import numpy as np
from skimage import measure, morphology

# Hue ranges in degrees for the saturated colours; grey levels by value.
HUES = (("red", 0, 15), ("orange", 15, 40), ("yellow", 40, 75), ("green", 75, 170),
        ("blue", 170, 262), ("purple", 262, 330), ("red", 330, 360))
PLACES = {"top left": (0.28, 0.28), "top right": (0.72, 0.28), "center": (0.5, 0.5),
          "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72)}
LARGE_SIDE = 0.3  # bounding-box side / image side above which a figure counts as large


def _without_small_specks(mask: np.ndarray, max_size: int) -> np.ndarray:
    """``mask`` without its 4-connected pieces of at most ``max_size`` pixels.

    What ``skimage.morphology.remove_small_objects(mask, max_size=...)`` does from
    scikit-image 0.26 on; written out because older releases (the newest one for Python
    3.10, as on ZeroGPU) only know the older ``min_size`` spelling.
    """
    labels = measure.label(mask, connectivity=1)
    keep = np.bincount(labels.ravel()) > max_size
    keep[0] = False
    return keep[labels]


def colour_name(rgb: np.ndarray) -> str:
    """The colour word for one RGB triple (0–255)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255.0 for c in rgb))
    if v < 0.25:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "gray"
    degrees = h * 360.0
    return next(name for name, lo, hi in HUES if lo <= degrees < hi)


def read_scene(image: np.ndarray) -> dict[str, str | None]:
    """Read one ``(H, W, 3)`` uint8 picture; ``None`` for what cannot be made out.

    Returns:
        ``{"colour", "shape", "size", "position", "background"}``.
    """
    image = np.asarray(image, dtype=np.float32)
    side = image.shape[0]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    distance = np.linalg.norm(image - background, axis=-1)
    mask = _without_small_specks(distance > 60.0, max_size=max(4, side * side // 400))
    result: dict[str, str | None] = {"background": colour_name(background), "colour": None,
                                     "shape": None, "size": None, "position": None}
    labels = measure.label(mask)
    regions = measure.regionprops(labels)
    if not regions:
        return result
    region = max(regions, key=lambda r: r.area)
    core = morphology.erosion(labels == region.label)  # edge pixels blend with the background
    pixels = image[core] if core.sum() >= 4 else image[labels == region.label]
    result["colour"] = colour_name(np.median(pixels, axis=0))
    if region.solidity < 0.8:
        result["shape"] = "star"
    elif region.extent > 0.88:
        result["shape"] = "square"
    elif region.extent > 0.66:
        result["shape"] = "circle"
    else:
        result["shape"] = "triangle"
    top, left, bottom, right = region.bbox
    result["size"] = "large" if max(bottom - top, right - left) / side > LARGE_SIDE else "small"
    cx, cy = (left + right) / 2 / side, (top + bottom) / 2 / side
    result["position"] = min(PLACES, key=lambda p: (PLACES[p][0] - cx) ** 2 + (PLACES[p][1] - cy) ** 2)
    return result
