"""Figures for lesson 2: how the noise schedules compare, and where the pixels go.

Every visible string comes from :data:`NOISING_TEXT`; a user interface passes
translations for the same keys through ``text=``. Every string is a
``str.format`` template: fields such as ``{t}`` must be kept, and literal
braces (for example in matplotlib mathtext) are written doubled, ``{{ }}``.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from diffusion.errors import check_range
from diffusion.figures import merged_text, new_figure

# The schedule figure needs diffusion.lessons.noising.schedules (and with it torch and diffusers); the
# histogram does not, so the drawing processes that only draw histograms stay small.

NOISING_TEXT: dict[str, str] = {
    "schedules_title": "Noise schedules with T = {T} (current: {current}, t = {t})",
    "panel_alpha_bar": r"$\bar\alpha_t$: share of signal variance",
    "panel_sqrt_alpha_bar": r"$\sqrt{{\bar\alpha_t}}$: signal coefficient",
    "panel_sqrt_one_minus_alpha_bar": r"$\sqrt{{1-\bar\alpha_t}}$: noise coefficient",
    "panel_log_snr": r"log-SNR $= \ln(\bar\alpha_t / (1-\bar\alpha_t))$",
    "xlabel_t": "timestep t",
    "ylabel_dimensionless": "(dimensionless)",
    "ylabel_log_snr": "log-SNR (natural log)",
    "schedule_linear": "linear",
    "schedule_cosine": "cosine",
    "schedule_scaled_linear": "scaled linear",
    "schedule_sigmoid": "sigmoid",
    "hist_title": "Pixel values at t = {t}",
    "hist_xt": "$x_t$ pixels (mean {mean:.2f}, std {std:.2f})",
    "hist_x0": "$x_0$ pixels (clean image)",
    "hist_normal": "N(0, 1) density",
    "hist_xlabel": "pixel value (scaled to [-1, 1])",
    "hist_ylabel": "density",
}

FONT_SIZE = 11
_COLOURS = {"linear": "#1f77b4", "cosine": "#d62728", "scaled_linear": "#2ca02c", "sigmoid": "#9467bd"}
# Values shown on the histogram's x axis: N(0, 1) has 99.99% of its mass within ±4.
_HIST_RANGE = 4.0


def _labels(text: Mapping[str, str] | None) -> dict[str, Callable[..., str]]:
    """Merged strings as functions that fill in their fields (and un-double braces)."""
    return {key: template.format for key, template in merged_text(NOISING_TEXT, text).items()}


def plot_schedules(
    current: str, num_train_timesteps: int, t: int, text: Mapping[str, str] | None = None
) -> Figure:
    """Compare ᾱ_t, √ᾱ_t, √(1-ᾱ_t) and log-SNR of all schedules (DDPM eq. 4).

    The current schedule is drawn bold with a dot at the current t; a vertical
    line marks t on every panel. log-SNR is infinite at t = 0, so its curves
    start at t = 1 (and no dot is drawn there when t = 0).

    Args:
        current: The schedule selected in the lesson (one of ``SCHEDULES``).
        num_train_timesteps: Number of diffusion steps T.
        t: Current lesson timestep in ``0..T``.
        text: Translations for keys of :data:`NOISING_TEXT`.

    Returns:
        A 2×2-panel figure.

    Raises:
        InputError: For an unknown schedule or T, t out of range.
    """
    figure = _ScheduleFigure(current, num_train_timesteps, text)
    figure.move_to(figure.checked_t(t))
    return figure.fig


def schedules_png(current: str, num_train_timesteps: int, t: int, text: Mapping[str, str] | None = None) -> bytes:
    """:func:`plot_schedules` as PNG bytes, redrawing only what depends on ``t``.

    The curves stay the same while a student drags the t slider, so each
    (schedule, T, text) figure is drawn once and kept; a new t restores that
    picture and draws the marker line, the dots and the title on top
    (matplotlib's blitting), far cheaper than a full redraw.
    """
    from diffusion.lessons.noising.schedules import get_schedule

    big_t = get_schedule(current, num_train_timesteps).num_train_timesteps  # checks the name and T first
    figure = _cached_schedule_figure(current, big_t, tuple(sorted((text or {}).items())))
    return figure.png(figure.checked_t(t))


@functools.lru_cache(maxsize=8)
def _cached_schedule_figure(current: str, num_train_timesteps: int,
                            text: tuple[tuple[str, str], ...]) -> _ScheduleFigure:
    return _ScheduleFigure(current, num_train_timesteps, dict(text))


class _ScheduleFigure:
    """The schedule figure with the t-dependent artists kept apart, for blitting."""

    _PANELS = (
        ("alpha_bar", "panel_alpha_bar", "ylabel_dimensionless"),
        ("sqrt_alpha_bar", "panel_sqrt_alpha_bar", "ylabel_dimensionless"),
        ("sqrt_one_minus_alpha_bar", "panel_sqrt_one_minus_alpha_bar", "ylabel_dimensionless"),
        ("log_snr", "panel_log_snr", "ylabel_log_snr"),
    )

    def __init__(self, current: str, num_train_timesteps: int, text: Mapping[str, str] | None) -> None:
        from diffusion.lessons.noising.schedules import get_schedule
        from diffusion.schedule import SCHEDULES

        self.labels = _labels(text)
        self.current = current
        self.schedule = get_schedule(current, num_train_timesteps)
        big_t = self.big_t = self.schedule.num_train_timesteps
        fig = self.fig = new_figure(7.2, 5.4, layout=None)  # fixed layout: the same axes for every t
        fig.subplots_adjust(left=0.085, right=0.97, top=0.875, bottom=0.165, hspace=0.3, wspace=0.25)
        axes = fig.subplots(2, 2, sharex=True)
        steps = np.arange(big_t + 1)
        handles = []
        self.markers: list[tuple[Any, Any, np.ndarray]] = []  # (line, dot, values of the current schedule)
        for ax, (attribute, title_key, ylabel_key) in zip(axes.flat, self._PANELS):
            for name in SCHEDULES:
                values = getattr(get_schedule(name, big_t), attribute)
                first = 1 if attribute == "log_snr" else 0
                bold = name == current
                (line,) = ax.plot(
                    steps[first:], values[first:], color=_COLOURS[name],
                    linewidth=3.0 if bold else 1.3, alpha=1.0 if bold else 0.75,
                    zorder=3 if bold else 2, label=self.labels[f"schedule_{name}"](),
                )
                if ax is axes.flat[0]:
                    handles.append(line)
            marker = ax.axvline(0, color="0.3", linewidth=1.0, linestyle="--", zorder=1)
            (dot,) = ax.plot([0], [0], "o", color=_COLOURS[current], markersize=8,
                             markeredgecolor="black", zorder=4)
            self.markers.append((marker, dot, getattr(self.schedule, attribute)))
            ax.set_title(self.labels[title_key](), fontsize=FONT_SIZE)
            ax.set_ylabel(self.labels[ylabel_key](), fontsize=FONT_SIZE - 1)
            ax.tick_params(labelsize=FONT_SIZE - 1)
            ax.grid(alpha=0.3)
            ax.set_xlim(0, big_t)
        for ax in axes[1]:
            ax.set_xlabel(self.labels["xlabel_t"](), fontsize=FONT_SIZE)
        self.title = fig.suptitle("", fontsize=FONT_SIZE + 1)
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=len(handles),
                   fontsize=FONT_SIZE, frameon=False)
        self._background: Any = None
        self._lock = threading.Lock()  # one figure, many server threads

    def checked_t(self, t: int) -> int:
        return int(check_range("t", t, 0, self.big_t, integer=True))

    def move_to(self, t: int) -> list[Any]:
        """Put the marker, dots and title at ``t``; returns the artists that moved."""
        moved = [self.title]
        self.title.set_text(self.labels["schedules_title"](
            T=self.big_t, t=t, current=self.labels[f"schedule_{self.current}"]()))
        for marker, dot, values in self.markers:
            marker.set_xdata([t, t])
            dot.set_data([t], [values[t]])
            dot.set_visible(bool(np.isfinite(values[t])))
            moved += [marker, dot]
        return moved

    def png(self, t: int) -> bytes:
        with self._lock:
            canvas = self.fig.canvas
            if self._background is None:
                for artist in self.move_to(0):
                    artist.set_animated(True)  # left out of the saved background
                canvas.draw()
                self._background = canvas.copy_from_bbox(self.fig.bbox)
            canvas.restore_region(self._background)
            for artist in self.move_to(t):
                # The vertical lines sit under the curves (zorder 1) in the full figure; on
                # top of them here, drawn thin and dashed they hide nothing.
                self.fig.draw_artist(artist)
            rgba = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        buffer = io.BytesIO()
        Image.fromarray(rgba).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def plot_histogram(
    x_t: np.ndarray, x0: np.ndarray, t: int, text: Mapping[str, str] | None = None
) -> Figure:
    """Histogram of the x_t pixel values against the N(0, 1) density.

    As t grows, q(x_t | x_0) (DDPM eq. 4) pulls the pixel distribution from that
    of the clean image, drawn faintly, towards a standard normal.

    Args:
        x_t: Noisy image, float, on the ``[-1, 1]`` pixel scale.
        x0: Clean image, same scale.
        t: The timestep of ``x_t`` (used in the title only).
        text: Translations for keys of :data:`NOISING_TEXT`.

    Returns:
        A one-panel figure.
    """
    return draw_histogram(histogram_data(x_t, x0), t, text)


def histogram_data(x_t: np.ndarray, x0: np.ndarray) -> dict[str, Any]:
    """What :func:`draw_histogram` needs, as plain numbers (small enough to send to a drawing process).

    Densities of the x_t and x_0 pixel values in bins of width 1/12 on ±4, and the
    mean and standard deviation of x_t rounded for display.
    """
    noisy = np.asarray(x_t, dtype=np.float64).ravel()
    clean = np.asarray(x0, dtype=np.float64).ravel()
    noisy = noisy[np.isfinite(noisy)]
    clean = clean[np.isfinite(clean)]
    # Bins centred on -1, 0 and 1, where a clean image's extreme levels pile up.
    width = 1.0 / 12.0
    edges = np.arange(-_HIST_RANGE - width / 2, _HIST_RANGE + width, width)

    def density(values: np.ndarray) -> list[float]:
        # A bin count and range, not the edges: numpy then takes its faster equal-width
        # path, with the same counts.
        counts, _ = np.histogram(values, bins=len(edges) - 1, range=(edges[0], edges[-1]))
        total = counts.sum() * width
        return (counts / total).tolist() if total else [0.0] * (len(edges) - 1)

    # Rounded before formatting, and + 0.0 turns -0.0 into 0.0, so no "-0.00" is shown.
    return {"edges": edges.tolist(), "noisy": density(noisy), "clean": density(clean),
            "mean": round(float(noisy.mean()), 2) + 0.0 if noisy.size else 0.0,
            "std": round(float(noisy.std()), 2) + 0.0 if noisy.size else 0.0}


def draw_histogram(data: Mapping[str, Any], t: int, text: Mapping[str, str] | None = None) -> Figure:
    """The histogram figure from :func:`histogram_data`."""
    labels = _labels(text)
    edges, noisy, clean = (np.asarray(data[key], dtype=np.float64) for key in ("edges", "noisy", "clean"))
    fig = new_figure(6.4, 4.4, layout=None)  # redrawn on every slider move: fixed layout
    fig.subplots_adjust(left=0.1, right=0.97, top=0.91, bottom=0.24)
    ax = fig.subplots()
    ax.stairs(noisy, edges, fill=True, color="#1f77b4", alpha=0.6,
              label=labels["hist_xt"](mean=data["mean"], std=data["std"]))
    # Drawn as an outline on top, so it stays visible at t = 0 where x_t = x_0.
    ax.stairs(clean, edges, color="0.45", linewidth=1.2, label=labels["hist_x0"]())
    grid = np.linspace(-_HIST_RANGE, _HIST_RANGE, 400)
    ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), color="black", linewidth=2.0,
            label=labels["hist_normal"]())
    # A clean image's few pixel levels make tall spikes; the x_t bars set the scale.
    top = max(0.5, float(noisy.max()) if noisy.size else 0.0)
    ax.set_ylim(0, top * 1.1)
    ax.set_xlim(-_HIST_RANGE, _HIST_RANGE)
    ax.set_title(labels["hist_title"](t=int(t)), fontsize=FONT_SIZE + 1)
    ax.set_xlabel(labels["hist_xlabel"](), fontsize=FONT_SIZE)
    ax.set_ylabel(labels["hist_ylabel"](), fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.grid(alpha=0.3)
    # Outside the axes: inside, it would hide the bars wherever the image's values lie.
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=2, fontsize=FONT_SIZE - 1,
               frameon=False)
    return fig
