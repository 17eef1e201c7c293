"""Figures of the 2-D lab (matplotlib only): forward process, loss, samples, score fields, memorisation.

Every visible string comes from :data:`TEXT`; a user interface passes translations for
the same keys through ``text=``. Strings are ``str.format`` templates (fields such as
``{t}`` must be kept). Figures are built with :func:`diffusion.figures.new_figure`, so
they are safe to draw from several server threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from diffusion.figures import merged_text, new_figure, unicode_log_labels
from diffusion.lessons.lab2d.field import ScoreField
from diffusion.lessons.lab2d.forward import ForwardPoints
from diffusion.lessons.lab2d.sampling import SampleTrajectory

TEXT: dict[str, str] = {
    "forward_title": "Forward process at t = {t}: ᾱ_t = {alpha_bar:.4f}",
    "forward_points": "x_t (training points noised, eq. 4)",
    "forward_clean": "x_0 (training points)",
    "forward_prior": "N(0, I): 1σ and 2σ circles",
    "forward_cloud": "one point's cloud N(√ᾱ_t x_0, (1 − ᾱ_t) I), variance {variance:.3f}",
    "x_std": "x₁ (standardised units)",
    "y_std": "x₂ (standardised units)",
    "x_data": "x₁ (data set's units)",
    "y_data": "x₂ (data set's units)",
    "loss_title": "Training loss (DDPM's simple loss, eq. 14)",
    "loss_xlabel": "training step",
    "loss_ylabel": "loss ‖ε − ε_θ‖² / 2 (per coordinate, log scale)",
    "loss_raw": "each step",
    "loss_smooth": "moving average ({window} steps)",
    "samples_title": "{sampler}, {steps} steps, {predictor} ε",
    "samples_title_stopped": "{sampler}, stopped after {steps} steps, {predictor} ε",
    "samples_training": "training points",
    "samples_paths": "paths of {count} particles",
    "samples_points": "samples",
    "sampler_ddpm": "DDPM",
    "sampler_ddim": "DDIM",
    "predictor_learned": "learned",
    "predictor_exact": "exact",
    "field_title_learned": "Learned score s_θ = −ε_θ / √(1 − ᾱ_t)",
    "field_title_exact": "Exact score ∇ log p_t of the training set",
    "field_suptitle": "Score fields at t = {t} (ᾱ_t = {alpha_bar:.4f}); weighted mean ‖s_θ − s*‖ = {error:.3g}",
    "field_legend": "arrow length ∝ |score|, same scale in both; arrows longer than 1.5 grid cells are cut",
    "nearest_title": "Distance of each sample to its nearest training point",
    "nearest_xlabel": "distance to the nearest training point (data set's units, log scale)",
    "nearest_ylabel": "share of samples",
    "nearest_reference": "fresh data (median {median:.3g})",
    "nearest_series": "{label} (median {median:.3g})",
}

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
FONT_SIZE = 10
MAX_PATHS = 60
ARROW_CELLS = 1.5   # the longest arrow drawn, in grid cells


def _clipped(vectors: np.ndarray, longest: float) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors * np.minimum(1.0, longest / np.maximum(norms, 1e-300))


def _square(ax, extent: float) -> None:
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.25)


def _circle(ax, centre: Sequence[float], radius: float, **style) -> None:
    angle = np.linspace(0.0, 2.0 * math.pi, 200)
    ax.plot(centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle), **style)


def plot_forward(points: ForwardPoints, index: int = 0, text: Mapping[str, str] | None = None,
                 extent: float = 3.5) -> Figure:
    """The noised training set at step t, the N(0, I) circles, and one point's Gaussian cloud.

    Args:
        points: :func:`~diffusion.lessons.lab2d.forward.forward_points` at some t.
        index: Which training point's cloud N(√ᾱ_t x_0, (1 - ᾱ_t) I) to draw.
        text: Translations for keys of :data:`TEXT`.
        extent: Half-width of the (standardised) view.
    """
    s = merged_text(TEXT, text)
    fig = new_figure(5.6, 5.2)
    ax = fig.add_subplot()
    ax.scatter(points.x0[:, 0], points.x0[:, 1], s=2, c="#bbbbbb", label=s["forward_clean"], rasterized=True)
    ax.scatter(points.x_t[:, 0], points.x_t[:, 1], s=3, c=_COLOURS[0], alpha=0.6, label=s["forward_points"],
               rasterized=True)
    _circle(ax, (0.0, 0.0), 1.0, color="black", lw=1.2, ls="--", label=s["forward_prior"])
    _circle(ax, (0.0, 0.0), 2.0, color="black", lw=0.8, ls="--")
    i = int(np.clip(index, 0, len(points.x0) - 1))
    centre = points.signal_coef * points.x0[i]
    radius = math.sqrt(points.variance)
    ax.plot(*points.x0[i], marker="*", ms=12, color=_COLOURS[1], ls="none")
    if radius > 0:
        _circle(ax, centre, radius, color=_COLOURS[1], lw=1.6,
                label=s["forward_cloud"].format(variance=points.variance))
        _circle(ax, centre, 2.0 * radius, color=_COLOURS[1], lw=0.8)
        ax.annotate("", xy=centre, xytext=points.x0[i], arrowprops={"arrowstyle": "->", "color": _COLOURS[1]})
    _square(ax, extent)
    ax.set_title(s["forward_title"].format(t=points.t, alpha_bar=points.alpha_bar), fontsize=FONT_SIZE + 1)
    ax.set_xlabel(s["x_std"], fontsize=FONT_SIZE)
    ax.set_ylabel(s["y_std"], fontsize=FONT_SIZE)
    ax.legend(loc="upper right", fontsize=FONT_SIZE - 2, markerscale=3)
    return fig


def plot_loss(losses: Sequence[float], text: Mapping[str, str] | None = None, window: int = 100) -> Figure:
    """The loss of every training step and its moving average, on a log axis."""
    s = merged_text(TEXT, text)
    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    values = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, values.size + 1)
    if values.size:
        ax.plot(steps, values, lw=0.6, color="#9ecae1", label=s["loss_raw"])
        w = max(1, min(int(window), values.size))
        smooth = np.convolve(values, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.8, color=_COLOURS[0], label=s["loss_smooth"].format(window=w))
        ax.set_yscale("log")
        unicode_log_labels(ax.yaxis)
        ax.legend(fontsize=FONT_SIZE - 1)
    ax.set_title(s["loss_title"], fontsize=FONT_SIZE + 1)
    ax.set_xlabel(s["loss_xlabel"], fontsize=FONT_SIZE)
    ax.set_ylabel(s["loss_ylabel"], fontsize=FONT_SIZE)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def plot_samples(runs: Sequence[SampleTrajectory], train: np.ndarray, text: Mapping[str, str] | None = None,
                 paths: int = 40) -> Figure:
    """Samples of several runs side by side, each over the training points, with particle paths.

    Args:
        runs: Finished (or stopped) sampling runs of one lab run, e.g. DDPM, DDIM, exact.
        train: The training points in the data set's coordinates (drawn faintly).
        text: Translations for keys of :data:`TEXT`.
        paths: Number of recorded particles whose whole path x_T → x_0 is drawn.
    """
    s = merged_text(TEXT, text)
    count = max(1, len(runs))
    fig = new_figure(3.6 * count + 0.4, 4.0)
    axes = fig.subplots(1, count, sharex=True, sharey=True, squeeze=False)[0]
    train = np.asarray(train)
    low, high = train.min(axis=0), train.max(axis=0)
    pad = 0.15 * (high - low).max()
    for ax, run, colour in zip(axes, runs, _COLOURS):
        ax.scatter(train[:, 0], train[:, 1], s=2, c="#cccccc", label=s["samples_training"], rasterized=True)
        k = min(int(paths), MAX_PATHS, run.recorded_particles)
        if k:
            trail = run.to_data(run.x_t[:, :k].numpy())
            trail = np.concatenate([trail, run.samples[None, :k]], axis=0)
            for j in range(k):
                ax.plot(trail[:, j, 0], trail[:, j, 1], lw=0.5, alpha=0.35, color="#555555",
                        label=s["samples_paths"].format(count=k) if j == 0 else None)
        ax.scatter(run.samples[:, 0], run.samples[:, 1], s=3, c=colour, alpha=0.7, label=s["samples_points"],
                   rasterized=True)
        key = "samples_title_stopped" if run.stopped else "samples_title"
        ax.set_title(s[key].format(sampler=s[f"sampler_{run.sampler}"], steps=len(run),
                                   predictor=s[f"predictor_{run.predictor}"]), fontsize=FONT_SIZE)
        ax.set_xlabel(s["x_data"], fontsize=FONT_SIZE)
        ax.set_xlim(low[0] - pad, high[0] + pad)
        ax.set_ylim(low[1] - pad, high[1] + pad)
        ax.set_aspect("equal")
        ax.grid(True, alpha=0.25)
    axes[0].set_ylabel(s["y_data"], fontsize=FONT_SIZE)
    axes[0].legend(loc="best", fontsize=FONT_SIZE - 2, markerscale=3)
    return fig


def plot_score_fields(field: ScoreField, train: np.ndarray | None = None,
                      text: Mapping[str, str] | None = None) -> Figure:
    """The learned and the exact score field as quiver plots side by side, on one arrow scale.

    Args:
        field: :func:`~diffusion.lessons.lab2d.field.score_field` on a square grid.
        train: The standardised training points, shrunk by √ᾱ_t and drawn faintly (optional).
        text: Translations for keys of :data:`TEXT`.
    """
    s = merged_text(TEXT, text)
    fig = new_figure(9.6, 5.0)
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    extent = float(np.abs(field.points).max())
    cells = max(2, int(round(math.sqrt(field.points.shape[0]))))
    cell = 2.0 * extent / (cells - 1)
    # One scale for both panels: the 80th percentile of |score| spans one grid cell, and
    # longer arrows are cut to ARROW_CELLS cells (at small t the exact score far from the
    # data is ~distance / (1 - ᾱ_t), thousands of times longer than near it).
    norms = np.concatenate([np.linalg.norm(field.learned, axis=1), np.linalg.norm(field.exact, axis=1)])
    unit = max(float(np.quantile(norms, 0.8)), 1e-12) / cell
    for ax, vectors, key, colour in ((axes[0], _clipped(field.learned, unit * ARROW_CELLS * cell),
                                      "field_title_learned", _COLOURS[0]),
                                     (axes[1], _clipped(field.exact, unit * ARROW_CELLS * cell),
                                      "field_title_exact", _COLOURS[1])):
        if train is not None:
            shrunk = math.sqrt(field.alpha_bar) * np.asarray(train)
            ax.scatter(shrunk[:, 0], shrunk[:, 1], s=1, c="#cccccc", rasterized=True)
        ax.quiver(field.points[:, 0], field.points[:, 1], vectors[:, 0], vectors[:, 1], color=colour,
                  angles="xy", scale_units="xy", scale=unit, width=0.004)
        ax.set_title(s[key], fontsize=FONT_SIZE)
        ax.set_xlabel(s["x_std"], fontsize=FONT_SIZE)
        _square(ax, extent * 1.05)
    axes[0].set_ylabel(s["y_std"], fontsize=FONT_SIZE)
    fig.suptitle(s["field_suptitle"].format(t=field.t, alpha_bar=field.alpha_bar, error=field.mean_error)
                 + "\n" + s["field_legend"], fontsize=FONT_SIZE)
    return fig


def plot_nearest(distances: Mapping[str, np.ndarray], reference: np.ndarray | None = None,
                 text: Mapping[str, str] | None = None) -> Figure:
    """Histograms of nearest-training-point distances, one per sampler, next to fresh data's.

    Args:
        distances: ``label → distances`` (:func:`~diffusion.lessons.lab2d.metrics.nearest_distance`).
        reference: The same for fresh data (what a model that does not copy shows).
        text: Translations for keys of :data:`TEXT`.
    """
    s = merged_text(TEXT, text)
    fig = new_figure(6.4, 3.8)
    ax = fig.add_subplot()
    series = list(distances.items())
    every = [np.asarray(d, dtype=np.float64) for _, d in series] + ([np.asarray(reference)] if reference is not None else [])
    positive = np.concatenate([d[d > 0] for d in every]) if every else np.array([1.0])
    low = max(float(positive.min()) if positive.size else 1e-6, 1e-7)
    high = max(float(positive.max()) if positive.size else 1.0, low * 10)
    bins = np.geomspace(low, high, 40)
    for (label, d), colour in zip(series, _COLOURS):
        d = np.clip(np.asarray(d, dtype=np.float64), low, high)
        ax.hist(d, bins=bins, weights=np.full(d.size, 1.0 / d.size), histtype="step", lw=1.6, color=colour,
                label=s["nearest_series"].format(label=label, median=float(np.median(d))))
    if reference is not None:
        r = np.clip(np.asarray(reference, dtype=np.float64), low, high)
        ax.hist(r, bins=bins, weights=np.full(r.size, 1.0 / r.size), color="#bbbbbb", alpha=0.6,
                label=s["nearest_reference"].format(median=float(np.median(r))))
    ax.set_xscale("log")
    unicode_log_labels(ax.xaxis)
    ax.set_title(s["nearest_title"], fontsize=FONT_SIZE + 1)
    ax.set_xlabel(s["nearest_xlabel"], fontsize=FONT_SIZE)
    ax.set_ylabel(s["nearest_ylabel"], fontsize=FONT_SIZE)
    ax.legend(fontsize=FONT_SIZE - 2)
    ax.grid(True, alpha=0.25)
    return fig
