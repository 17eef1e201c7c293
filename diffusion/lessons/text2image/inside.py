"""Looking inside lesson 6's runs: the latent's path across steps, and what guidance did.

**The latent's path.** A run visits one latent z_t per step (``C × h × w`` numbers: 256 for
the embedded model, 16,384 for Stable Diffusion at 512²). Principal component analysis
(Pearson 1901) finds the two directions in which the visited latents differ most; each
z_t is drawn at its coordinates there, coloured by step::

    Z = [z_T, …, z_1, ẑ_0] − mean,   Z = U S Vᵀ (SVD),   coordinates = Z V[:, :2]

and the share of variance each axis explains is S_k² / Σ S². Several runs (other seeds of
the same prompt) are projected together on one shared basis, so their paths can be seen
to start far apart (independent noise) and end near each other (pictures of one prompt).

**What guidance did.** Classifier-free guidance (Ho & Salimans 2022) extrapolates from the
unconditional prediction towards the conditional one, ε̃ = ε_∅ + w (ε_c − ε_∅). The sweep
measures, on each picture, what students can see change with w: colour saturation, contrast
and how far the picture moved from the previous w.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.figure import Figure

from diffusion.errors import InputError
from diffusion.figures import merged_text, new_figure
from diffusion.reverse import Trajectory

MAX_PATHS = 5  # runs drawn in one map (the run and up to four other seeds)


@dataclass(frozen=True)
class LatentPath:
    """Runs projected onto their two shared principal components.

    Attributes:
        points: One ``(steps + 1, 2)`` array per run: z_t of each step, then the last ẑ_0.
        explained: Share of the variance along each of the two axes (0–1).
        labels: One label per run (its seed).
    """

    points: list[np.ndarray]
    explained: tuple[float, float]
    labels: list[str]


def path_latents(run: Trajectory, picture: int = 0) -> np.ndarray:
    """The latents one picture of a recorded run visited: ``(steps + 1, C·h·w)`` float64.

    Raises:
        InputError: ``no_steps`` for a run without recorded steps; ``picture`` out of range.
    """
    if not len(run) or not run.recorded:
        raise InputError("no_steps", "This run has no recorded steps to draw.")
    batch = int(run.x_t.shape[1])
    if not 0 <= int(picture) < batch:
        raise InputError("out_of_range", "{name} must be between {lo} and {hi} (it is {value}).",
                         name="picture", lo=0, hi=batch - 1, value=picture)
    visited = torch.cat([run.x_t[:, picture], run.x0_pred[-1:, picture]]).double()
    return visited.reshape(visited.shape[0], -1).numpy()


def project(paths: Sequence[np.ndarray], labels: Sequence[str]) -> LatentPath:
    """Project several runs' latents onto the two principal components of all of them together.

    Args:
        paths: ``(n_i, D)`` arrays of the same D (from :func:`path_latents`); at most :data:`MAX_PATHS`.
        labels: One label per path.
    """
    if not paths or len(paths) > MAX_PATHS or len(labels) != len(paths):
        raise ValueError(f"between 1 and {MAX_PATHS} paths, one label each")
    stacked = np.concatenate(paths)
    centred = stacked - stacked.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:2].T
    if basis.shape[1] < 2:  # a single point: nothing varies
        basis = np.concatenate([basis, np.zeros((basis.shape[0], 2 - basis.shape[1]))], axis=1)
    # One sign convention (the largest loading positive) so the same runs always draw the same way.
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), [0, 1]])
    basis = basis * np.where(signs == 0, 1.0, signs)
    variance = s**2
    total = float(variance.sum()) or 1.0
    explained = tuple(float(v / total) for v in (list(variance[:2]) + [0.0, 0.0])[:2])
    coordinates = centred @ basis
    points, start = [], 0
    for path in paths:
        points.append(coordinates[start:start + len(path)])
        start += len(path)
    return LatentPath(points=points, explained=explained, labels=list(labels))


PATH_TEXT: dict[str, str] = {
    "title": "The latent's path, step by step (PCA of z_t)",
    "xlabel": "principal component 1 ({share:.0f} % of the variance)",
    "ylabel": "principal component 2 ({share:.0f} % of the variance)",
    "colorbar": "step (0 = pure noise z_T)",
    "start": "start: noise",
    "end": "end: ẑ₀",
    "run_label": "seed {label}",
}
_MARKERS = ("o", "s", "^", "D", "v")


def plot_path(path: LatentPath, text: Mapping[str, str] | None = None) -> Figure:
    """The projected runs as lines of points coloured by step, with their starts and ends marked.

    Args:
        path: From :func:`project`; the first run is drawn on top.
        text: Translations for keys of :data:`PATH_TEXT`.
    """
    tx = merged_text(PATH_TEXT, text)
    fig = new_figure(6.4, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    longest = max(len(p) for p in path.points)
    scatter = None
    for k in reversed(range(len(path.points))):
        points = path.points[k]
        steps = np.arange(len(points))
        ax.plot(points[:, 0], points[:, 1], color="0.6" if k else "0.25", linewidth=0.8, zorder=1)
        scatter = ax.scatter(points[:, 0], points[:, 1], c=steps, cmap="viridis", vmin=0, vmax=longest - 1,
                             s=26 if k == 0 else 14, marker=_MARKERS[k % len(_MARKERS)], zorder=2 + (k == 0),
                             edgecolors="black" if k == 0 else "none", linewidths=0.4,
                             label=tx["run_label"].format(label=path.labels[k]))
        ax.annotate(tx["start"] if k == 0 else "", points[0], textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.annotate(tx["end"] if k == 0 else "", points[-1], textcoords="offset points", xytext=(6, -12),
                    fontsize=8)
    ax.set_title(tx["title"], fontsize=11)
    ax.set_xlabel(tx["xlabel"].format(share=100 * path.explained[0]))
    ax.set_ylabel(tx["ylabel"].format(share=100 * path.explained[1]))
    ax.grid(alpha=0.3)
    if len(path.points) > 1:
        ax.legend(fontsize=8, loc="best")
    fig.colorbar(scatter, ax=ax, label=tx["colorbar"])
    return fig


@dataclass(frozen=True)
class GuidanceEffect:
    """What one guidance scale did to its picture, measured on the picture.

    Attributes:
        scale: The guidance scale w.
        saturation: Mean HSV saturation of the picture (0–1).
        contrast: Standard deviation of the luminance (0–1).
        change: Mean absolute difference from the previous scale's picture (0–1); None for the first.
    """

    scale: float
    saturation: float
    contrast: float
    change: float | None

    @property
    def regime(self) -> str:
        """Which kind of guidance this is: ``unconditional``, ``weak``, ``plain``, ``moderate``, ``strong``, ``extreme``."""
        w = self.scale
        if w == 0.0:
            return "unconditional"
        if w < 1.0:
            return "weak"
        if w == 1.0:
            return "plain"
        return "moderate" if w <= 4.0 else "strong" if w <= 10.0 else "extreme"


def guidance_effects(scales: Sequence[float], pictures: Sequence[np.ndarray]) -> list[GuidanceEffect]:
    """Measure each ``(H, W, 3)`` uint8 picture of a guidance sweep (same prompt, seed and noise)."""
    if len(scales) != len(pictures):
        raise ValueError("one picture per guidance scale")
    effects, previous = [], None
    for w, picture in zip(scales, pictures):
        rgb = np.asarray(picture, dtype=np.float64)[..., :3] / 255.0
        top, bottom = rgb.max(axis=-1), rgb.min(axis=-1)
        saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-12), 0.0)
        luminance = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
        change = None if previous is None else float(np.abs(rgb - previous).mean())
        effects.append(GuidanceEffect(float(w), float(saturation.mean()), float(luminance.std()), change))
        previous = rgb
    return effects
