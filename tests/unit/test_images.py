"""Image loading: every Pillow mode, orientation, animations, arrays and hostile input."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from diffusion.errors import InputError
from diffusion.examples import EXAMPLES_DIR, list_examples
from diffusion.images import MAX_INPUT_PIXELS, load_image

WHITE = 1.0
BLACK = -1.0


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def to_float(value: float) -> float:
    """8-bit level → the [-1, 1] value load_image returns."""
    return value / 127.5 - 1.0


def error_code(source, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load_image(source, **kwargs)
    return info.value.code


def test_rgb_round_trip_and_info():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x, info = load_image(encode(Image.fromarray(pixels)))
    assert x.dtype == np.float32 and x.shape == (20, 30, 3)
    np.testing.assert_allclose(x, pixels / 127.5 - 1.0, atol=1e-6)
    assert info == {"original_size": (30, 20), "resized": False, "size": (30, 20)}


def test_path_and_pil_sources(tmp_path):
    image = Image.new("RGB", (16, 12), (255, 0, 0))
    path = tmp_path / "red.png"
    image.save(path)
    for source in (path, str(path), image):
        x, info = load_image(source)
        assert info["size"] == (16, 12)
        np.testing.assert_allclose(x[0, 0], [WHITE, BLACK, BLACK])
    # The caller's image is left usable.
    assert image.getpixel((0, 0)) == (255, 0, 0)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (10, 10), 128), [to_float(128)] * 3),
        (Image.new("1", (10, 10), 1), [WHITE] * 3),
        (Image.new("1", (10, 10), 0), [BLACK] * 3),
        (Image.new("CMYK", (10, 10), (0, 255, 255, 0)), [WHITE, BLACK, BLACK]),
        (Image.new("LA", (10, 10), (0, 0)), [WHITE] * 3),  # fully transparent → white
        (Image.new("LA", (10, 10), (0, 255)), [BLACK] * 3),
        (Image.new("RGBA", (10, 10), (0, 0, 255, 0)), [WHITE] * 3),
        (Image.new("RGBA", (10, 10), (0, 0, 255, 255)), [BLACK, BLACK, WHITE]),
    ],
    ids=["L", "1-white", "1-black", "CMYK", "LA-clear", "LA-opaque", "RGBA-clear", "RGBA-opaque"],
)
def test_modes(image, expected):
    for source in (image, encode(image, "TIFF" if image.mode == "CMYK" else "PNG")):
        x, _ = load_image(source)
        assert x.shape == (10, 10, 3)
        np.testing.assert_allclose(x[5, 5], expected, atol=1e-6)


def test_half_transparent_red_over_white():
    x, _ = load_image(Image.new("RGBA", (10, 10), (255, 0, 0, 128)))
    # Alpha compositing: 0 · 128/255 + 255 · 127/255 = 127.
    np.testing.assert_allclose(x[0, 0], [WHITE, to_float(127), to_float(127)], atol=1.5 / 127.5)


def test_palette_with_and_without_transparency():
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    x, _ = load_image(encode(palette))
    np.testing.assert_allclose(x[0, 0], [BLACK, WHITE, BLACK])
    x, _ = load_image(encode(palette, transparency=1))
    np.testing.assert_allclose(x[0, 0], [WHITE, WHITE, WHITE])


def test_sixteen_bit_grey_is_scaled_not_clipped():
    levels = np.array([[0, 128 * 257, 65535, 1000]], dtype=np.uint16).repeat(8, axis=0).repeat(8, axis=1)
    image = Image.fromarray(levels)
    assert image.mode == "I;16"
    data = encode(image)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode.startswith("I")
    x, _ = load_image(data)
    assert x.shape == (8, 32, 3)
    np.testing.assert_allclose(x[0, [0, 8, 16, 24], 0], [BLACK, to_float(128), WHITE, to_float(round(1000 / 257))], atol=1e-6)


def test_thirty_two_bit_integer_mode():
    levels = np.array([[0, 65535]], dtype=np.int32).repeat(8, axis=0).repeat(8, axis=1)
    image = Image.fromarray(levels)
    assert image.mode == "I"
    x, _ = load_image(image)
    np.testing.assert_allclose(x[0, [0, 8], 0], [BLACK, WHITE])


def test_grey_output_mode():
    x, info = load_image(Image.new("RGB", (12, 9), (255, 255, 255)), mode="L")
    assert x.shape == (9, 12, 1) and info["size"] == (12, 9)
    np.testing.assert_allclose(x, WHITE)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    x, info = load_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert x.shape == (40, 20, 3)
    assert info["original_size"] == (20, 40) and info["size"] == (20, 40)
    # Turned clockwise, the left half ends up on top.
    assert x[5, 10, 0] > 0.8 and x[5, 10, 2] < -0.8
    assert x[35, 10, 2] > 0.8 and x[35, 10, 0] < -0.8


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(io.BytesIO(data)) as gif:
        assert gif.n_frames == 3
        gif.seek(2)
        x, _ = load_image(gif)  # even when the caller left it on a later frame
    np.testing.assert_allclose(x[8, 8], [WHITE, BLACK, BLACK])
    x, _ = load_image(data)
    np.testing.assert_allclose(x[8, 8], [WHITE, BLACK, BLACK])


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((9, 9), 255, np.uint8), [WHITE] * 3),
        (np.full((9, 9, 1), 0, np.uint8), [BLACK] * 3),
        (np.full((9, 9, 3), (255, 0, 255), np.uint8), [WHITE, BLACK, WHITE]),
        (np.full((9, 9, 4), (0, 0, 0, 0), np.uint8), [WHITE] * 3),
        (np.full((9, 9, 3), 65535, np.uint16), [WHITE] * 3),
        (np.full((9, 9, 3), 0.5, np.float32), [to_float(128)] * 3),
        (np.full((9, 9), 1.0, np.float64), [WHITE] * 3),
        (np.ones((9, 9), bool), [WHITE] * 3),
    ],
    ids=["HW-u8", "HW1-u8", "HW3-u8", "HW4-clear", "u16", "f32", "f64-gray", "bool"],
)
def test_numpy_inputs(array, expected):
    x, info = load_image(array)
    assert x.shape == (9, 9, 3) and info["size"] == (9, 9)
    np.testing.assert_allclose(x[4, 4], expected, atol=1e-6)


@pytest.mark.parametrize(
    "array",
    [np.zeros((9,), np.uint8), np.zeros((9, 9, 2), np.uint8), np.full((9, 9), np.nan), np.zeros((9, 9), complex)],
    ids=["1d", "2-channels", "nan", "complex"],
)
def test_bad_arrays_are_unreadable(array):
    assert error_code(array) == "image_unreadable"


def test_downsizes_long_side_and_never_enlarges():
    x, info = load_image(Image.new("RGB", (600, 400), (10, 20, 30)))
    assert x.shape == (171, 256, 3)
    assert info == {"original_size": (600, 400), "resized": True, "size": (256, 171)}
    x, info = load_image(Image.new("RGB", (30, 20)), max_side=256)
    assert info["size"] == (30, 20) and not info["resized"]


def test_large_jpeg_is_downsized():
    image = Image.new("RGB", (1600, 1200), (200, 100, 50))
    x, info = load_image(encode(image, "JPEG", quality=90), max_side=100)
    assert info == {"original_size": (1600, 1200), "resized": True, "size": (100, 75)}
    np.testing.assert_allclose(x[37, 50], [to_float(200), to_float(100), to_float(50)], atol=4 / 127.5)


def test_missing_and_unreadable_sources(tmp_path):
    assert error_code(None) == "image_missing"
    assert error_code(b"") == "image_unreadable"
    assert error_code(b"this is just some text, not a picture") == "image_unreadable"
    assert error_code(tmp_path / "absent.png") == "image_unreadable"
    assert error_code(12345) == "image_unreadable"
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = encode(Image.fromarray(noisy))
    assert error_code(png[: len(png) // 2]) == "image_unreadable"


def test_too_small():
    assert error_code(Image.new("RGB", (1, 1))) == "image_too_small"
    assert error_code(encode(Image.new("RGB", (7, 100)))) == "image_too_small"
    assert error_code(np.zeros((100, 7, 3), np.uint8)) == "image_too_small"
    load_image(Image.new("RGB", (8, 8)))
    # Shrinking 2000×10 to a long side of 256 would leave it 1 pixel tall.
    assert error_code(Image.new("L", (2000, 10))) == "image_too_small"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims the given size, with no pixel data at all."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_too_large_is_refused_from_the_header():
    assert error_code(png_header_only(20000, 20000)) == "image_too_large"
    # Between the limit and Pillow's own hard stop (twice the limit) Pillow only warns.
    side = int((MAX_INPUT_PIXELS * 1.2) ** 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert error_code(png_header_only(side, side)) == "image_too_large"
    assert error_code(np.zeros((MAX_INPUT_PIXELS // 8 + 1, 8), np.uint8)) == "image_too_large"
    assert Image.MAX_IMAGE_PIXELS <= MAX_INPUT_PIXELS


def test_bad_options():
    assert error_code(Image.new("RGB", (9, 9)), mode="CMYK") == "bad_choice"
    assert error_code(Image.new("RGB", (9, 9)), max_side=0) == "out_of_range"


def test_bundled_examples_load():
    names = [path.name for path in list_examples()]
    assert names == sorted(names)
    assert {"digit.png", "astronaut.png"} <= set(names)
    assert (EXAMPLES_DIR / "README.md").is_file()
    for path in list_examples():
        x, info = load_image(path)
        assert max(info["size"]) <= 256 and x.min() >= -1.0 and x.max() <= 1.0
        assert path.stat().st_size < 200_000


def test_a_server_opens_uploads_only_from_its_upload_folders(tmp_path, monkeypatch):
    from diffusion import images as core

    inside, outside = tmp_path / "uploads", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    for folder in (inside, outside):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "a.png")
    (inside / "link.png").symlink_to(outside / "a.png")  # a link out of the folder is outside too
    monkeypatch.setattr(core, "_UPLOAD_ROOTS", None)
    assert core.check_upload(outside / "a.png")  # notebooks and CLIs open any file
    core.restrict_uploads([inside])
    assert core.check_upload(inside / "a.png") == str(inside / "a.png")
    for path in (outside / "a.png", inside / "link.png", inside / ".." / "elsewhere" / "a.png"):
        with pytest.raises(InputError) as error:
            core.check_upload(path)
        assert error.value.code == "image_unreadable"
