"""Figures of lesson 5: the zoomed comparison of every method on one crop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from diffusion.figures import merged_text, new_figure

DENOISE_TEXT = {
    "zoom_title": "Zoom: the same {size}×{size}-pixel crop of every image, enlarged without smoothing",
    "where": "Where the crop is",
}


def crop_box(shape: Sequence[int], center: tuple[float, float], size: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of a square crop of ``size`` pixels centred at fractions ``(fx, fy)``.

    The crop is shrunk to the image if it does not fit and moved inside it.
    """
    h, w = int(shape[0]), int(shape[1])
    side = int(max(1, min(size, h, w)))
    fx = float(np.clip(center[0], 0.0, 1.0))
    fy = float(np.clip(center[1], 0.0, 1.0))
    top = int(np.clip(round(fy * h - side / 2), 0, h - side))
    left = int(np.clip(round(fx * w - side / 2), 0, w - side))
    return top, left, side


def zoom_figure(context: np.ndarray, panels: Sequence[tuple[str, np.ndarray]], center: tuple[float, float],
                size: int = 64, text: Mapping[str, str] | None = None, columns: int = 4) -> Figure:
    """The full image with the crop marked, then the same crop of every panel.

    Args:
        context: uint8 ``(H, W, C)`` image shown whole with the crop outlined.
        panels: ``(title, uint8 image)`` pairs, all the size of ``context``.
        center: Crop centre as fractions of the width and height.
        size: Crop side in pixels.
        text: Translated strings of :data:`DENOISE_TEXT`.
        columns: Panels per row.
    """
    text = merged_text(DENOISE_TEXT, text)
    top, left, side = crop_box(context.shape, center, size)
    n = len(panels) + 1
    rows = -(-n // columns)
    fig = new_figure(2.6 * columns, 2.75 * rows + 0.35)
    fig.suptitle(text["zoom_title"].format(size=side), fontsize=10)
    grey = context.shape[2] == 1

    def show(ax, image):
        ax.imshow(image[:, :, 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    ax = fig.add_subplot(rows, columns, 1)
    show(ax, context)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="#ff3b30", linewidth=1.8))
    ax.set_title(text["where"], fontsize=9)
    for i, (title, image) in enumerate(panels, start=2):
        ax = fig.add_subplot(rows, columns, i)
        show(ax, image[top:top + side, left:left + side])
        ax.set_title(title, fontsize=9)
    return fig
