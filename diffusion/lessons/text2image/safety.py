"""Lesson 6's content filter: every picture a real Stable Diffusion model shows passes the safety checker.

A teacher letting a class type prompts into Stable Diffusion needs a filter. The model's
own checker, or the standard one (``CompVis/stable-diffusion-safety-checker``), is loaded with
the pipeline (:func:`diffusion.models.pipelines.load_pipeline`, ``safety=True``) and kept out
of the pipeline's components, so diffusers never blacks out a picture behind the lesson's
back. This module runs it, as diffusers' ``StableDiffusionPipeline.run_safety_checker`` does::

    clip_input = feature_extractor(pictures)            CLIP preprocessing: 224², OpenAI mean/std
    e = W_proj · ViT(clip_input)                        CLIP image embedding
    blocked_i = ∃ c: cos(e_i, c) − τ_c (+ 0.01) > 0     17 concepts, margin after a "special care" hit

What the lesson shows is more than the final picture: live x̂₀ previews (VAE decodes of the
predicted clean latent), a step slider and a browser player over every step. An unfiltered
preview of a blocked picture would defeat the filter, so:

* every decoded picture the lesson shows goes through :meth:`SafetyFilter.check`
  (:func:`screen_x0` for x̂₀ strips, :func:`screen_images` for the final pictures);
* the latent view (the first three latent channels as colours, ``previews.latent_picture``)
  is treated as revealing too: it is replaced wherever the x̂₀ of its picture is blocked
  (:func:`screen_latent`), and so is every view of a picture after one of its x̂₀ was
  blocked during the run (blocking is sticky forward in time);
* once the final picture is known, a blocked final picture is blocked at every step of the
  run, earlier steps included (their x̂₀ is a blurrier view of the same picture).

A blocked picture becomes :func:`blocked_picture`, plain grey with a "no entry" sign; the
user interface shows the translated notice beside it (no text is baked into pixels).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusion.errors import InputError, check_range
from diffusion.models.pipelines import ContentChecker, attached_checker

MAX_BATCH = 16  # pictures in one strip: lesson 6 makes at most 4


class SafetyFilter:
    """A safety checker with its feature extractor, callable from any thread (one check at a time).

    Args:
        checker: A ``StableDiffusionSafetyChecker``, or any module with its forward
            ``(clip_input, images) -> (images, has_nsfw_concepts)``.
        feature_extractor: A ``CLIPImageProcessor`` (list of PIL images → ``pixel_values``).
        device: Where ``clip_input`` goes (default: the checker's parameters' device, else CPU).
        dtype: Its dtype (default: the checker's parameters' dtype, else float32).
    """

    def __init__(self, checker: Any, feature_extractor: Any, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        parameter = next(iter(checker.parameters()), None) if hasattr(checker, "parameters") else None
        self.checker, self.feature_extractor = checker, feature_extractor
        self.device = torch.device(device) if device is not None else (
            parameter.device if parameter is not None else torch.device("cpu"))
        self.dtype = dtype or (parameter.dtype if parameter is not None else torch.float32)
        self._lock = threading.Lock()

    def check(self, pictures: Sequence[np.ndarray]) -> list[bool]:
        """Which of ``pictures`` (uint8 ``(H, W, 3)``) the checker blocks (True = blocked).

        The pictures go through the feature extractor as PIL images and the checker's forward
        reads ``has_nsfw_concepts``, exactly as diffusers' ``run_safety_checker`` does with the
        pipeline's output; the checker blacks out copies, never the pictures given.

        Raises:
            InputError: ``picture_missing`` / ``picture_shape`` for anything but uint8 ``(H, W, 3)`` arrays.
        """
        if isinstance(pictures, np.ndarray) or not isinstance(pictures, Sequence):
            raise InputError("picture_type", "{name} must be an array of numbers.", name="pictures")
        arrays = [_rgb("pictures", p) for p in pictures]
        if not arrays:
            return []
        with self._lock, torch.inference_mode():
            features = self.feature_extractor([Image.fromarray(a) for a in arrays], return_tensors="pt")
            clip_input = features.pixel_values.to(self.device, self.dtype)
            _, flags = self.checker(clip_input=clip_input,
                                    images=[a.astype(np.float32) / 255.0 for a in arrays])
        flags = [bool(f) for f in flags]
        if len(flags) != len(arrays):  # a checker that answers for other pictures cannot be trusted
            raise RuntimeError(f"the safety checker answered {len(flags)} times for {len(arrays)} pictures")
        return flags

    def filter_strip(self, strip: np.ndarray, batch: int) -> tuple[np.ndarray, list[bool]]:
        """Check each of the ``batch`` pictures of a horizontal strip ``(H, batch·W, 3)``; replace the blocked ones.

        Returns:
            The strip (a new array where something was blocked, else ``strip`` itself) and the flags.
        """
        flags = self.check(split_strip(strip, batch))
        return replace_pictures(strip, batch, flags), flags

    def filter_images(self, images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """The final pictures (PIL) checked; blocked ones replaced by :func:`blocked_picture` of their size."""
        arrays = [np.asarray(im.convert("RGB")) if isinstance(im, Image.Image) else im for im in images]
        flags = self.check(arrays)
        return [Image.fromarray(blocked_picture(*a.shape[:2])) if flag else image
                for image, a, flag in zip(images, arrays, flags)], flags


_filters: weakref.WeakKeyDictionary[ContentChecker, SafetyFilter] = weakref.WeakKeyDictionary()
_filters_lock = threading.Lock()


def pipe_filter(pipe: Any) -> SafetyFilter | None:
    """The :class:`SafetyFilter` of a pipeline loaded with ``safety=True``; None when it has none.

    One filter (and so one lock) per loaded checker, however many threads ask.
    """
    content = attached_checker(pipe)
    if content is None:
        return None
    with _filters_lock:
        if content not in _filters:
            _filters[content] = SafetyFilter(content.checker, content.feature_extractor)
        return _filters[content]


def blocked_picture(height: int, width: int) -> np.ndarray:
    """What a blocked picture becomes: mid grey with a light "no entry" sign (a ring and a bar), uint8 ``(H, W, 3)``.

    Raises:
        InputError: ``out_of_range`` for sides outside 1…8192.
    """
    height = int(check_range("height", height, 1, 8192, integer=True))
    width = int(check_range("width", width, 1, 8192, integer=True))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y - (height - 1) / 2, x - (width - 1) / 2
    radius = 0.32 * min(height, width)
    thickness = max(1.0, 0.06 * min(height, width))
    r = np.hypot(x, y)
    ring = np.abs(r - radius) <= thickness / 2
    bar = (np.abs(x + y) / np.sqrt(2) <= thickness / 2) & (r <= radius)  # the diagonal "\" of the sign
    picture = np.full((height, width, 3), 128, np.uint8)
    picture[ring | bar] = 208
    return picture


def split_strip(strip: np.ndarray, batch: int) -> list[np.ndarray]:
    """The ``batch`` pictures ``(H, W, 3)`` of a horizontal uint8 strip ``(H, batch·W, 3)`` (views, not copies).

    Raises:
        InputError: ``out_of_range`` for a bad ``batch``; ``picture_shape`` for a strip that is
            not uint8 ``(H, batch·W, 3)``.
    """
    batch = int(check_range("batch_size", batch, 1, MAX_BATCH, integer=True))
    strip = _rgb("strip", strip)
    if strip.shape[1] % batch:
        raise InputError("picture_shape", "{name} must be a {wanted} picture (got shape {got}).", name="strip",
                         wanted=f"H×({batch}·W)×3", got=str(tuple(strip.shape))[:40])
    return np.split(strip, batch, axis=1)


def replace_pictures(strip: np.ndarray, batch: int, blocked: Sequence[bool] | None) -> np.ndarray:
    """``strip`` with its pictures flagged in ``blocked`` replaced by :func:`blocked_picture` (no check run).

    For the latent view of a step whose x̂₀ was blocked. ``blocked`` None or all False: ``strip`` itself.

    Raises:
        InputError: as :func:`split_strip`; ``picture_shape`` when ``blocked`` has not ``batch`` flags.
    """
    parts = split_strip(strip, batch)
    if blocked is None or not any(blocked):
        return strip
    if len(blocked) != batch:
        raise InputError("picture_shape", "{name} must be a {wanted} picture (got shape {got}).", name="blocked",
                         wanted=f"{batch} flags for", got=str(len(blocked)))
    out = np.array(strip, copy=True)
    height, width = parts[0].shape[:2]
    for i, flag in enumerate(blocked):
        if flag:
            out[:, i * width:(i + 1) * width] = blocked_picture(height, width)
    return out


class Verdicts:
    """What the filter said about each picture of one run, step by step (plain data: it is pickled with the run).

    ``enabled`` False (no filter) blocks nothing. Written by the run's thread while other
    threads read it; a lock keeps both apart (it is not pickled).
    """

    def __init__(self, batch: int, enabled: bool = True) -> None:
        self.batch = int(check_range("batch_size", batch, 1, MAX_BATCH, integer=True))
        self.enabled = bool(enabled)
        self.steps: dict[int, tuple[bool, ...]] = {}
        self.final: tuple[bool, ...] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def add(self, step: int, flags: Sequence[bool]) -> None:
        """Record the check of step ``step``'s x̂₀ (flags of earlier checks of that step are kept: OR)."""
        flags = self._flags(flags)
        with self._lock:
            old = self.steps.get(int(step), (False,) * self.batch)
            self.steps[int(step)] = tuple(a or b for a, b in zip(old, flags))

    def finish(self, flags: Sequence[bool] | None) -> None:
        """Record the check of the final pictures (None: not checked, e.g. no filter)."""
        flags = None if flags is None else self._flags(flags)
        with self._lock:
            self.final = flags

    def blocked_at(self, step: int) -> list[bool]:
        """Per picture: blocked at ``step``? (its final picture, or any of its x̂₀ up to ``step``, was blocked)."""
        with self._lock:
            out = list(self.final) if self.final is not None else [False] * self.batch
            for s, flags in self.steps.items():
                if s <= step:
                    out = [a or b for a, b in zip(out, flags)]
        return out

    def blocked(self) -> list[bool]:
        """Per picture, for the summary: its final picture was blocked (else: any of its x̂₀ was)."""
        with self._lock:
            if self.final is not None:
                return list(self.final)
            steps = list(self.steps.values())
        return [any(flags[i] for flags in steps) for i in range(self.batch)]

    def _flags(self, flags: Sequence[bool]) -> tuple[bool, ...]:
        if len(flags) != self.batch:
            raise InputError("picture_shape", "{name} must be a {wanted} picture (got shape {got}).",
                             name="blocked", wanted=f"{self.batch} flags for", got=str(len(flags)))
        return tuple(bool(f) for f in flags)


def screen_x0(content_filter: SafetyFilter | None, verdicts: Verdicts | None, step: int,
              strip: np.ndarray) -> np.ndarray:
    """The x̂₀ strip of step ``step`` as it may be shown: checked, recorded in ``verdicts``, blocked pictures replaced.

    Pictures already blocked at ``step`` are replaced without being checked again. No
    filter (``content_filter`` None): ``strip`` unchanged.
    """
    if content_filter is None or verdicts is None:
        return strip
    parts = split_strip(strip, verdicts.batch)
    before = verdicts.blocked_at(step)
    todo = [i for i, flag in enumerate(before) if not flag]
    found = content_filter.check([parts[i] for i in todo]) if todo else []
    flags = list(before)
    for i, flag in zip(todo, found):
        flags[i] = flag
    verdicts.add(step, flags)
    return replace_pictures(strip, verdicts.batch, verdicts.blocked_at(step))


def screen_latent(verdicts: Verdicts | None, step: int, strip: np.ndarray) -> np.ndarray:
    """The latent view of step ``step`` as it may be shown: pictures blocked at that step replaced (no check run).

    Call it after :func:`screen_x0` of the same step where both are shown.
    """
    if verdicts is None or not verdicts.enabled:
        return strip
    return replace_pictures(strip, verdicts.batch, verdicts.blocked_at(step))


def screen_images(content_filter: SafetyFilter | None, verdicts: Verdicts | None,
                  images: Sequence[Image.Image]) -> list[Image.Image]:
    """The final pictures as they may be shown; their flags become ``verdicts.final``. No filter: unchanged."""
    if content_filter is None or verdicts is None:
        return list(images)
    shown, flags = content_filter.filter_images(images)
    verdicts.finish(flags)
    return shown


def _rgb(name: str, value: Any) -> np.ndarray:
    """``value`` as a uint8 ``(H, W, 3)`` array with at least one pixel."""
    if value is None:
        raise InputError("picture_missing", "Please provide {name}.", name=name)
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputError("picture_shape", "{name} must be a {wanted} picture (got shape {got}).", name=name,
                         wanted="H×W×3 uint8", got=f"{tuple(array.shape)} {array.dtype}"[:40])
    return array
