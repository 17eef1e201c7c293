"""Figures for lesson 1 (the heat equation), built without pyplot.

Every visible string comes from ``HEAT_TEXT`` (English defaults) merged with the
caller's translations, so the UI can pass the same keys in another language.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.ticker import NullLocator

from diffusion.errors import check_range
from diffusion.figures import merged_text, new_figure, unicode_log_labels
from diffusion.lessons.heat.exact import exact_solution, heat_kernel
from diffusion.lessons.heat.grid import total_mass
from diffusion.lessons.heat.params import LIMITS
from diffusion.lessons.heat.simulation import HeatResult

HEAT_TEXT: dict[str, str] = {
    "x_label": "position x (length units)",
    "t_label": "time t (time units)",
    "u_label": "temperature u (arb. units)",
    "scheme_ftcs": "FTCS",
    "scheme_crank_nicolson": "Crank–Nicolson",
    "scheme_exact": "exact (Fourier series)",
    "boundary_dirichlet": "Dirichlet",
    "boundary_neumann": "Neumann",
    "boundary_periodic": "periodic",
    "heatmap_title": "u(x, t): {scheme}, {boundary} boundary",
    "blowup_note": "FTCS blew up at t = {t:.3g} (r = {r:.3g} > 1/2)",
    "heatmap_blowup_note": "FTCS blew up at t = {t:.3g} (r = {r:.3g} > 1/2)\n"
                           "no values after that (grey)",
    "profile_title": "u(x, t) at t = {t:.3g}",
    "numerical_label": "{scheme}",
    "exact_label": "exact (Fourier series)",
    "initial_label": "initial condition",
    "offscale_note": "the initial peak ({peak:.3g}) is off the scale",
    "unstable_note": "r = {r:.3g} > 1/2: FTCS is unstable (symmetric log axis)",
    "no_data_note": "no values: FTCS blew up at t = {t:.3g}",
    "error_title": "Largest error against the exact solution",
    "error_label": "max |u − u_exact| (arb. units)",
    "error_zero_note": "zero error at every stored time: this is the exact solution",
    "mass_title_conserved": "Total heat ∫u dx: conserved ({boundary} boundary)",
    "mass_title_decaying": "Total heat ∫u dx: can leak out at the ends ({boundary} boundary)",
    "mass_label": "total heat ∫u dx (arb. units × length)",
    "mass_series": "{scheme}: ∫u dx",
    "mass_reference": "value at t = 0",
    "kernel_title": "A heat spike spreads into a Gaussian of variance 2Dt",
    "kernel_time_label": "t = {t:.3g}: variance 2Dt = {var:.3g}",
    "kernel_pde_label": "heat equation (solid)",
    "kernel_gauss_label": "Gaussian density (dashed)",
    "density_label": "density (1 / length units)",
}

WIDTH, HEIGHT = 6.4, 3.6
TITLE_SIZE, LABEL_SIZE, SMALL_SIZE = 12, 11, 10
WIDE_LEFT = 0.2  # for y tick labels like 0.99999988 or 4×10⁻³
_NOTE_BOX = {"boxstyle": "round", "facecolor": "white", "edgecolor": "#c62828", "alpha": 0.9}


def _figure(left: float = 0.125) -> Figure:
    """A figure with fixed margins: the heat tab draws five per run and one per slider
    move, and constrained layout, which measures every tick label first, would take a
    large share of their rendering time. ``left`` leaves room for the y tick labels."""
    fig = new_figure(WIDTH, HEIGHT, layout=None)
    fig.subplots_adjust(left=left, right=0.965, top=0.89, bottom=0.155)
    return fig


def _axes(fig: Figure, title: str, xlabel: str, ylabel: str) -> Axes:
    ax = fig.add_subplot()
    # An explicit y keeps matplotlib from measuring every tick label at each draw to
    # see whether the title must move up (it never must: no axis has top ticks).
    ax.set_title(title, fontsize=TITLE_SIZE, y=1.0)
    ax.set_xlabel(xlabel, fontsize=LABEL_SIZE)
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=SMALL_SIZE)
    return ax


def _warn(ax: Axes, message: str, y: float = 0.95) -> Text:
    return ax.text(0.5, y, message, transform=ax.transAxes, ha="center", va="top",
            fontsize=SMALL_SIZE, color="#c62828", bbox=_NOTE_BOX)


def _names(result: HeatResult, t: dict[str, str]) -> dict[str, str]:
    return {"scheme": t["scheme_" + result.params.scheme],
            "boundary": t["boundary_" + result.params.boundary]}


def _color_range(result: HeatResult) -> tuple[float, float]:
    # After a blow-up the last finite frames hold huge values; the initial data's range
    # keeps the picture readable. Otherwise percentiles stop one sharp spike from
    # washing out every later time.
    data = result.u[0] if result.blew_up else result.u[np.isfinite(result.u)]
    lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = float(data.min()), float(data.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 1.0, hi + 1.0
    return lo, hi


def _cell_edges(result: HeatResult) -> tuple[float, float, float, float]:
    """Image extent that centres each pixel on its grid node and frame time."""
    half_x = (result.x[-1] - result.x[0]) / (2 * (len(result.x) - 1))
    half_t = (result.times[-1] - result.times[0]) / (2 * (len(result.times) - 1))
    return (result.x[0] - half_x, result.x[-1] + half_x,
            result.times[0] - half_t, result.times[-1] + half_t)


def plot_heatmap(result: HeatResult, text: Mapping[str, str] | None = None) -> Figure:
    """x-t heat map of the numerical solution; rows after a blow-up are greyed out.

    Args:
        result: Output of :func:`diffusion.lessons.heat.simulate`.
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        The figure.
    """
    t = merged_text(HEAT_TEXT, text)
    fig = _figure()
    ax = _axes(fig, t["heatmap_title"].format(**_names(result, t)), t["x_label"], t["t_label"])
    lo, hi = _color_range(result)
    # FTCS blows up as a sign-flipping zigzag, which only a two-sided map shows.
    diverging = lo < 0 < hi or result.blew_up
    if diverging:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "inferno"].with_extremes(bad="0.6")
    finite = result.u[np.isfinite(result.u)]
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max",
              (True, True): "both"}[(bool(finite.min() < lo), bool(finite.max() > hi))]
    image = ax.imshow(np.ma.masked_invalid(result.u), origin="lower", aspect="auto",
                      cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest",
                      extent=_cell_edges(result))
    ax.set_xlim(result.x[0], result.x[-1])
    ax.set_ylim(result.times[0], result.times[-1])
    bar = fig.colorbar(image, ax=ax, extend=extend)
    bar.set_label(t["u_label"], fontsize=LABEL_SIZE)
    bar.ax.tick_params(labelsize=SMALL_SIZE)
    if result.blew_up:
        ax.axhline(result.blow_up_time, color="#c62828", lw=1.5, ls="--")
        _warn(ax, t["heatmap_blowup_note"].format(t=result.blow_up_time, r=result.r))
    return fig


def _profile_limits(result: HeatResult) -> tuple[float, float, float | None]:
    """Fixed y-range for every frame, and the initial peak when it is left off-scale."""
    both = np.concatenate([result.u, result.u_exact])
    if result.blew_up:
        top = float(np.nanmax(np.abs(both)))
        return -1.5 * top, 1.5 * top, None
    later, first = both[np.r_[1:len(result.u), len(result.u) + 1:len(both)]], result.u[0]
    offscale = None
    if len(result.u) > 2 and np.abs(first).max() > 3 * np.abs(later).max():
        # A spike would flatten every later profile; keep the scale of the later frames.
        offscale, both = float(first[np.argmax(np.abs(first))]), later
    lo, hi = float(both.min()), float(both.max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad, offscale


def _symlog_axis(ax: Axes, linthresh: float, top: float) -> None:
    """Symmetric-log y axis with ticks only at 0 and +-10^k (default ticks crowd zero)."""
    ax.set_yscale("symlog", linthresh=linthresh)
    unicode_log_labels(ax.yaxis, minor=False)
    first, last = math.ceil(math.log10(linthresh)), math.floor(math.log10(max(top, linthresh)))
    decades = list(range(first, last + 1, max(1, (last - first + 3) // 4)))
    levels = [10.0**k for k in decades] or [linthresh]
    ax.set_yticks([0.0] + [s * level for level in levels for s in (1, -1)])
    ax.yaxis.set_minor_locator(NullLocator())


def plot_profile(result: HeatResult, frame_index: int,
                 text: Mapping[str, str] | None = None) -> Figure:
    """Numerical and exact u(x, t) at one stored frame, on axes fixed for the whole run.

    Args:
        result: Output of :func:`diffusion.lessons.heat.simulate`.
        frame_index: Index into ``result.times``.
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        The figure; after a blow-up the axis is symmetric-log and a warning is shown.
    """
    t = merged_text(HEAT_TEXT, text)
    index = check_range("frame_index", frame_index, 0, len(result.times) - 1, integer=True)
    fig = _figure()
    ax = _axes(fig, t["profile_title"].format(t=result.times[index]), t["x_label"], t["u_label"])
    x = result.x
    if index > 0:
        ax.plot(x, result.u[0], color="0.7", lw=1.2, label=t["initial_label"])
    ax.plot(x, result.u[index], color="#1565c0", lw=2.0,
            label=t["numerical_label"].format(**_names(result, t)))
    ax.plot(x, result.u_exact[index], color="#e65100", lw=1.8, ls="--", label=t["exact_label"])
    lo, hi, offscale = _profile_limits(result)
    if result.blew_up:
        _symlog_axis(ax, max(float(np.abs(result.u[0]).max()), 1e-12), hi)
        if not np.isfinite(result.u[index]).all():
            _warn(ax, t["no_data_note"].format(t=result.blow_up_time), y=0.5)
        _warn(ax, t["unstable_note"].format(r=result.r))
    elif offscale is not None and index == 0:
        _warn(ax, t["offscale_note"].format(peak=offscale))
    ax.set_ylim(lo, hi)
    ax.set_xlim(x[0], x[-1])
    ax.legend(fontsize=SMALL_SIZE, loc="lower right" if result.blew_up else "best")
    return fig


def profile_frames(result: HeatResult, frame_indices: Sequence[int],
                   text: Mapping[str, str] | None = None) -> list[np.ndarray]:
    """:func:`plot_profile` at several stored frames, as pictures, from one figure.

    What does not move (axes, labels, the notes of a blow-up) is drawn once; each frame
    restores that picture and draws its lines, title and legend on top (matplotlib's
    blitting), several times cheaper than a figure per frame. The axes, colours and
    words are those of :func:`plot_profile`; the legend keeps one place for all frames.

    Args:
        result: Output of :func:`diffusion.lessons.heat.simulate`.
        frame_indices: Indices into ``result.times``, in the order wanted.
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        One uint8 ``(H, W, 3)`` picture per index.
    """
    t = merged_text(HEAT_TEXT, text)
    last = len(result.times) - 1
    indices = [int(check_range("frame_index", i, 0, last, integer=True)) for i in frame_indices]
    fig = _figure()
    ax = _axes(fig, "", t["x_label"], t["u_label"])
    x = result.x
    (initial,) = ax.plot(x, result.u[0], color="0.7", lw=1.2, label=t["initial_label"])
    (numerical,) = ax.plot(x, result.u[0], color="#1565c0", lw=2.0,
                           label=t["numerical_label"].format(**_names(result, t)))
    (exact,) = ax.plot(x, result.u_exact[0], color="#e65100", lw=1.8, ls="--", label=t["exact_label"])
    lo, hi, offscale = _profile_limits(result)
    no_data = offscale_note = None
    if result.blew_up:
        _symlog_axis(ax, max(float(np.abs(result.u[0]).max()), 1e-12), hi)
        no_data = _warn(ax, t["no_data_note"].format(t=result.blow_up_time), y=0.5)
        _warn(ax, t["unstable_note"].format(r=result.r))
    elif offscale is not None:
        offscale_note = _warn(ax, t["offscale_note"].format(peak=offscale))
    ax.set_ylim(lo, hi)
    ax.set_xlim(x[0], x[-1])
    # Two hidden envelopes of every frame steer the legend ("best") off everywhere the
    # lines will go; it is then pinned there, so it does not jump from frame to frame.
    sweep = np.concatenate([result.u[indices], result.u_exact[indices]])
    sweep = np.where(np.isfinite(sweep), sweep, 0.0)
    guides = ax.plot(x, sweep.max(axis=0), x, sweep.min(axis=0), visible=False)
    legend = ax.legend(handles=[initial, numerical, exact], fontsize=SMALL_SIZE, loc="best")
    fig.canvas.draw()
    legend.set_loc(tuple(legend.get_window_extent().transformed(ax.transAxes.inverted()).p0))
    for guide in guides:
        guide.remove()
    moving = [a for a in (initial, numerical, exact, no_data, offscale_note, ax.title, legend) if a is not None]
    for artist in moving:
        artist.set_animated(True)  # left out of the saved background
    canvas = fig.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(fig.bbox)
    pictures = []
    for i in indices:
        canvas.restore_region(background)
        initial.set_visible(i > 0)
        numerical.set_ydata(result.u[i])
        exact.set_ydata(result.u_exact[i])
        ax.title.set_text(t["profile_title"].format(t=result.times[i]))
        if no_data is not None:
            no_data.set_visible(not np.isfinite(result.u[i]).all())
        if offscale_note is not None:
            offscale_note.set_visible(i == 0)
        for artist in moving:
            fig.draw_artist(artist)
        pictures.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return pictures


def plot_error(result: HeatResult, text: Mapping[str, str] | None = None) -> Figure:
    """max_x |u - u_exact| against time on a log axis (round-off-sized values omitted).

    Args:
        result: Output of :func:`diffusion.lessons.heat.simulate`.
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        The figure; if the error is zero throughout it says so instead.
    """
    t = merged_text(HEAT_TEXT, text)
    fig = _figure(left=WIDE_LEFT)  # minor log ticks get labels like 4×10⁻³ on short ranges
    ax = _axes(fig, t["error_title"], t["t_label"], t["error_label"])
    with np.errstate(invalid="ignore"):
        error = np.abs(result.u - result.u_exact).max(axis=1)
    # Transform round-off (about 1e-16) would stretch the log axis by ten decades.
    floor = 1e-13 * max(1.0, float(np.abs(result.u[0]).max()))
    shown = np.where(error > floor, error, np.nan)
    if np.isnan(shown).all():
        ax.plot(result.times, np.zeros_like(result.times), color="#1565c0", lw=2.0)
        ax.set_ylim(-1.0, 1.0)
        _warn(ax, t["error_zero_note"], y=0.8)
    else:
        ax.semilogy(result.times, shown, color="#1565c0", lw=2.0, marker="o", ms=3,
                    label=t["numerical_label"].format(**_names(result, t)))
        unicode_log_labels(ax.yaxis)
        ax.legend(fontsize=SMALL_SIZE, loc="best")
    if result.blew_up:
        ax.axvline(result.blow_up_time, color="#c62828", ls="--", lw=1.5)
        _warn(ax, t["blowup_note"].format(t=result.blow_up_time, r=result.r))
    ax.set_xlim(result.times[0], result.times[-1])
    return fig


def plot_mass(result: HeatResult, text: Mapping[str, str] | None = None) -> Figure:
    """Total heat against time with the t = 0 value as a reference line.

    Args:
        result: Output of :func:`diffusion.lessons.heat.simulate`.
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        The figure; the title says whether conservation (Neumann, periodic) or decay
        (Dirichlet) is expected.
    """
    t = merged_text(HEAT_TEXT, text)
    names = _names(result, t)
    key = "mass_title_decaying" if result.params.boundary == "dirichlet" else "mass_title_conserved"
    # A wider left margin: the y labels are absolute totals to up to 9 digits
    # (1.0000000 against 0.99999988).
    fig = _figure(left=WIDE_LEFT)
    ax = _axes(fig, t[key].format(**names), t["t_label"], t["mass_label"])
    ax.axhline(result.mass[0], color="0.5", ls=":", lw=1.5, label=t["mass_reference"])
    ax.plot(result.times, result.mass, color="#2e7d32", lw=2.0, marker="o", ms=3,
            label=t["mass_series"].format(**names))
    finite = result.mass[np.isfinite(result.mass)]
    scale = float(total_mass(np.abs(result.u[0]), result.dx, result.params.boundary)) or 1.0
    if finite.max() - finite.min() < 1e-9 * scale:
        # Conserved to round-off: without this, matplotlib zooms into 1e-16 wiggles.
        ax.set_ylim(result.mass[0] - 0.1 * scale, result.mass[0] + 0.1 * scale)
    ax.ticklabel_format(axis="y", useOffset=False)
    if result.blew_up:
        ax.axvline(result.blow_up_time, color="#c62828", ls="--", lw=1.5)
        _warn(ax, t["blowup_note"].format(t=result.blow_up_time, r=result.r), y=0.2)
    ax.set_xlim(result.times[0], result.times[-1])
    ax.legend(fontsize=SMALL_SIZE, loc="best")
    return fig


def plot_heat_kernel(diffusivity: float, t: float, length: float,
                     text: Mapping[str, str] | None = None) -> Figure:
    """The bridge to diffusion models: heat from a unit-mass spike is a Gaussian.

    The exact (Fourier-series) solution from a spike of mass 1 at x0 = L/2 is computed on
    a domain of +-8 standard deviations, wide enough for the ends not to matter, and
    drawn with the Gaussian density of variance 2 D t at t/4, t and 4t.

    Args:
        diffusivity: D. t: The middle of the three times. length: L (sets x0 = L/2).
        text: Translations for keys of ``HEAT_TEXT``.

    Returns:
        The figure.
    """
    d = check_range("diffusivity", diffusivity, *LIMITS["diffusivity"])
    t_mid = check_range("t", t, LIMITS["t_end"][0], LIMITS["t_end"][1])
    center = check_range("length", length, *LIMITS["length"]) / 2
    s = merged_text(HEAT_TEXT, text)
    times = t_mid * np.array([0.25, 1.0, 4.0])
    sigma = np.sqrt(2 * d * times)
    half = 8 * sigma[-1]
    x = np.linspace(center - half, center + half, 513)  # dx = sigma_min / 16
    spike = np.zeros_like(x)
    spike[len(x) // 2] = 1.0 / (x[1] - x[0])
    pde = exact_solution(spike, x, times, d, 2 * half, "dirichlet")
    fig = _figure()
    ax = _axes(fig, s["kernel_title"], s["x_label"], s["density_label"])
    colors = ("#c62828", "#1565c0", "#2e7d32")
    for k, (time_k, color) in enumerate(zip(times, colors)):
        ax.plot(x, pde[k], color=color, lw=3.0, alpha=0.6,
                label=s["kernel_time_label"].format(t=time_k, var=2 * d * time_k))
        ax.plot(x, heat_kernel(x, time_k, d, center), color="black", lw=1.2, ls="--")
    # Two small legends in the empty upper corners keep the narrow peak uncovered.
    ax.add_artist(ax.legend(fontsize=SMALL_SIZE, loc="upper left"))
    ax.legend(handles=[
        Line2D([], [], color="0.4", lw=3.0, alpha=0.6, label=s["kernel_pde_label"]),
        Line2D([], [], color="black", lw=1.2, ls="--", label=s["kernel_gauss_label"]),
    ], fontsize=SMALL_SIZE, loc="upper right")
    ax.set_xlim(center - 5 * sigma[-1], center + 5 * sigma[-1])
    ax.set_ylim(0, 1.3 * float(pde.max()))
    return fig
