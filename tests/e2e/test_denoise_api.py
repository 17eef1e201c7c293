"""End-to-end: lesson 5 through gradio_client on the real app, with real files (good and bad).

Every PSNR the app reports is recomputed here from the PNGs it returned. Images are
kept small (working size 96–160 pixels) so the suite stays fast on a 2-core CPU.
"""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from diffusion.lessons.denoising import classical
from diffusion.models import registry as models
from diffusion.examples import list_examples

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not models.denoiser_available(), reason="the denoiser model is not installed")]

PHOTO = next(p for p in list_examples() if p.name == "astronaut.png")
OUT = ("status", "notice", "gallery", "table", "zoom", "path", "run_id", "summary")
FAST = ["diffusion_one_step", "gaussian_heat"]


def denoise(client, image, **changes):
    args = dict(sigma=25, seed=0, methods=FAST, sigma_override=0, steps=4, eta=0.0, color="opponent",
                max_side=128, zoom_x=50, zoom_y=50, zoom_size=32, lang="en")
    args.update(changes)
    out = client.predict(handle_file(str(image)), *args.values(), api_name="/denoise")
    return dict(zip(OUT, out))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def test_every_reported_psnr_is_that_of_the_returned_image(client):
    methods = ["diffusion_one_step", "diffusion_multi_step", "gaussian_heat", "total_variation", "nl_means"]
    if classical.bm3d_available():
        methods.append("bm3d")
    out = denoise(client, PHOTO, methods=methods, max_side=96, steps=3)
    summary = out["summary"]
    assert set(summary) >= {"sigma", "sigma_estimated", "methods"} and summary["sigma"] == 25
    assert list(summary["methods"]) == methods and any("one_step" in name for name in summary["methods"])
    gallery = out["gallery"]
    assert len(gallery) == 2 + len(methods)  # clean, noisy, then one image per method
    clean = pixels(gallery[0]["image"])
    assert clean.shape == (96, 96, 3)
    for item, name in zip(gallery[2:], methods):
        returned = pixels(item["image"])
        reported = summary["methods"][name]
        assert reported["psnr"] == pytest.approx(peak_signal_noise_ratio(clean, returned, data_range=255), abs=1e-3)
        assert 0 < reported["ssim"] <= 1 and reported["seconds"] >= 0
        shown = float(re.search(r"([\d.]+) dB", item["caption"]).group(1))
        assert shown == pytest.approx(reported["psnr"], abs=0.006)
    noisy = pixels(gallery[1]["image"])
    assert summary["noisy"]["psnr"] == pytest.approx(peak_signal_noise_ratio(clean, noisy, data_range=255), abs=1e-3)
    assert summary["methods"]["diffusion_one_step"]["psnr"] > summary["noisy"]["psnr"] + 5
    assert len(out["path"]) >= 2 and "t = 0" in out["path"][-1]["caption"]
    assert [row[0] for row in out["table"]["data"]][0] == "Noisy input"
    assert "t* =" in out["notice"] and "Done: " in out["status"]
    # The zoom view redraws from the stored result; an unknown id gets a clear message.
    assert client.predict(out["run_id"], 20, 70, 16, "zh-CN", api_name="/denoise_zoom")
    with pytest.raises(AppError, match="no longer on the server"):
        client.predict("0" * 32, 50, 50, 64, "en", api_name="/denoise_zoom")


def test_the_same_seed_gives_the_same_pixels(client):
    a, b = denoise(client, PHOTO, seed=3), denoise(client, PHOTO, seed=3)
    c = denoise(client, PHOTO, seed=4)
    np.testing.assert_array_equal(pixels(a["gallery"][1]["image"]), pixels(b["gallery"][1]["image"]))
    assert not np.array_equal(pixels(a["gallery"][1]["image"]), pixels(c["gallery"][1]["image"]))
    assert a["summary"]["methods"] == {k: {**v, "seconds": a["summary"]["methods"][k]["seconds"]}
                                       for k, v in b["summary"]["methods"].items()}


def _write_files(folder):
    yy, xx = np.mgrid[0:90, 0:140]
    base = np.clip(120 + 60 * np.sin(xx / 9) * np.cos(yy / 7), 0, 255)
    rgb = np.stack([base, base[::-1], 255 - base], axis=2).astype(np.uint8)
    files = {}
    files["rgba.png"] = folder / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(base.shape, 200, np.uint8)])).save(files["rgba.png"])
    files["grey16.png"] = folder / "grey16.png"
    Image.fromarray((base * 257).astype(np.uint16)).save(files["grey16.png"])
    files["rotated.jpg"] = folder / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.fromarray(rgb).save(files["rotated.jpg"], quality=95, exif=exif)
    files["photo.webp"] = folder / "photo.webp"
    Image.fromarray(rgb).save(files["photo.webp"], quality=90)
    files["palette.gif"] = folder / "palette.gif"
    Image.fromarray(rgb).convert("P").save(files["palette.gif"])
    return files


def test_real_files_of_every_kind(client, tmp_path):
    files = _write_files(tmp_path)
    shapes = {name: pixels(denoise(client, path)["gallery"][0]["image"]).shape for name, path in files.items()}
    assert shapes["rgba.png"] == (82, 128, 3)
    assert shapes["grey16.png"] == (82, 128, 1)  # grey stays grey
    assert shapes["rotated.jpg"] == (128, 82, 3)  # EXIF orientation applied: portrait
    assert shapes["photo.webp"] == shapes["palette.gif"] == (82, 128, 3)


def test_an_already_noisy_photo_gets_an_estimate_and_an_override(client, tmp_path):
    clean = pixels(PHOTO)
    noisy = np.clip(np.rint(clean + np.random.default_rng(1).normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    path = tmp_path / "noisy.png"
    Image.fromarray(noisy).save(path)
    out = denoise(client, path, sigma=0, max_side=96)
    summary = out["summary"]
    assert summary["sigma_estimated"] == pytest.approx(15, rel=0.2) and summary["sigma"] == summary["sigma_estimated"]
    assert summary["methods"]["diffusion_one_step"]["psnr"] is None  # no clean original, no PSNR
    assert "cropped to its centre" in out["notice"] and "estimated σ" in out["notice"]
    assert pixels(out["gallery"][0]["image"]).shape == (96, 96, 3)  # a crop, not a shrink
    override = denoise(client, path, sigma=0, sigma_override=30, max_side=96)["summary"]
    assert override["sigma"] == 30 and override["sigma_estimated"] == pytest.approx(summary["sigma_estimated"])


def _huge_png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bad_uploads_get_clear_messages_and_the_server_keeps_serving(client, tmp_path):
    good = tmp_path / "good.png"
    Image.open(PHOTO).save(good)
    bad = {"not_an_image.png": b"Dear teacher, this is not a picture.", "empty.jpg": b"",
           "truncated.png": good.read_bytes()[:400], "huge.png": _huge_png()}
    unreadable = "could not be read as an image"
    expected = {"not_an_image.png": unreadable, "empty.jpg": unreadable, "truncated.png": unreadable,
                "huge.png": "too large"}
    for name, content in bad.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AppError, match=expected[name]):
            denoise(client, path)
    # gradio checks slider bounds and choices itself (in English) before our own checks run
    with pytest.raises(AppError, match="between 0 and 100|greater than maximum"):
        denoise(client, good, sigma=400)
    with pytest.raises(AppError, match="must be one of|not in the list of choices"):
        denoise(client, good, methods=["median_filter"])
    with pytest.raises(AppError, match="at least one method"):
        denoise(client, good, methods=[])
    # and it still works
    assert denoise(client, good)["summary"]["methods"]["gaussian_heat"]["psnr"] > 20


def test_a_broken_model_leaves_the_classical_methods_working(client, tmp_path, monkeypatch):
    broken = tmp_path / "photo-denoiser"
    (broken / "unet").mkdir(parents=True)
    (broken / "scheduler").mkdir()
    (broken / "unet" / "config.json").write_text("{}")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    (broken / "scheduler" / "scheduler_config.json").write_text("{}")
    (broken / "denoiser.json").write_text("{}")
    monkeypatch.setitem(models.MODELS, models.DENOISER, models.MODELS[models.DENOISER].at(broken))
    out = denoise(client, PHOTO)
    assert list(out["summary"]["methods"]) == ["gaussian_heat"]
    assert "not available" in out["notice"]
    with pytest.raises(AppError, match="denoiser model is not available"):  # only the model was asked for
        denoise(client, PHOTO, methods=["diffusion_one_step"])
