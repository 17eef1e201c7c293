"""Safe loading of user images into the float arrays the lessons work on.

Uploads are untrusted: the pixel count is checked from the header before any
pixel is decoded (decompression bombs), any Pillow mode is converted to 8-bit
RGB or grey, and every failure becomes an :class:`~diffusion.errors.InputError`
with one of the codes ``image_missing``, ``image_unreadable``,
``image_too_large`` or ``image_too_small``.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from diffusion.errors import InputError, check_choice, check_range

MAX_INPUT_PIXELS = 40_000_000
MIN_SIDE = 8

# Pillow then refuses bombs by itself too: it warns above this many pixels and
# raises above twice as many, even where this module's own check is bypassed.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > MAX_INPUT_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS


def _unreadable(detail: str = "it is not an image file Pillow can decode") -> InputError:
    return InputError("image_unreadable", "The image could not be read: {detail}.", detail=detail)


def _too_large(width: int, height: int) -> InputError:
    return InputError(
        "image_too_large",
        "The image has {pixels} pixels ({width}×{height}); at most {limit} are accepted.",
        pixels=width * height, width=width, height=height, limit=MAX_INPUT_PIXELS,
    )


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_INPUT_PIXELS:
        raise _too_large(width, height)


def _open(source: Any) -> Image.Image:
    """A lazily opened Pillow image for any supported source (nothing decoded yet)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise _unreadable("the file is empty")
        stream: Any = io.BytesIO(bytes(source))
    elif isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise _unreadable("there is no file at that path")
        stream = source
    else:
        raise _unreadable(f"unsupported input type {type(source).__name__}")
    try:
        return Image.open(stream)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            "image_too_large", "The image is too large; at most {limit} pixels are accepted.",
            limit=MAX_INPUT_PIXELS,
        ) from None
    except Exception:  # Pillow raises many types for bad data; all mean "not an image".
        raise _unreadable() from None


def _from_array(array: np.ndarray) -> Image.Image:
    """Pillow image from an (H, W), (H, W, 1|3|4) array: uint8, uint16, bool or float in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise _unreadable(f"an array of shape {array.shape} is not an image")
    _check_pixels(array.shape[1], array.shape[0])
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise _unreadable("the array contains NaN or infinite values")
        # Float images follow the scikit-image convention of [0, 1].
        array = np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        array = _integers_to_uint8(array)
    else:
        raise _unreadable(f"arrays of type {array.dtype} are not images")
    return Image.fromarray(np.ascontiguousarray(array))


def _integers_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    array = np.clip(array.astype(np.int64), 0, None)
    top = int(array.max()) if array.size else 0
    if array.dtype == np.uint16 or 255 < top <= 65535:
        # Full 16-bit range: 65535 / 257 = 255 exactly.
        return np.rint(array / 257.0).astype(np.uint8)
    if top <= 255:
        return array.astype(np.uint8)
    return np.rint(array * (255.0 / top)).astype(np.uint8)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """8-bit RGB or L; transparency is composited over white."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        image = Image.fromarray(_integers_to_uint8(np.asarray(image)))
    elif image.mode == "F":
        image = _from_array(np.asarray(image))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode != mode:
        image = image.convert(mode)
    return image


MAX_UPLOAD_BYTES = 64 * 1024 * 1024  # a server's upload cap is lower; this guards direct calls


_UPLOAD_ROOTS: tuple[str, ...] | None = None  # None: any file (notebooks, the CLIs); see restrict_uploads


def restrict_uploads(folders: Any) -> None:
    """Accept uploads only from inside ``folders`` (the server's upload folder and the examples).

    A server must never open a path a visitor names: an API caller can send any path as
    an "uploaded" image, and the noised or denoised picture would show that file.
    """
    global _UPLOAD_ROOTS
    _UPLOAD_ROOTS = tuple(os.path.realpath(str(f)) for f in folders)


def check_upload(path: Any) -> str:
    """An uploaded file's path, refused before reading if it is missing, not a file, too big,
    or (on a server, see :func:`restrict_uploads`) outside the folders uploads live in.

    Raises:
        InputError: ``image_missing`` or ``image_unreadable``.
    """
    if not path:
        raise InputError("image_missing", "Please provide an image.")
    path = str(path)
    if _UPLOAD_ROOTS is not None:
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in _UPLOAD_ROOTS):
            raise _unreadable()
    if not os.path.isfile(path) or os.path.getsize(path) > MAX_UPLOAD_BYTES:
        raise _unreadable()
    return path


def load_image(source: Any, *, max_side: int = 256, mode: str = "RGB") -> tuple[np.ndarray, dict[str, Any]]:
    """Load an image from an upload and scale it to the ``[-1, 1]`` float range.

    Applies the EXIF orientation, takes the first frame of animations, converts
    any mode (L, LA, P, RGBA, I;16, I, CMYK, 1, ...) to RGB or grey with
    transparency composited over white and 16-bit data scaled to 8 bits, then
    shrinks with LANCZOS so the long side is at most ``max_side`` (never enlarges).

    Args:
        source: A path, encoded bytes, a ``PIL.Image.Image`` or a numpy array
            ``(H, W)`` / ``(H, W, 1|3|4)`` of uint8, uint16, bool or float in [0, 1].
        max_side: Longest side of the result in pixels (8..4096).
        mode: ``"RGB"`` for ``(H, W, 3)`` or ``"L"`` for grey ``(H, W, 1)``.

    Returns:
        ``(pixels, info)``: float32 pixels in ``[-1, 1]`` and ``info`` with
        ``original_size`` (upright ``(w, h)`` before resizing), ``resized``
        (bool) and ``size`` (``(w, h)`` returned).

    Raises:
        InputError: ``image_missing``, ``image_unreadable``, ``image_too_large``
            or ``image_too_small`` (a side under 8 pixels, before or after resizing).
    """
    max_side = int(check_range("max_side", max_side, MIN_SIDE, 4096, integer=True))
    mode = check_choice("mode", mode, ("RGB", "L"))
    if source is None:
        raise InputError("image_missing", "Please provide an image.")
    image = _open(source)
    try:
        upright, (width, height) = _decode_upright(image, max_side, mode)
        if min(width, height) < MIN_SIDE:
            raise _too_small(width, height)
        if max(upright.size) > max_side:
            factor = max_side / max(upright.size)
            new_size = (max(1, round(upright.width * factor)), max(1, round(upright.height * factor)))
            upright = upright.resize(new_size, Image.Resampling.LANCZOS)
        if min(upright.size) < MIN_SIDE:
            raise _too_small(*upright.size)
        pixels = np.asarray(upright, dtype=np.float32) / 127.5 - 1.0
        size = upright.size
    finally:
        # Only images opened here are closed; a caller's PIL image stays usable.
        if image is not source:
            image.close()
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    info = {"original_size": (width, height), "resized": max(width, height) > max_side, "size": size}
    return pixels, info


def _decode_upright(image: Image.Image, max_side: int, mode: str) -> tuple[Image.Image, tuple[int, int]]:
    """Decoded first frame, upright and in ``mode``, with its upright full size."""
    try:
        # The header is read, the pixels are not: refuse before decoding.
        _check_pixels(*image.size)
        if min(image.size) < MIN_SIDE:
            raise _too_small(*image.size)
        if getattr(image, "is_animated", False):
            image.seek(0)
        width, height = image.size
        scale = max_side / max(width, height)
        if scale < 1 and image.format == "JPEG":
            # Let the JPEG decoder shrink by 2, 4 or 8 while decoding: much less memory.
            image.draft(None, (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))))
        image.load()
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # A malformed EXIF block should not make a good picture unusable.
            upright = image
        if upright.size != image.size:
            width, height = height, width
        return _to_mode(upright, mode), (width, height)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(*image.size) from None
    except Exception:  # Truncated or corrupt data surfaces only while decoding.
        raise _unreadable("the file is damaged or truncated") from None


def _too_small(width: int, height: int) -> InputError:
    return InputError(
        "image_too_small",
        "The image is {width}×{height} pixels; each side must be at least {minimum} pixels.",
        width=width, height=height, minimum=MIN_SIDE,
    )


def save_gif(frames: list[np.ndarray], path: str | Path, duration_ms: int = 80,
             hold_last_ms: int = 1500) -> Path:
    """Write uint8 frames (``(H, W)`` grey or ``(H, W, 3)`` RGB) as a looping GIF.

    Pillow's default palette search takes seconds on noisy frames; the fast
    octree quantiser takes milliseconds and looks the same at these sizes. The
    last frame is held for at least ``hold_last_ms`` before the animation loops.

    Returns:
        The path written.
    """
    if not frames:
        raise ValueError("a GIF needs at least one frame")
    images = [Image.fromarray(np.ascontiguousarray(f)).convert("RGB")
              .quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    durations = [duration_ms] * (len(images) - 1) + [max(duration_ms, hold_last_ms)]
    out = Path(path)
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return out
