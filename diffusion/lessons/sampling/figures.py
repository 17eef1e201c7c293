"""Figures for lesson 4: how the pixel spread of x_t shrinks as samplers remove noise.

Every visible string comes from :data:`SAMPLING_TEXT`; a user interface passes
translations for the same keys through ``text=``. Strings are ``str.format``
templates (fields such as ``{steps}`` must be kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from diffusion.figures import merged_text, new_figure
from diffusion.lessons.sampling.pictures import std_curve
from diffusion.lessons.sampling.sampler import Trajectory

SAMPLING_TEXT: dict[str, str] = {
    "std_title": "Pixel spread of x_t during sampling (same starting noise)",
    "std_xlabel": "timestep t (sampling runs from t = T down to 1)",
    "std_ylabel": "standard deviation of x_t pixels ([-1, 1] scale)",
    "std_run": "{sampler}, {steps} steps ({seconds:.1f} s)",
    "std_run_stopped": "{sampler}, stopped after {steps} steps",
    "std_data": "real digits (std {value:.2f})",
    "sampler_ddpm": "DDPM",
    "sampler_ddim": "DDIM",
    "sampler_euler_ancestral": "Euler ancestral",
    "sampler_dpm_solver": "DPM-Solver++",
}

FONT_SIZE = 11
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
# Pixel std of the MNIST training split on the [-1, 1] scale (0.617, measured with
# diffusion.datasets.digits); a good sampler's curve ends near it.
DATA_STD = 0.62


def plot_std(trajectories: Sequence[Trajectory], text: Mapping[str, str] | None = None,
             num_train_timesteps: int = 1000, data_std: float | None = DATA_STD) -> Figure:
    """Pixel standard deviation of x_t against the timestep, one line per run.

    A sampler that takes few steps (DDIM) shows few points on the same curve
    that DDPM traces densely; ancestral noise makes DDPM's line slightly rough.

    Args:
        trajectories: Finished (or stopped) runs, drawn in order.
        text: Translations for keys of :data:`SAMPLING_TEXT`.
        num_train_timesteps: T, for the x axis.
        data_std: Pixel std of real digits, drawn as a dashed line (``None``: no line).

    Returns:
        A one-panel figure.
    """
    labels = {k: v.format for k, v in merged_text(SAMPLING_TEXT, text).items()}
    fig = new_figure(6.6, 4.2, layout=None)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.9, bottom=0.14)
    ax = fig.subplots()
    for k, run in enumerate(trajectories):
        ts, std = std_curve(run)
        if not len(ts):
            continue
        sampler = run.request.sampler
        name = labels[f"sampler_{sampler}"]() if f"sampler_{sampler}" in labels else sampler
        key = "std_run_stopped" if run.stopped else "std_run"
        label = labels[key](sampler=name, steps=len(run), seconds=run.seconds)
        marker = "o" if len(ts) <= 60 else None
        ax.plot(ts, std, color=_COLOURS[k % len(_COLOURS)], linewidth=1.8, marker=marker,
                markersize=3.5, label=label)
    if data_std is not None:
        ax.axhline(data_std, color="0.4", linewidth=1.0, linestyle="--",
                   label=labels["std_data"](value=data_std))
    ax.set_xlim(num_train_timesteps, 0)  # time runs left to right, as the sampler does
    ax.set_ylim(0, max(1.15, ax.get_ylim()[1]))
    ax.set_title(labels["std_title"](), fontsize=FONT_SIZE + 1)
    ax.set_xlabel(labels["std_xlabel"](), fontsize=FONT_SIZE)
    ax.set_ylabel(labels["std_ylabel"](), fontsize=FONT_SIZE)
    ax.tick_params(labelsize=FONT_SIZE)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=FONT_SIZE - 1, frameon=False)
    return fig

