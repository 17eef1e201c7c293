"""Lesson 7, anomaly detection: the pictures it is tested on, made offline, and its bundled examples.

Every set is a uint8 ``(N, 28, 28)`` array in the digit model's own format (white ink on
black, framed like MNIST by :func:`~diffusion.lessons.applications.anomaly.prepare_picture`),
made deterministically from a seed:

* ``letters``: Latin letters A-Z and a-z in fonts installed on the machine;
* ``cjk``: common Chinese characters in WenQuanYi Micro Hei;
* ``shapes``: lesson 6's procedural scenes (:mod:`diffusion.datasets.shapes`) drawn at 28×28;
* ``noise``: i.i.d. uniform pixels and smoothed (blob-like) noise;
* ``upside_down``: digits turned by 180°. Several digits (0, 1, 8, and 6 ↔ 9) look like
  digits upside down too, so no detector should separate this set well: it shows the
  limit of "is this a likely digit?".

The *evaluation* sets and the *development* sets (used to choose the score's settings)
never share a font, a character, or a seed, so the reported numbers were not tuned on.

:func:`auroc` and :func:`false_alarm_at_detection` measure how well a score separates a set
from the real digits. :func:`render_examples` wrote the bundled example pictures (the PNGs
under ``assets/examples/anomaly/``); :func:`example_paths` and :func:`examples` read them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from diffusion.datasets import shapes
from diffusion.errors import InputError
from diffusion.images import load_image
from diffusion.lessons.applications.anomaly import prepare_picture

FONTS_DIR = Path("/usr/share/fonts/truetype")
EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "assets" / "examples" / "anomaly"
LATIN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Two disjoint lists of frequent Chinese characters: one to evaluate on, one to develop with.
CJK_EVAL = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对"
            "可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同"
            "三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定")
CJK_DEV = ("女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化"
           "由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应"
           "路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许")
EVAL_FONTS = ("dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSans-Oblique.ttf",
              "dejavu/DejaVuSans-BoldOblique.ttf", "dejavu/DejaVuSansCondensed.ttf",
              "dejavu/DejaVuSansCondensed-Bold.ttf")
DEV_FONTS = ("dejavu/DejaVuSerif.ttf", "dejavu/DejaVuSerif-Bold.ttf", "dejavu/DejaVuSerif-Italic.ttf",
             "dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSansMono-Bold.ttf")
CJK_FONT = "wqy/wqy-microhei.ttc"
SETS = ("letters", "cjk", "shapes", "noise", "upside_down")
_CANVAS = 112  # glyphs are drawn this large, then framed down to 28×28 like any upload


def font_path(name: str) -> Path:
    """The installed font file ``name`` (relative to /usr/share/fonts/truetype).

    Raises:
        InputError: ``font_missing`` when the font is not installed.
    """
    path = FONTS_DIR / name
    if not path.is_file():
        raise InputError("font_missing", "The font {path} is not installed; the outlier sets need it.",
                         path=str(path))
    return path


def render_glyph(char: str, font: str | Path, rng: np.random.Generator) -> np.ndarray:
    """One character, white on black, on a 112×112 canvas: uint8 ``(112, 112)``.

    A small seeded rotation (±10°) and stroke width (0-2 px at this size) vary each copy,
    as handwriting varies.
    """
    size = int(rng.integers(64, 84))
    stroke = int(rng.integers(0, 3))
    face = ImageFont.truetype(str(font), size)
    image = Image.new("L", (_CANVAS, _CANVAS), 0)
    ImageDraw.Draw(image).text((_CANVAS / 2, _CANVAS / 2), char, fill=255, font=face, anchor="mm",
                               stroke_width=stroke, stroke_fill=255)
    return np.asarray(image.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR))


def _framed(pictures: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([prepare_picture(p) for p in pictures])


def _draw_glyphs(chars: str, fonts: Sequence[str], n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    paths = [font_path(f) for f in fonts]
    pictures, drawn = [], []
    for _ in range(n):
        char = chars[rng.integers(len(chars))]
        pictures.append(render_glyph(char, paths[rng.integers(len(paths))], rng))
        drawn.append(char)
    return pictures, drawn


def glyphs(chars: str, fonts: Sequence[str], n: int, seed: int) -> np.ndarray:
    """``n`` characters drawn from ``chars`` × ``fonts`` (seeded), framed as digits: uint8 ``(n, 28, 28)``."""
    return _framed(_draw_glyphs(chars, fonts, n, seed)[0])


def letter_labels(n: int = 500, development: bool = False) -> list[str]:
    """Which letter each picture of :func:`outlier_sets`' ``letters`` set shows (for per-letter results)."""
    fonts, seed = (DEV_FONTS, 101) if development else (EVAL_FONTS, 1)
    return _draw_glyphs(LATIN, fonts, n, seed)[1]


def shape_pictures(n: int, seed: int) -> np.ndarray:
    """``n`` of lesson 6's scenes drawn at 28×28 (RGB), framed as digits: uint8 ``(n, 28, 28)``."""
    rng = np.random.default_rng(seed)
    return _framed([shapes.render(shapes.random_scene(rng, heldout=None), size=28) for _ in range(n)])


def noise_pictures(n: int, seed: int) -> np.ndarray:
    """``n`` noise pictures, framed as digits: half i.i.d. uniform pixels, half blurred noise (blobs)."""
    rng = np.random.default_rng(seed)
    pictures = []
    for k in range(n):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        if k % 2:
            radius = float(rng.uniform(1.0, 2.5))
            blurred = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius)), dtype=np.float64)
            span = max(np.ptp(blurred), 1.0)
            pixels = np.rint((blurred - blurred.min()) / span * 255).astype(np.uint8)
        pictures.append(pixels)
    return _framed(pictures)


def upside_down(digits: np.ndarray) -> np.ndarray:
    """Digits turned by 180° (uint8 ``(N, 28, 28)`` in, the same out)."""
    return np.ascontiguousarray(np.asarray(digits)[:, ::-1, ::-1])


def outlier_sets(heldout_digits: np.ndarray, n: int = 500, development: bool = False) -> dict[str, np.ndarray]:
    """The out-of-distribution sets of the evaluation (or, with ``development``, of the tuning).

    Args:
        heldout_digits: uint8 ``(N, 28, 28)`` real digits to turn upside down.
        n: Pictures per generated set (letters, CJK, shapes, noise).
        development: The disjoint sets used to choose the score's settings (other fonts,
            other characters, other seeds); see the module docstring.

    Returns:
        ``{name: uint8 (M, 28, 28)}`` for the names in :data:`SETS`.
    """
    base = 100 if development else 0
    fonts, cjk = (DEV_FONTS, CJK_DEV) if development else (EVAL_FONTS, CJK_EVAL)
    return {
        "letters": glyphs(LATIN, fonts, n, seed=base + 1),
        "cjk": glyphs(cjk, (CJK_FONT,), n, seed=base + 2),
        "shapes": shape_pictures(n, seed=base + 3),
        "noise": noise_pictures(n, seed=base + 4),
        "upside_down": upside_down(heldout_digits),
    }


def _finite_1d(name: str, values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise InputError("anomaly_bad_scores", "{name} must be a non-empty 1-D array of finite numbers.", name=name)
    return array


def auroc(normal: Sequence[float], anomalous: Sequence[float]) -> float:
    """Area under the ROC curve: P(score of an anomaly > score of a normal picture), ties half.

    The Mann-Whitney U statistic over ``n·m`` (Hanley & McNeil 1982), from average ranks:
    ``AUROC = (R_anomalous - m(m+1)/2) / (n m)``. 1 separates perfectly, 0.5 is chance.
    """
    a, b = _finite_1d("normal", normal), _finite_1d("anomalous", anomalous)
    both = np.concatenate([a, b])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    first_rank = np.concatenate([[0], np.cumsum(counts)[:-1]]) + 1  # rank of each distinct value's first copy
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]              # ties share their average rank
    m = len(b)
    return float((ranks[len(a):].sum() - m * (m + 1) / 2.0) / (len(a) * m))


def false_alarm_at_detection(normal: Sequence[float], anomalous: Sequence[float], detection: float = 0.95) -> float:
    """Share of normal pictures flagged by the threshold that detects ``detection`` of the anomalies.

    The threshold τ is the highest with ``mean(anomalous ≥ τ) ≥ detection``; the result is
    ``mean(normal ≥ τ)`` ("FPR at 95 % TPR", Liang et al. 2018).
    """
    a, b = _finite_1d("normal", normal), _finite_1d("anomalous", anomalous)
    if not 0.0 < float(detection) <= 1.0:
        raise InputError("out_of_range", "detection must be in (0, 1] (got {value}).", value=detection)
    tau = np.sort(b)[::-1][math.ceil(float(detection) * len(b) - 1e-9) - 1]
    return float((a >= tau).mean())


EXAMPLES = ("digit_3", "digit_7", "letter", "cjk", "shape", "noise")


def render_examples(folder: str | Path, heldout_digits: np.ndarray, heldout_labels: np.ndarray) -> dict[str, Path]:
    """Write the bundled example pictures as PNGs into ``folder`` (how the shipped ones were made).

    Two held-out digits (the first 3 and the first 7 of the held-out split, 28×28 white on
    black, as the model sees digits), the letter "A" and the character "字" drawn black on
    white at 112×112, one of lesson 6's scenes (a red star on yellow, 64×64 RGB) and 28×28
    uniform noise (seed 0): the last four need :func:`prepare_picture`'s framing and inversion.

    Returns:
        ``{name: path}`` for the names in :data:`EXAMPLES`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(heldout_labels)
    rng = np.random.default_rng(0)

    def on_paper(char: str, font: str) -> np.ndarray:
        face = ImageFont.truetype(str(font_path(font)), 80)
        image = Image.new("L", (_CANVAS, _CANVAS), 255)
        ImageDraw.Draw(image).text((_CANVAS / 2, _CANVAS / 2), char, fill=0, font=face, anchor="mm")
        return np.asarray(image)

    pictures = {
        "digit_3": heldout_digits[np.flatnonzero(labels == 3)[0]],
        "digit_7": heldout_digits[np.flatnonzero(labels == 7)[0]],
        "letter": on_paper("A", EVAL_FONTS[0]),
        "cjk": on_paper("字", CJK_FONT),
        "shape": shapes.render(shapes.Scene("red", "star", "large", "center", "yellow")),
        "noise": rng.integers(0, 256, (28, 28), dtype=np.uint8),
    }
    paths = {}
    for name, pixels in pictures.items():
        paths[name] = folder / f"{name}.png"
        Image.fromarray(np.ascontiguousarray(pixels)).save(paths[name], optimize=True)
    return paths


def example_paths(folder: str | Path = EXAMPLES_DIR) -> dict[str, Path]:
    """The bundled example PNGs by name (for the tab's example gallery), in :data:`EXAMPLES` order.

    Raises:
        InputError: ``anomaly_examples_missing`` when one of them is not there.
    """
    paths = {name: Path(folder) / f"{name}.png" for name in EXAMPLES}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise InputError("anomaly_examples_missing", "The example pictures {names} are missing.",
                         names=", ".join(missing))
    return paths


def examples(folder: str | Path = EXAMPLES_DIR) -> dict[str, np.ndarray]:
    """The bundled example pictures as uint8 arrays (grey ``(H, W)`` or RGB ``(H, W, 3)``), by name."""
    out = {}
    for name, path in example_paths(folder).items():
        pixels, _ = load_image(path, max_side=256, mode="RGB" if name == "shape" else "L")
        pixels = np.rint((pixels + 1.0) * 127.5).astype(np.uint8)
        out[name] = pixels if name == "shape" else pixels[:, :, 0]
    return out
