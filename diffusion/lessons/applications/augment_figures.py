"""Figures of lesson 7's augmentation experiment (matplotlib only): the two arms' training curves.

Every visible string comes from :data:`TEXT`; a user interface passes translations for
the same keys through ``text=``. Strings are ``str.format`` templates (fields such as
``{k}`` must be kept). Figures are built with :func:`diffusion.figures.new_figure`, so they
are safe to draw from several server threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from diffusion.figures import merged_text, new_figure
from diffusion.lessons.applications.augment import ExperimentResult
from diffusion.lessons.applications.classifier import Curve

TEXT: dict[str, str] = {
    "title": "Held-out accuracy: {real:.1f}% with real digits only, {synthetic:.1f}% with generated digits added",
    "title_running": "Training both classifiers: step {step} of {total}",
    "title_stopped": "Stopped at step {step} of {total}",
    "accuracy_title": "Accuracy on the {heldout} held-out digits",
    "accuracy_ylabel": "held-out accuracy (%)",
    "loss_title": "Training loss (mean over each round's batches)",
    "loss_ylabel": "cross-entropy (nats, log scale)",
    "xlabel": "gradient steps (the same for both classifiers)",
    "real_only": "real only: {k} per class ({count} digits)",
    "with_synthetic": "real + generated: {k} + {n} per class ({count} digits)",
}

_REAL, _SYNTHETIC = "#1f77b4", "#d62728"
FONT_SIZE = 10


def _percent(values: list[float]) -> np.ndarray:
    return 100.0 * np.asarray(values, dtype=np.float64)


def plot_curves(real_only: Curve, with_synthetic: Curve | None, k_real: int, n_synthetic: int, *,
                total_steps: int | None = None, heldout: int = 1000, stopped: bool = False,
                text: Mapping[str, str] | None = None) -> Figure:
    """Held-out accuracy and training loss of both arms against gradient steps, side by side.

    Works on finished curves and on the partial curves of a running experiment
    (:class:`~diffusion.lessons.applications.classifier.Progress`), whose x-axis is then
    drawn up to ``total_steps`` so it does not rescale as the curves grow.

    Args:
        real_only: The real-only arm's curve.
        with_synthetic: The augmented arm's curve, or None when no generated digit was added.
        k_real: Real digits per class (for the legend).
        n_synthetic: Generated digits per class (for the legend).
        total_steps: The planned number of steps while the run is going; None when finished.
        heldout: Number of held-out digits (for the title).
        stopped: The run was stopped before ``total_steps`` (changes the title).
        text: Translations for keys of :data:`TEXT`.

    Returns:
        A figure with two axes: accuracy (%) and cross-entropy (nats, log scale).
    """
    s = merged_text(TEXT, text)
    fig = new_figure(9.6, 3.8)
    acc_ax, loss_ax = fig.subplots(1, 2)
    arms = [(real_only, s["real_only"].format(k=k_real, count=real_only.size), _REAL, "o")]
    if with_synthetic is not None and n_synthetic > 0:
        label = s["with_synthetic"].format(k=k_real, n=n_synthetic, count=with_synthetic.size)
        arms.append((with_synthetic, label, _SYNTHETIC, "s"))
    for curve, label, colour, marker in arms:
        if curve.steps:
            acc_ax.plot(curve.steps, _percent(curve.heldout_accuracy), color=colour, marker=marker, ms=4,
                        lw=1.8, label=label)
            loss_ax.plot(curve.steps, np.maximum(curve.train_loss, 1e-6), color=colour, marker=marker, ms=4,
                         lw=1.8, label=label)
    last = max([c.steps[-1] for c, *_ in arms if c.steps] or [1])
    for ax in (acc_ax, loss_ax):
        ax.set_xlim(0, max(total_steps or last, 1))
        ax.set_xlabel(s["xlabel"], fontsize=FONT_SIZE)
        ax.grid(True, which="both", alpha=0.25)
    acc_ax.set_ylim(0, 100)
    acc_ax.set_ylabel(s["accuracy_ylabel"], fontsize=FONT_SIZE)
    acc_ax.set_title(s["accuracy_title"].format(heldout=heldout), fontsize=FONT_SIZE)
    loss_ax.set_ylabel(s["loss_ylabel"], fontsize=FONT_SIZE)
    loss_ax.set_title(s["loss_title"], fontsize=FONT_SIZE)
    if any(c.steps for c, *_ in arms):
        loss_ax.set_yscale("log")
        acc_ax.legend(loc="lower right", fontsize=FONT_SIZE - 2)
    real = real_only.final_accuracy
    synthetic = with_synthetic.final_accuracy if with_synthetic is not None and n_synthetic > 0 else real
    if total_steps is not None or math.isnan(real):
        key = "title_stopped" if stopped else "title_running"
        fig.suptitle(s[key].format(step=last if real_only.steps else 0, total=total_steps or last),
                     fontsize=FONT_SIZE + 1)
    else:
        fig.suptitle(s["title"].format(real=100 * real, synthetic=100 * synthetic), fontsize=FONT_SIZE + 1)
    return fig


def plot_result(result: ExperimentResult, text: Mapping[str, str] | None = None) -> Figure:
    """:func:`plot_curves` of a finished (or stopped) :class:`ExperimentResult`."""
    r = result.request
    return plot_curves(result.real_only, result.with_synthetic, r.k_real, r.n_synthetic,
                       total_steps=result.settings.steps if result.stopped else None,
                       heldout=result.heldout_size or 1000, stopped=result.stopped, text=text)
