"""Matplotlib figures that are safe to build from many server threads at once.

pyplot keeps global state and is not thread-safe, so the lessons build
``matplotlib.figure.Figure`` objects directly. Chinese plot text needs a CJK
font; :func:`cjk_font_available` tells the UI whether one is installed so it can
fall back to English plot text instead of drawing empty boxes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")

# gradio's Plot component imports pyplot lazily while it renders a figure. Two
# first requests rendering at once in two worker threads then race on pyplot's
# half-finished import ("partially initialized module ... switch_backend"). We
# never draw with pyplot ourselves; importing it here, once, at start-up in the
# main thread is what makes those later imports safe.
import matplotlib.pyplot  # noqa: E402,F401
from matplotlib import font_manager  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatterSciNotation  # noqa: E402

# Families that cover simplified Chinese, most common first on Linux, macOS, Windows.
CJK_FAMILIES = (
    "Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
    "Source Han Sans SC", "Source Han Sans CN", "PingFang SC", "Microsoft YaHei",
    "SimHei", "Droid Sans Fallback", "AR PL UMing CN",
)


@functools.lru_cache(maxsize=1)
def _installed_cjk_families() -> tuple[str, ...]:
    names = {f.name for f in font_manager.fontManager.ttflist}
    return tuple(family for family in CJK_FAMILIES if family in names)


def cjk_font_available() -> bool:
    """Whether matplotlib can draw simplified Chinese text on this machine."""
    return bool(_installed_cjk_families())


def new_figure(width: float = 6.4, height: float = 4.0, dpi: int = 100,
               layout: str | None = "constrained") -> Figure:
    """A figure with an Agg canvas attached and a font list that covers CJK text.

    Args:
        width: Width in inches.
        height: Height in inches.
        dpi: Resolution used when the figure is rendered.
        layout: ``"constrained"`` (the default), or ``None`` for figures redrawn on every
            slider move, which place their axes with ``subplots_adjust`` instead: the
            constrained solver measures every tick label and can take most of the time.

    Returns:
        A fresh :class:`matplotlib.figure.Figure`.
    """
    fig = Figure(figsize=(width, height), dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


_MATHTEXT_OPEN, _MATHTEXT_CLOSE = "$\\mathdefault{", "}$"  # how LogFormatterSciNotation wraps a label
_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_POWER = re.compile(r"10\^\{(-?[0-9]+)\}")


class UnicodeLogFormatter(LogFormatterSciNotation):
    """matplotlib's log-axis tick labels (10⁻³, 2×10⁻³) in plain Unicode, not mathtext.

    Which ticks get a label is matplotlib's own choice; only the text differs. Mathtext
    labels are parsed anew for every figure, a noticeable share of the time to draw a
    log-axis figure. A label this cannot translate stays mathtext.
    """

    def __call__(self, x: float, pos: int | None = None) -> str:
        label = super().__call__(x, pos)
        if not (label.startswith(_MATHTEXT_OPEN) and label.endswith(_MATHTEXT_CLOSE)):
            return label
        body = label.removeprefix(_MATHTEXT_OPEN).removesuffix(_MATHTEXT_CLOSE)
        body = _POWER.sub(lambda m: "10" + m.group(1).translate(_SUPERSCRIPT), body)
        body = body.replace("\\times", "×")
        return label if ("\\" in body or "{" in body or "^" in body) else body


def unicode_log_labels(axis: Any, minor: bool = True) -> None:
    """Give a log (``minor=True``) or symlog (``minor=False``) axis :class:`UnicodeLogFormatter` labels,
    with matplotlib's default choice of labelled ticks."""
    axis.set_major_formatter(UnicodeLogFormatter())
    if minor:
        axis.set_minor_formatter(UnicodeLogFormatter(labelOnlyBase=False))


def font_family() -> list[str]:
    """Font list for text that may be Chinese: DejaVu first, then a CJK fallback."""
    return ["DejaVu Sans", *_installed_cjk_families()]


def merged_text(defaults: Mapping[str, str], text: Mapping[str, str] | None) -> dict[str, str]:
    """Default (English) plot strings overridden by the caller's translations."""
    merged = dict(defaults)
    if text:
        merged.update({k: v for k, v in text.items() if k in defaults})
    return merged


# Matplotlib (>= 3.6) falls back glyph by glyph only through families named explicitly
# in font.family, not through the generic "sans-serif" list, so name them.
matplotlib.rcParams["font.family"] = font_family()
matplotlib.rcParams["axes.unicode_minus"] = False
