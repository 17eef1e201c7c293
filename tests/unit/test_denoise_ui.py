"""Lesson 5's tab logic: uploads, noise, σ estimate and override, crops, validation, shown numbers."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

import app
from diffusion.models.denoiser_net import NoiseLevels, sigma_to_model
from diffusion.errors import InputError
from diffusion.examples import list_examples
from diffusion.schedule import make_scheduler
from diffusion.ui import denoising as tab

PHOTO = next(p for p in list_examples() if p.name == "chelsea.png")


@pytest.fixture(scope="module")
def tr():
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    return app.create_app(settings)[1]


def _noisy_png(path, size=(600, 500), sigma=20.0, mode="RGB"):
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = 120 + 50 * np.sin(xx / 23) + 40 * np.cos(yy / 31)
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    pixels = base[:, :, None] + sigma * rng.standard_normal((size[1], size[0], channels))
    array = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    Image.fromarray(array if channels == 3 else array[:, :, 0]).save(path)
    return path


def test_synthetic_noise_is_8_bit_seeded_and_keeps_the_clean_image():
    a = tab.prepare(str(PHOTO), 25, 3, 0, 384)
    b = tab.prepare(str(PHOTO), 25, 3, 0, 384)
    np.testing.assert_array_equal(a.noisy, b.noisy)
    assert a.clean.dtype == np.uint8 and a.clean.shape == (170, 256, 3)
    assert np.all(a.noisy * 255 == np.rint(a.noisy * 255))
    assert a.sigma == 25 and a.sigma_estimated == pytest.approx(25, rel=0.15)
    assert a.notices[0][0] == "denoising.synthetic"
    assert not np.array_equal(a.noisy, tab.prepare(str(PHOTO), 25, 4, 0, 384).noisy)


def test_a_noisy_upload_is_cropped_not_shrunk_and_its_sigma_estimated(tmp_path):
    path = _noisy_png(tmp_path / "noisy.png")
    p = tab.prepare(str(path), 0, 0, 0, 256)
    assert p.clean is None and p.noisy.shape == (256, 256, 3)
    assert p.sigma == pytest.approx(20, rel=0.15) and p.sigma == p.sigma_estimated
    keys = [k for k, _ in p.notices]
    assert keys[0] == "denoising.estimated" and "denoising.cropped" in keys and "denoising.no_truth" in keys
    override = tab.prepare(str(path), 0, 0, 12.5, 256)
    assert override.sigma == 12.5 and override.notices[0][0] == "denoising.override"
    shrunk = tab.prepare(str(path), 25, 0, 0, 256)  # a clean upload: shrink it
    assert shrunk.clean.shape == (213, 256, 3) and ("denoising.resized" in [k for k, _ in shrunk.notices])


def test_grey_uploads_stay_one_channel(tmp_path):
    grey = _noisy_png(tmp_path / "grey.png", size=(64, 48), mode="L")
    assert tab.prepare(str(grey), 10, 0, 0, 384).clean.shape == (48, 64, 1)
    rgb_grey = tmp_path / "rgb_grey.png"
    Image.open(grey).convert("RGB").save(rgb_grey)
    assert tab.prepare(str(rgb_grey), 10, 0, 0, 384).clean.shape == (48, 64, 1)
    sixteen = tmp_path / "sixteen.png"
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16)).save(sixteen)
    assert tab.prepare(str(sixteen), 10, 0, 0, 384).clean.shape == (48, 64, 1)


def test_a_clean_looking_upload_and_huge_estimates_are_explained(tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(flat)
    keys = [k for k, _ in tab.prepare(str(flat), 0, 0, 0, 384).notices]
    assert "denoising.clean_looking" in keys
    wild = tmp_path / "wild.png"  # salt and pepper: a spread of 127 grey levels
    Image.fromarray(np.random.default_rng(0).choice([0, 255], (128, 128)).astype(np.uint8)).save(wild)
    p = tab.prepare(str(wild), 0, 0, 0, 384)
    assert p.sigma_estimated > 100
    assert p.sigma == 100 and "denoising.clamped" in [k for k, _ in p.notices]


@pytest.mark.parametrize("args, code", [
    ((None, 25, 0, 0, 384), "image_missing_denoise"),
    ((str(PHOTO), 101, 0, 0, 384), "out_of_range"),
    ((str(PHOTO), float("nan"), 0, 0, 384), "not_a_number"),
    ((str(PHOTO), 25, 1.5, 0, 384), "not_an_integer"),
    ((str(PHOTO), 25, -1, 0, 384), "out_of_range"),
    ((str(PHOTO), 0, 0, -3, 384), "out_of_range"),
    ((str(PHOTO), 25, 0, 0, 10_000), "out_of_range"),
    ((str(PHOTO), "25; rm -rf /", 0, 0, 384), "not_a_number"),
])
def test_bad_parameters_are_refused_with_a_code(args, code):
    with pytest.raises(InputError) as info:
        tab.prepare(*args)
    assert info.value.code == code


def test_bad_files_are_refused(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    good = tmp_path / "good.png"
    Image.new("RGB", (200, 200), (10, 20, 30)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:300])
    for path in (text, empty, truncated, tmp_path / "missing.png"):
        with pytest.raises(InputError) as info:
            tab.prepare(str(path), 25, 0, 0, 384)
        assert info.value.code == "image_unreadable"


def test_methods_are_checked_and_put_in_lesson_order():
    assert tab.check_methods(["bm3d", "diffusion_one_step"]) == ["diffusion_one_step", "bm3d"]
    for bad, code in (([], "no_methods"), (["median"], "bad_choice"), ("x" * 10, "bad_choice"),
                      ([1, 2], "bad_choice"), (["bm3d"] * 40, "bad_choice"), (None, "bad_choice")):
        with pytest.raises(InputError) as info:
            tab.check_methods(bad)
        assert info.value.code == code


def test_the_noise_level_numbers_shown_are_the_ones_the_denoiser_uses(tr):
    levels = NoiseLevels.from_scheduler(make_scheduler("linear", 1000))
    fake = type("D", (), {"levels": levels})()
    for lang in ("en", "zh-CN"):
        text = tab.noise_levels_text(tr, lang, 25.0, fake)
        numbers = [float(n) for n in re.findall(r"\d+\.\d+", text)]
        sigma_model, alpha_bar, t_star = numbers[2], numbers[3], numbers[4]
        assert sigma_model == pytest.approx(float(sigma_to_model(25.0)), abs=5e-5)
        tau = levels.tau(sigma_to_model(25.0))
        assert alpha_bar == pytest.approx(float(levels.alpha_bar(tau)), abs=5e-5)  # ᾱ(t*) from the schedule
        assert t_star == pytest.approx(float(tau) + 1, abs=0.05)


def test_the_result_store_is_bounded_and_ids_are_unguessable():
    store = tab.RunStore(3 * 64 * 64 * 3, missing_code="result_expired", expired_code="result_expired")
    image = np.zeros((64, 64, 3), np.uint8)
    ids = [store.add(tab.Finished(image, [])) for _ in range(5)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    store.get(ids[-1])
    for old in ids[:2]:
        with pytest.raises(InputError):
            store.get(old)
    for bad in (None, 3, "../etc/passwd"):
        with pytest.raises(InputError):
            store.get(bad)


def test_methods_run_in_a_worker_that_reports_progress_and_stops_when_closed():
    import threading
    import time

    import torch

    from diffusion.reverse import StepInfo, should_stop
    from diffusion.serving.live import LiveRun

    def loop(total, callback, stop, ended=None):
        """A loop on the run contract: report each step, poll stop after it."""
        try:
            x = torch.zeros(1)
            for i in range(total):
                time.sleep(0.02)
                callback(StepInfo(step=i, total=total, t=total - i, alpha_bar=0.5, x_t=x, x0_pred=x, eps_pred=x))
                if should_stop(stop, i + 1, total):
                    return "stopped"
            return "result"
        finally:
            if ended is not None:
                ended.set()

    live = LiveRun(lambda callback, stop: loop(3, callback, stop))
    seen = [info for info in live.wait(interval=0.01)]
    assert live.result == "result"
    steps = [info.step for info in seen if info is not None]
    assert steps == sorted(set(steps)) and steps[-1] >= 1  # progress was seen, in order, near the end

    ended = threading.Event()
    live = LiveRun(lambda callback, stop: loop(10_000, callback, stop, ended))
    waiting = live.wait(interval=0.01)
    next(waiting)
    live.stop()  # what a cancelled event does, in the handler's finally block
    assert ended.wait(2.0) and live.done.wait(2.0) and live.result == "stopped"

    def failing(callback, stop):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        list(LiveRun(failing).wait(interval=0.01))


def test_the_noisy_example_has_the_noise_its_readme_states():
    from diffusion.examples import NOISY_SIGMA

    noisy = next(p for p in list_examples(noisy=True) if p.name == "chelsea-noisy.png")
    assert noisy not in list_examples()  # lesson 2 shows clean pictures only
    clean = np.asarray(Image.open(PHOTO), dtype=np.float64)
    residual = np.asarray(Image.open(noisy), dtype=np.float64) - clean
    assert residual.std() == pytest.approx(NOISY_SIGMA, rel=0.05)
    assert tab.prepare(str(noisy), 0, 0, 0, 384).sigma == pytest.approx(NOISY_SIGMA, rel=0.15)
