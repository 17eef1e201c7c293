"""The browser player of a finished reverse run (lessons 4 and 6): its steps, sent once.

A finished run stays on the server (:class:`~diffusion.serving.store.RunStore`) for the
step slider, which asks for one step at a time. Right after the run, a private event sends
the player (:func:`~diffusion.ui.player.frame_player`) x_t and x̂₀ at up to a few dozen
evenly spaced steps, always the first and the last, each with its own step, t and ᾱ_t;
Play and the player's slider then cost no request.

Pictures are drawn once per run and kept (:class:`RunPlayers`, bounded in count): every
page that opens a tab gets its own run id for the same shared example run, and all of
them are answered from one drawing.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from diffusion.errors import InputError
from diffusion.reverse import StepInfo, Trajectory
from diffusion.schedule import display_t
from diffusion.serving.cache import LRUCache
from diffusion.serving.store import RunStore
from diffusion.ui.i18n import Translator
from diffusion.ui.player import pack_frames

PLAYER_FPS = 10


def kept_run(store: RunStore, run_id: Any) -> Trajectory | None:
    """The finished run ``run_id`` of ``store`` if it is kept and has recorded frames, else None.

    The player follows every run, also one refused or already dropped: that is no error to show.
    """
    try:
        run = store.get(run_id)
    except InputError:
        return None
    return run if getattr(run, "recorded", False) else None


def spread_steps(n_steps: int, keep: int) -> list[int]:
    """At most ``keep`` evenly spaced step indices of a run of ``n_steps``: the first and last always.

    Args:
        n_steps: Steps the run recorded.
        keep: The most steps wanted (at least 2 when the run has 2 or more).

    Returns:
        Sorted 0-based indices; every step when the run has at most ``keep``.
    """
    if n_steps <= 0:
        return []
    if n_steps <= keep:
        return list(range(n_steps))
    # Spacing is at least one step, so rounding gives ``keep`` distinct indices.
    return sorted({int(round(v)) for v in np.linspace(0, n_steps - 1, max(keep, 2))})


def shrink(picture: np.ndarray, max_side: int, average: bool) -> tuple[np.ndarray, int]:
    """``picture`` reduced by a whole factor until neither side exceeds ``max_side``.

    Args:
        picture: uint8 ``(H, W)`` or ``(H, W, 3)``.
        max_side: The largest side wanted.
        average: Average each ``s×s`` block (smooth pictures); otherwise keep one pixel of
            each block, as lesson 2's player does, so that noise is shown as noisy as it is.

    Returns:
        The picture and the factor ``s`` (1: unchanged).
    """
    factor = max(1, math.ceil(max(picture.shape[:2]) / max_side))
    if factor == 1:
        return picture, 1
    if average:
        return np.asarray(Image.fromarray(picture).reduce(factor)), factor
    return np.ascontiguousarray(picture[::factor, ::factor]), factor


@dataclass(frozen=True)
class RunFrames:
    """The pictures of a run at the steps the player shows, with each step's numbers."""

    total: int                           # steps the run recorded
    steps: list[int]                     # 0-based indices of the steps kept
    timesteps: list[float]               # the scheduler's t of each (diffusers' convention)
    alpha_bars: list[float]              # ᾱ_t of each
    pictures: list[list[np.ndarray]]     # per panel, one uint8 picture per kept step
    factor: int = 1                      # how much the pictures were shrunk (1: not at all)


def draw_frames(run: Trajectory, draw: Callable[[StepInfo], Sequence[np.ndarray]], max_frames: int,
                max_side: int | None = None, average: Sequence[bool] = ()) -> RunFrames:
    """Draw the panels of a finished run at up to ``max_frames`` evenly spaced steps.

    Args:
        run: A finished, recorded run.
        draw: One step's pictures, one per panel (uint8).
        max_frames: The most steps drawn; the first and the last are always among them.
        max_side: Shrink pictures wider or taller than this (see :func:`shrink`).
        average: Per panel, whether shrinking averages (smooth pictures) or keeps one pixel of each block.

    Returns:
        The pictures and each kept step's numbers.
    """
    steps = spread_steps(len(run), max_frames)
    infos = [run.frame(i) for i in steps]
    drawn = [list(draw(info)) for info in infos]
    factor = 1
    if max_side is not None:
        for row in drawn:
            for k, picture in enumerate(row):
                row[k], f = shrink(picture, max_side, average[k] if k < len(average) else False)
                factor = max(factor, f)
    return RunFrames(total=len(run), steps=steps, timesteps=[float(i.t) for i in infos],
                     alpha_bars=[float(i.alpha_bar) for i in infos],
                     pictures=[[row[k] for row in drawn] for k in range(len(drawn[0]))] if drawn else [],
                     factor=factor)


def pack_run(frames: RunFrames, titles: Sequence[str], tr: Translator, lang: str, *, caption_key: str,
             note: Callable[[int], str], pixelated: bool) -> str:
    """The player's value of :func:`draw_frames`' pictures: captions like the step slider's status.

    Args:
        frames: The drawn run.
        titles: One title per panel.
        tr: The app's strings.
        lang: The page's language.
        caption_key: Formatted with ``step`` (1-based), ``total``, ``t`` (lesson convention,
            :func:`~diffusion.schedule.display_t`) and ``alpha_bar``.
        note: The line under the caption, from the number of steps kept.
        pixelated: Scale the pictures up without smoothing.

    Returns:
        :func:`~diffusion.ui.player.pack_frames`' JSON; it starts at the last step.
    """
    captions = [tr.text(caption_key, lang, step=s + 1, total=frames.total, t=display_t(t), alpha_bar=a)
                for s, t, a in zip(frames.steps, frames.timesteps, frames.alpha_bars)]
    return pack_frames(list(zip(titles, frames.pictures)), captions, fps=PLAYER_FPS, note=note,
                       pixelated=pixelated)


class RunPlayers:
    """Values made from finished runs, by (run, key), made once each and at most ``capacity`` kept.

    Keyed by the run object itself, held weakly (a kept value never keeps a dropped run
    alive), so that the many run ids of one shared run share one value.
    """

    def __init__(self, capacity: int = 8) -> None:
        self._values = LRUCache(capacity)

    def get(self, run: Any, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value for ``(run, key)``, made by ``make()`` when missing."""
        slot = (id(run), key)
        while True:
            ref, value = self._values.get_or_make(slot, lambda: (weakref.ref(run), make()))
            if ref() is run:
                return value
            self._values.forget(slot)  # an older run, since dropped, had the same id
