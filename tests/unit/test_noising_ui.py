"""Lesson 2's tab handlers, called directly (no Blocks, no server) with a real Translator.

Pictures are checked pixel for pixel against DDPM eq. 4 computed here with diffusers'
own ᾱ and the seeded ε, the numbers against diffusers' scheduler, errors in both languages.
"""

from __future__ import annotations

import base64
import io
import json
import math

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffusion import images
from diffusion.examples import list_examples
from diffusion.lessons import noising
from diffusion.ui import noising as tab
from diffusion.ui import player
from diffusion.ui.i18n import Translator
from diffusion.ui.settings import AppSettings

EXAMPLE = str(next(p for p in list_examples() if p.name == "astronaut.png"))
PICTURES = ["notice", "closed", "noise", "stepwise", "strip"]
FORWARD_NAMES = [*PICTURES, "curves", "histogram", "summary"]


@pytest.fixture(scope="module")
def tr():
    return Translator()


@pytest.fixture(scope="module")
def handlers(tr):
    return tab.NoisingHandlers(tr)  # default settings: the histogram is drawn in-process


@pytest.fixture(scope="module")
def x0():
    return images.load_image(EXAMPLE, max_side=256)[0]


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture)


def by_hand(x0: np.ndarray, schedule: str, t: int, seed: int) -> np.ndarray:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (DDPM eq. 4), ᾱ from diffusers, ε from the seed, shown as uint8."""
    names = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
    alpha_bar = DDPMScheduler(num_train_timesteps=1000, beta_schedule=names[schedule]).alphas_cumprod[t - 1].item()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).numpy().astype(np.float64)
    x_t = math.sqrt(alpha_bar) * x0 + math.sqrt(1 - alpha_bar) * eps
    return np.clip(np.rint((x_t + 1) * 127.5), 0, 255).astype(np.uint8)


def test_forward_gives_every_output_with_the_cores_pixels_and_numbers(handlers, x0):
    out = handlers.forward(EXAMPLE, "cosine", 1000, 300, 7, "en")
    assert list(out) == FORWARD_NAMES
    core = noising.forward_noise(x0, "cosine", 1000, 300, 7)
    assert out["summary"] == core.summary()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod[299].item()
    assert out["summary"]["alpha_bar"] == pytest.approx(reference, rel=1e-6)
    closed = pixels(out["closed"])
    assert np.array_equal(closed, noising.to_display(core.x_t))
    assert np.abs(closed.astype(int) - by_hand(x0, "cosine", 300, 7)).max() <= 1  # float32 against float64
    assert np.array_equal(pixels(out["noise"]), noising.to_display(core.noise, lo=-3.0, hi=3.0))
    assert np.array_equal(pixels(out["stepwise"]), noising.to_display(core.x_t_stepwise))
    assert out["notice"] == ""  # the 256×256 example is not shrunk
    ts = [0, 50, 100, 250, 500, 750, 1000]
    assert [caption for _, caption in out["strip"]] == [f"t = {s}" for s in ts]
    for (path, _), frame in zip(out["strip"], noising.noise_strip(x0, "cosine", 1000, 7, ts), strict=True):
        assert np.array_equal(pixels(path), noising.to_display(frame))
    assert np.array_equal(pixels(out["strip"][0][0]), noising.to_display(x0))  # t = 0 is the clean image
    for name in ("curves", "histogram"):
        assert out[name].type == "matplotlib" and out[name].plot.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(out[name].plot.split(",", 1)[1]))).verify()


def test_the_slider_path_gives_the_same_pictures_and_keeps_one_chain(tr, x0):
    handlers = tab.NoisingHandlers(tr)
    full = handlers.forward(EXAMPLE, "linear", 1000, 250, 0, "en")
    live = handlers.live_pictures(EXAMPLE, "linear", 1000, 250, 0, "en")
    assert list(live) == [*PICTURES, "summary"]
    assert {name: live[name] for name in live} == {name: full[name] for name in live}
    plots = handlers.live_plots(EXAMPLE, "linear", 1000, 250, 0, "en")
    assert list(plots) == ["curves", "histogram"] and plots["histogram"].plot == full["histogram"].plot
    moved = handlers.live_pictures(EXAMPLE, "linear", 1000, 900, 0, "en")
    assert moved["summary"]["t"] == 900 and moved["noise"] == full["noise"]  # ε does not change with t
    assert np.abs(pixels(moved["closed"]).astype(int) - by_hand(x0, "linear", 900, 0)).max() <= 1
    assert handlers.chains.misses == 1 and handlers.images.misses == 1  # one chain, one decoded image


def test_a_cleared_image_box_changes_nothing(handlers):
    assert handlers.live_pictures(None, "linear", 1000, 250, 0, "en") == {"summary": gr.skip()}
    assert handlers.live_plots("", "linear", 1000, 250, 0, "en") == {"curves": gr.skip()}


def test_a_large_picture_is_shrunk_and_the_notice_says_so(tr, tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)).save(path)
    handlers = tab.NoisingHandlers(tr)
    en = handlers.live_pictures(str(path), "linear", 1000, 10, 0, "en")
    zh = handlers.live_pictures(str(path), "linear", 1000, 10, 0, "zh-CN")
    height, width = pixels(en["closed"]).shape[:2]
    assert width == 256 and height == round(256 * 400 / 600)
    assert f"from 600×400 to {width}×{height} pixels" in en["notice"]
    assert f"从 600×400 缩小到 {width}×{height}" in zh["notice"]


@pytest.mark.parametrize("changes, english, chinese", [
    (dict(t=5000), "Timestep t must be between 0 and 1000 (got 5000).",
     "时间步 t 必须在 0 到 1000 之间（当前为 5000）。"),
    (dict(seed=-5), "Random seed must be between 0 and 4294967295 (got -5).", "随机种子"),
    (dict(schedule="nope"), "must be one of: linear, cosine, scaled_linear, sigmoid (got nope)",
     "必须是以下之一"),
    (dict(num_train_timesteps=10**7), "between 10 and 4000", "10 到 4000"),
    (dict(image=None), "Please upload an image or pick an example.",
     "请上传一张图像，或选择一个示例。"),
])
def test_bad_input_gets_the_translated_message(handlers, changes, english, chinese):
    args = {"image": EXAMPLE, "schedule": "linear", "num_train_timesteps": 1000, "t": 10, "seed": 0, **changes}
    with pytest.raises(gr.Error) as info:
        handlers.forward(*args.values(), "en")
    assert english in info.value.message
    with pytest.raises(gr.Error) as info:
        handlers.forward(*args.values(), "zh-CN")
    assert chinese in info.value.message and english not in info.value.message


def test_a_file_that_is_not_a_picture_gets_a_clear_message(handlers, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is not a picture")
    for handler in (handlers.forward, handlers.live_pictures):
        with pytest.raises(gr.Error) as info:
            handler(str(fake), "linear", 1000, 10, 0, "en")
        assert info.value.message.startswith("This file could not be read as an image.")
    with pytest.raises(gr.Error) as info:
        handlers.export(str(fake), "linear", 1000, 0, "zh-CN")
    assert "无法把这个文件读取为图像" in info.value.message


def test_the_gif_runs_from_the_clean_image_to_noise(handlers, x0, tmp_path):
    out = handlers.export(EXAMPLE, "linear", 200, 3, "en")
    assert list(out) == ["gif"] and out["gif"].endswith("forward_noising_linear.gif")
    core = noising.export_gif(x0, "linear", 200, 3, tmp_path / "core.gif")
    with Image.open(out["gif"]) as gif, Image.open(core) as expected:
        assert gif.n_frames == expected.n_frames == 40
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            expected.seek(k)
            frames.append(np.asarray(gif.convert("RGB")).astype(int))
            assert np.array_equal(frames[-1], np.asarray(expected.convert("RGB")))
    clean = noising.to_display(x0).astype(int)
    assert np.abs(frames[0] - clean).mean() < 4  # the palette costs a few levels
    assert np.abs(frames[-1] - clean).mean() > 40  # t = T is nearly pure noise
    with pytest.raises(gr.Error) as info:
        handlers.export(EXAMPLE, "linear", 5, 3, "en")
    assert "between 10 and 4000" in info.value.message


@pytest.mark.parametrize("steps, t, expected", [
    (200, 250, dict(maximum=200, value=200)),
    (2000, 250, dict(maximum=2000, value=250)),
    ("x", 5, dict(maximum=1000, value=5)),
    (500, None, dict(maximum=500, value=0)),
])
def test_the_t_slider_follows_a_new_T(steps, t, expected):
    assert tab.rescale_t(steps, t) == {"t": gr.update(**expected)}


def test_the_histogram_comes_from_a_drawing_process_when_one_is_free(tr):
    class FakePool:
        def __init__(self, pictures):
            self.pictures, self.requests = pictures, []

        def run(self, request, wait=True):
            self.requests.append((request, wait))
            return self.pictures

    pool = FakePool(["data:image/png;base64,AAAA"])
    out = tab.NoisingHandlers(tr, AppSettings(render_pool=pool)).live_plots(EXAMPLE, "linear", 1000, 40, 0, "en")
    assert out["histogram"].plot == "data:image/png;base64,AAAA"
    ((request, wait),) = pool.requests
    assert request["task"] == "histogram" and request["t"] == 40 and wait is False  # never queues behind heat runs
    busy = tab.NoisingHandlers(tr, AppSettings(render_pool=FakePool(None))).live_plots(
        EXAMPLE, "linear", 1000, 40, 0, "en")
    assert busy["histogram"].plot == tab.NoisingHandlers(tr).live_plots(EXAMPLE, "linear", 1000, 40, 0, "en")[
        "histogram"].plot


def test_the_wiring_keeps_the_api_in_order(tr):
    """/forward_noise's inputs and outputs, in API order, and the handler's names land on them."""
    with gr.Blocks() as demo:
        tab.build(tr, AppSettings(), demo)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    forward = fns["forward_noise"]
    assert [getattr(b, "elem_id", None) for b in forward.inputs] == [
        "noise-image", "noise-schedule", "noise-T", "noise-t", "noise-seed", None]
    assert [b.elem_id for b in forward.outputs] == [
        "noise-notice", "noise-xt", "noise-eps", "noise-stepwise", "noise-strip", "noise-curves", "noise-hist",
        "noise-summary"]
    out = forward.fn(EXAMPLE, "linear", 1000, 10, 0, "en")
    assert list(out) == forward.outputs and out[forward.outputs[-1]]["t"] == 10
    gif = fns["forward_noise_gif"]
    assert [getattr(b, "elem_id", None) for b in gif.inputs] == [
        "noise-image", "noise-schedule", "noise-T", "noise-seed", None]
    assert [b.elem_id for b in gif.outputs] == ["noise-gif"]


def test_the_player_holds_x_t_from_0_to_T_with_the_coefficients_that_made_it(tr, x0):
    handlers = tab.NoisingHandlers(tr)
    assert handlers.player(None, "linear", 1000, 0, "en") == {"player": gr.skip()}
    out = handlers.player(EXAMPLE, "cosine", 1000, 7, "en")
    assert list(out) == ["player"] and len(out["player"]) <= player.MAX_PLAYER_BYTES
    data = json.loads(out["player"])
    (panel,) = data["panels"]
    assert panel["title"] == "x_t in one jump (eq. 4), from t = 0 to T = 1000"
    assert data["start"] == 0 and data["pixelated"] is True and data["width"] == 128
    ts = [round(v) for v in np.linspace(0, 1000, 33)]
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    for t, caption, url in zip(ts, data["captions"], panel["frames"], strict=True):
        ab = 1.0 if t == 0 else alphas[t - 1].item()
        assert caption == (f"t = {t} of 1000 · ᾱ_t = {ab:.4f} · "
                           f"x_t = {math.sqrt(ab):.3f}·x₀ + {math.sqrt(1 - ab):.3f}·ε")
        shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        # Every second pixel of x_t by eq. 4, not an average of four (that would hide noise).
        expected = by_hand(x0, "cosine", t, 7) if t else noising.to_display(x0)  # t = 0: the clean image
        assert np.abs(shown.astype(int) - expected[::2, ::2]).max() <= 1
    assert "one of every 2×2 pixels of x_t (256×256 → 128×128)" in data["note"]
    assert handlers.player(EXAMPLE, "cosine", 1000, 7, "en")["player"] is out["player"]  # packed once
    zh = json.loads(handlers.player(EXAMPLE, "cosine", 1000, 7, "zh-CN")["player"])
    assert zh["captions"][0] == "t = 0 / 1000 · ᾱ_t = 1.0000 · x_t = 1.000·x₀ + 0.000·ε"
    assert zh["panels"][0]["title"] == "一步到达的 x_t（式 4），从 t = 0 到 T = 1000"
    with pytest.raises(gr.Error) as info:
        handlers.player(EXAMPLE, "linear", 1000, -5, "zh-CN")
    assert "随机种子" in info.value.message


def test_a_small_T_plays_every_timestep_once(handlers):
    data = json.loads(handlers.player(EXAMPLE, "linear", 20, 0, "en")["player"])
    assert [int(c.split()[2]) for c in data["captions"]] == list(range(21))


def test_the_player_is_filled_without_t_and_the_api_is_unchanged(tr):
    with gr.Blocks() as demo:
        tab.build(tr, AppSettings(), demo)
    fills = [fn for fn in demo.fns.values() if [b.elem_id for b in fn.outputs] == ["noise-player"]]
    assert fills and all(fn.api_visibility == "private" for fn in fills)
    assert all([getattr(b, "elem_id", None) for b in fn.inputs] == [
        "noise-image", "noise-schedule", "noise-T", "noise-seed", None] for fn in fills)  # never t
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert names == {"forward_noise", "forward_noise_gif"}
