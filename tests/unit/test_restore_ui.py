"""Lesson 7's inpainting and super-resolution sections, called without a browser or Blocks.

The handlers run a tiny random digit model (the registry's ``mnist`` entry replaced), so
the checks are about the plumbing and the numbers shown: streamed answers, the kept run
and its step slider, Stop, every validation message in both languages, the digit sources
and holes, and the example each section opens with. Numbers shown are checked against
independent computations (scikit-image's PSNR, Pillow's bicubic, numpy block means).
"""

from __future__ import annotations

import json
import unicodedata

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

import app
from diffusion.datasets import digits
from diffusion.errors import InputError
from diffusion.lessons.applications.inpaint import preset_mask
from diffusion.models import registry as models
from diffusion.serving.jobs import JobQueue
from diffusion.ui.applications import restore as tab
from diffusion.ui.applications import restore_views as views
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import Translator
from tests.unit.test_sampling import tiny_unet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TR = Translator()
INPAINT_OUT = {"status", "picture", "x_t", "x0", "gallery", "scrub", "run_id", "summary"}
SUPERRES_OUT = {"status", "low", "bicubic", "x_t", "x0_net", "x0", "gallery", "table", "scrub", "run_id", "summary"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny network is far too small for the intra-op pool
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path):
    """The registry's "mnist" model replaced by a tiny random one saved in a temp folder."""
    folder = tmp_path / "mnist-ddpm"
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler().save_pretrained(folder / "scheduler")
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=folder, kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    models.clear_cache()
    yield folder
    models.clear_cache()


@pytest.fixture
def inpainting(tiny_registry):
    return tab.InpaintHandlers(TR, "cpu", JobQueue())


@pytest.fixture
def upscaling(tiny_registry):
    return tab.SuperResHandlers(TR, "cpu", JobQueue())


def heldout(index: int) -> np.ndarray:
    """The model's held-out digit, from the dataset module's own split (train_info: fraction 0.2, seed 0)."""
    images, labels = digits.mnist_offline()
    return (digits.split_train_heldout(images, labels, 0.2, 0).heldout_images[index] / 255.0).astype(np.float32)


def inpaint(handlers, *, source="heldout", index=300, upload=None, drawing="", mask="top", mask_drawing="",
            digit="any", guidance=1.5, fills=2, seed=0, steps=3, resample=2, sampler="ddpm", lang="en"):
    return list(guarded(TR, tab.SCOPE)(handlers.run)(source, index, upload, drawing, mask, mask_drawing, digit,
                                                      guidance, fills, seed, steps, resample, sampler, lang))


def upscale(handlers, *, source="heldout", index=300, upload=None, drawing="", factor=4, low=False, digit="any",
            guidance=1.5, fills=2, seed=0, steps=4, eta=1.0, projection="ddnm_box", lang="en"):
    return list(guarded(TR, tab.SCOPE)(handlers.run)(source, index, upload, drawing, factor, low, digit, guidance,
                                                      fills, seed, steps, eta, projection, lang))


def hex_of(cells: np.ndarray) -> str:
    return "".join("f" if c else "0" for c in np.asarray(cells, dtype=bool).reshape(-1))


def test_a_canvas_value_reads_back_its_cells_and_anything_else_is_refused():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 16, (28, 28))
    value = views.canvas_value(levels / 15.0, under=heldout(0))
    np.testing.assert_array_equal(np.rint(views.read_pixels(value) * 15), levels)
    assert json.loads(value)["under"] == "".join("0123456789abcdef"[int(v)] for v in np.rint(heldout(0) * 15).reshape(-1))
    bare = "".join("0123456789abcdef"[v] for v in levels.reshape(-1)).upper()  # the 784 digits alone, any case
    np.testing.assert_array_equal(views.read_pixels(bare), views.read_pixels(value))
    assert not views.read_pixels("").any() and not views.read_pixels(None).any()
    for bad in ("0" * 783, "g" * 784, json.dumps({"pixels": 5}), "[1, 2]", "{not json", 12345, ["0" * 784],
                json.dumps({"pixels": "0" * 784, "pad": "x" * 5000})):
        with pytest.raises(InputError) as error:
            views.read_pixels(bad)
        assert error.value.code == "restore_drawing_bad"
    with pytest.raises(InputError) as error:
        views.drawn_digit(views.canvas_value())
    assert error.value.code == "restore_drawing_empty"


def test_held_out_digits_are_the_models_own_split_sorted_by_class():
    for index in (0, 300, 999):
        picture, label = views.heldout_digit(index)
        np.testing.assert_array_equal(picture, heldout(index).astype(np.float32))
        assert label == index // 100  # 100 held-out digits of each class, in class order
    for bad in (-1, 1000, 2.5, "x", float("nan")):
        with pytest.raises(InputError) as error:
            views.heldout_digit(bad)
        assert "heldout_index" in str(error.value)


def test_an_upload_becomes_a_white_on_black_28_by_28_digit(tmp_path):
    digit = np.rint(heldout(700) * 255).astype(np.uint8)
    exact = tmp_path / "digit.png"
    Image.fromarray(digit).save(exact)
    np.testing.assert_array_equal(np.rint(views.digit_from_upload(str(exact)) * 255), digit)  # kept as it is
    paper = tmp_path / "paper.png"  # dark ink on white paper, larger and not square
    ink = np.full((90, 60), 250, np.uint8)
    ink[20:70, 24:36] = 10
    Image.fromarray(ink).save(paper)
    picture = views.digit_from_upload(str(paper))
    assert picture.shape == (28, 28) and picture.dtype == np.float32
    assert picture[:, :4].max() < 0.05 and picture[14].max() > 0.8  # inverted: black border, a white stroke
    (tmp_path / "essay.png").write_text("not a picture")
    for bad, code in ((str(tmp_path / "essay.png"), "image_unreadable"), (None, "image_missing"),
                      (str(tmp_path / "nothing.png"), "image_unreadable")):
        with pytest.raises(InputError) as error:
            views.digit_from_upload(bad)
        assert error.value.code == code


def test_inpainting_streams_then_answers_every_output(inpainting):
    answers = inpaint(inpainting, seed=11, steps=4, lang="zh-CN")
    final = answers[-1]
    assert set(final) == INPAINT_OUT and all(set(a) <= INPAINT_OUT for a in answers)
    assert any("x_t" in a for a in answers[1:-1])  # the steps were shown while they ran
    assert "完成" in final["status"]
    summary = final["summary"]
    assert summary["run_id"] == final["run_id"] and not summary["shared"]
    assert (summary["kind"], summary["source"], summary["heldout_index"], summary["heldout_class"]) == (
        "inpaint", "heldout", 300, 3)
    assert summary["mask_choice"] == "top" and summary["hole_pixels"] == 392 and summary["steps_run"] == 4
    assert summary["network_calls"] == 3 * 2 + 1 and summary["seeds"] == [11, 12]
    json.dumps(summary, allow_nan=False)
    original, hole = heldout(300), preset_mask("top")
    kept = tab.INPAINT_RUNS.get(final["run_id"])
    rows = zip(final["gallery"], kept.pictures(), kept.hole_psnr(), summary["hole_psnr_db"], summary["seeds"])
    for (picture, caption), fill, psnr, psnr_db, seed in rows:
        assert picture.shape == (28, 28) and picture.dtype == np.uint8
        np.testing.assert_array_equal(picture, np.rint(fill * 255))
        np.testing.assert_array_equal(picture[~hole], np.rint(original * 255)[~hole])  # the known part is the original
        expected = peak_signal_noise_ratio(original[hole], fill[hole].astype(np.float64), data_range=1.0)
        assert abs(psnr_db - expected) < 1e-3 and abs(psnr - expected) < 1e-9
        assert caption == f"种子 {seed} · 空洞 {psnr:.1f} dB"
    assert final["picture"].shape == (28, 28, 3)
    tinted = final["picture"][:, :, 0].astype(int) - final["picture"][:, :, 2]
    assert (tinted[hole] > 0).all() and (tinted[~hole] == 0).all()  # the hole is shown orange, the rest grey


def test_the_step_slider_replays_the_kept_run(inpainting, upscaling):
    final = inpaint(inpainting, seed=12)[-1]
    kept = tab.INPAINT_RUNS.get(final["run_id"])
    replay = inpainting.replay(final["run_id"], 2, "en")
    frame = kept.frame(1)
    np.testing.assert_array_equal(replay["x_t"], views.grid(frame.x_t))
    np.testing.assert_array_equal(replay["x0"], views.grid(frame.x0_pred))
    assert f"step 2 / 3 · t = {int(kept.timesteps[1]) + 1}" in replay["status"]
    assert "第 3 / 3 步" in inpainting.replay(final["run_id"], 99, "zh-CN")["status"]  # clamped to the run
    last = upscale(upscaling, seed=12)[-1]
    run = tab.SUPERRES_RUNS.get(last["run_id"])
    replay = upscaling.replay(last["run_id"], 1, "en")
    np.testing.assert_array_equal(replay["x0_net"], views.grid(run.x0_network[0].float()))
    np.testing.assert_array_equal(replay["x0"], views.grid(run.frame(0).x0_pred))
    for handlers, bad, text in ((inpainting, "", "Press Start first"), (upscaling, "0" * 32, "no longer"),
                                (inpainting, "../../etc/passwd", "no longer")):
        with pytest.raises(gr.Error) as error:
            guarded(TR, tab.SCOPE)(handlers.replay)(bad, 1, "en")
        assert text in error.value.message
    with pytest.raises(gr.Error) as error:
        guarded(TR, tab.SCOPE)(inpainting.replay)("", 1, "zh-CN")
    assert "请先按“开始”" in error.value.message


def test_stop_ends_the_run_and_keeps_what_it_did(inpainting):
    stream = guarded(TR, tab.SCOPE)(inpainting.run)("heldout", 301, None, "", "left", "", "5", 2.0, 2, 77, 6, 1,
                                                    "ddim", "en")
    first = next(stream)
    inpainting.stop(first["run_id"])  # before the run is queued: it still reaches it
    final = list(stream)[-1]
    summary = final["summary"]
    assert summary["stopped"] and summary["steps_run"] == 1 and summary["num_inference_steps"] == 6
    assert "Stopped after 1 of 6 steps" in final["status"] and summary["labels"] == [5, 5]
    assert "step 1 / 1" in inpainting.replay(final["run_id"], 1, "en")["status"]
    assert inpainting.stop("0" * 32) is None and inpainting.stop(None) is None  # nothing to stop: no error


@pytest.mark.parametrize("changes, english, chinese", [
    (dict(source="camera"), "Start from must be one of: heldout, upload, drawing", "从哪个数字开始 必须是以下之一"),
    (dict(index=1000), "Held-out digit number must be between 0 and 999", "留出数字的编号 必须在 0 到 999 之间"),
    (dict(mask="diagonal"), "Hole must be one of: top, bottom, left, right, drawn", "空洞 必须是以下之一"),
    (dict(mask="drawn", mask_drawing=""), "The hole is empty", "空洞是空的"),
    (dict(mask="drawn", mask_drawing="f" * 784), "covers the whole digit", "盖住了整个数字"),
    (dict(mask="drawn", mask_drawing="{bad"), "The drawing could not be read", "无法读取这幅画"),
    (dict(source="drawing", drawing=""), "Draw a digit on the grid first", "请先在格子上画一个数字"),
    (dict(source="upload", upload=None), "Please upload an image", "上传"),
    (dict(digit="12"), "0–9 or “any” (got 12)", "数字类别必须是 0–9 或“任意”"),
    (dict(fills=9), "How many results (seeds s, s + 1, …) must be between 1 and 8", "结果数量"),
    (dict(guidance=-1), "Guidance scale must be between 0.0 and 10.0", "之间"),
    (dict(resample=11), "Resampling U (passes per step) must be between 1 and 10", "重采样次数 U"),
    (dict(steps=500, resample=5), "would call the network 2496 times; at most 1000", "需要调用网络 2496 次"),
    (dict(sampler="euler"), "Sampler must be one of: ddpm, ddim", "必须是以下之一"),
    (dict(seed=-3), "Random seed must be between 0", "随机种子"),
])
def test_bad_inpainting_input_gets_a_clear_message_in_both_languages(inpainting, changes, english, chinese):
    for lang, text in (("en", english), ("zh-CN", chinese)):
        with pytest.raises(gr.Error) as error:
            inpaint(inpainting, **changes, lang=lang)
        assert text in error.value.message, error.value.message
    assert inpainting.jobs.queued() == 0 and inpainting.jobs.runs == 0  # refused before anything was queued


@pytest.mark.parametrize("changes, english", [
    (dict(factor=3), "The upscaling factor must be 2 (14×14) or 4 (7×7) (got 3)"),
    (dict(factor=True), "must be 2 (14×14) or 4"),
    (dict(low="yes"), "Low-resolution picture only must be one of: true, false"),
    (dict(eta=1.5), "DDIM η (0 = deterministic) must be between 0.0 and 1.0"),
    (dict(projection="dps"), "Projection must be one of: ddnm_box, ddnm"),
    (dict(digit="x"), "0–9 or “any”"),
    (dict(steps=0), "Sampling steps must be between 1 and 1000"),
])
def test_bad_super_resolution_input_gets_a_clear_message(upscaling, changes, english):
    with pytest.raises(gr.Error) as error:
        upscale(upscaling, **changes)
    assert english in error.value.message, error.value.message
    with pytest.raises(gr.Error) as error:
        upscale(upscaling, **changes, lang="zh-CN")
    assert error.value.message != TR.text("error.generic", "zh-CN") and any("\u4e00" <= c <= "\u9fff"
                                                                             for c in error.value.message)


@pytest.mark.parametrize("mask", ["top", "bottom", "left", "right"])
def test_each_preset_hole_is_the_half_it_names(inpainting, mask):
    summary = inpaint(inpainting, mask=mask, steps=2, seed=5)[-1]["summary"]
    rows, cols = np.indices((28, 28))
    half = {"top": rows < 14, "bottom": rows >= 14, "left": cols < 14, "right": cols >= 14}[mask]
    kept = tab.INPAINT_RUNS.get(summary["run_id"])
    np.testing.assert_array_equal(kept.request.mask, half)
    assert summary["mask_choice"] == mask and summary["hole_pixels"] == 392


def test_a_drawn_hole_over_a_drawn_digit(inpainting):
    ink = np.zeros((28, 28))
    ink[5:23, 12:16] = 1.0  # a "1"
    hole = np.zeros((28, 28), bool)
    hole[3:12, 8:20] = True
    final = inpaint(inpainting, source="drawing", drawing=views.canvas_value(ink), mask="drawn",
                    mask_drawing=views.canvas_value(hole, under=ink), steps=2, seed=9)[-1]
    summary = final["summary"]
    assert summary["source"] == "drawing" and "heldout_index" not in summary
    assert summary["mask_choice"] == "drawn" and summary["hole_pixels"] == int(hole.sum()) == 108
    for picture, _ in final["gallery"]:
        np.testing.assert_array_equal(picture[~hole], np.rint(ink * 255)[~hole])
    bare = inpaint(inpainting, source="drawing", drawing=hex_of(ink), mask="drawn", mask_drawing=hex_of(hole),
                   steps=2, seed=9)[-1]
    assert bare["summary"]["shared"]  # the same pictures by the bare hex form: the same request, computed once


def test_super_resolution_shows_its_numbers_beside_bicubic(upscaling):
    final = upscale(upscaling, factor=2, seed=4, steps=5, lang="en")[-1]
    assert set(final) == SUPERRES_OUT
    summary, original = final["summary"], heldout(300)
    run = tab.SUPERRES_RUNS.get(final["run_id"])
    low = original.astype(np.float64).reshape(14, 2, 14, 2).mean(axis=(1, 3)).astype(np.float32)
    np.testing.assert_array_equal(final["low"], np.kron(np.rint(low.astype(np.float64) * 255).astype(np.uint8), np.ones((2, 2), np.uint8)))
    bicubic = np.clip(np.asarray(Image.fromarray(low.astype(np.float32)).resize((28, 28), Image.Resampling.BICUBIC)),
                      0, 1)
    np.testing.assert_array_equal(final["bicubic"], np.rint(bicubic * 255).astype(np.uint8))
    pictures = run.result().pictures
    for k, (picture, caption) in enumerate(final["gallery"]):
        expected = peak_signal_noise_ratio(original, np.clip(pictures[k], 0, 1), data_range=1.0)
        assert abs(summary["psnr_db"][k] - expected) < 1e-3 and f"PSNR {expected:.1f} dB" in caption
        gap = np.linalg.norm(pictures[k].reshape(14, 2, 14, 2).mean(axis=(1, 3)) - low)
        assert gap < 1e-4 and abs(summary["consistency"][k] - gap) < 1e-6  # A x = y after the last step
    expected_bicubic = peak_signal_noise_ratio(original, bicubic, data_range=1.0)
    assert abs(summary["psnr_bicubic_db"] - expected_bicubic) < 1e-3
    bicubic_gap = np.linalg.norm(bicubic.reshape(14, 2, 14, 2).mean(axis=(1, 3)) - low)
    assert abs(summary["bicubic_consistency"] - bicubic_gap) < 1e-6 and bicubic_gap > 0.01
    rows = final["table"].splitlines()
    assert len(rows) == 2 + 1 + 2 and f"| {expected_bicubic:.1f} |" in rows[2]
    assert summary["factor"] == 2 and summary["projection"] == "ddnm_box" and not summary["low_resolution"]
    json.dumps(summary, allow_nan=False)


def test_a_low_resolution_picture_alone_has_no_psnr(upscaling):
    final = upscale(upscaling, low=True, seed=2, lang="zh-CN")[-1]
    summary = final["summary"]
    assert summary["low_resolution"] and summary["psnr_db"] is None and summary["psnr_bicubic_db"] is None
    assert all("PSNR – dB" in caption for _, caption in final["gallery"])
    assert "| – |" in final["table"] and "与原图相比的 PSNR" in final["table"]
    run = tab.SUPERRES_RUNS.get(final["run_id"])
    np.testing.assert_array_equal(run.request.image, heldout(300).astype(np.float64).reshape(7, 4, 7, 4).mean(axis=(1, 3))
                                  .astype(np.float32))


def test_the_previews_follow_the_chosen_digit_and_hole(tiny_registry):
    digit = heldout(42)
    answer = tab.InpaintHandlers.digit_preview("heldout", 42, None, "", "bottom", "", "en")
    np.testing.assert_array_equal(answer["picture"], views.with_hole(digit, preset_mask("bottom")))
    canvas = json.loads(answer["mask_canvas"])
    np.testing.assert_array_equal(views.read_pixels(canvas["under"]), np.rint(digit * 15) / 15.0)
    painted = np.zeros((28, 28), bool)
    painted[0:5, 0:5] = True
    answer = tab.InpaintHandlers.digit_preview("heldout", 43, None, "", "drawn", hex_of(painted), "en")
    assert views.read_pixels(answer["mask_canvas"]).astype(bool).sum() == 25  # the painted hole is kept
    hole = tab.InpaintHandlers.hole_preview("heldout", 43, None, "", "drawn", hex_of(painted), "en")
    assert set(hole) == {"picture"}
    assert tab.InpaintHandlers.digit_preview("upload", 0, None, "", "top", "", "en") == {"picture": None}
    shown = tab.SuperResHandlers.preview("heldout", 42, None, "", 4, False, "en")
    np.testing.assert_array_equal(shown["original"], np.rint(digit * 255).astype(np.uint8))
    low = digit.astype(np.float64).reshape(7, 4, 7, 4).mean(axis=(1, 3)).astype(np.float32)
    np.testing.assert_array_equal(shown["low"], np.kron(np.rint(low.astype(np.float64) * 255).astype(np.uint8), np.ones((4, 4), np.uint8)))
    assert tab.SuperResHandlers.preview("heldout", 42, None, "", 4, True, "en")["original"] is None
    assert tab.SuperResHandlers.preview("drawing", 0, None, "", 4, False, "en") == {
        "original": None, "low": None, "bicubic": None}


def test_each_section_opens_with_its_example_run_once(inpainting, upscaling):
    for handlers, extra in ((inpainting, {"mask_choice": "top", "resample": 5, "sampler": "ddpm"}),
                            (upscaling, {"factor": 4, "projection": "ddnm_box", "eta": 1.0})):
        first = list(handlers.example("en"))[-1]
        again = list(handlers.example("zh-CN"))[-1]
        summary = first["summary"]
        assert (summary["source"], summary["heldout_index"], summary["digit"], summary["fills"]) == (
            "heldout", 300, None, 4)
        assert all(summary[k] == v for k, v in extra.items()) and not summary["stopped"]
        assert TR.text("example.shown", "en") in first["status"] and TR.text("example.shown", "zh-CN") in again["status"]
        assert again["summary"]["shared"] and handlers.jobs.runs == 1  # computed once, for everyone
        assert handlers.RUNS.get(again["run_id"]) is handlers.RUNS.get(first["run_id"])
    assert tab.INPAINT.num_inference_steps == 10 and tab.SUPERRES.num_inference_steps == 50  # the cores' defaults


def test_the_sections_have_stable_endpoints(tiny_registry):
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    demo, _ = app.create_app(settings)
    by_name = {d.api_name: d for d in demo.fns.values() if d.api_name}
    ids = {name: [getattr(c, "elem_id", None) for c in (*by_name[name].inputs, None, *by_name[name].outputs)]
           for name in ("inpaint", "super_resolve")}
    assert ids["inpaint"] == [
        "inpaint-source", "inpaint-index", "inpaint-upload", "inpaint-drawing", "inpaint-mask", "inpaint-mask-canvas",
        "inpaint-digit", "inpaint-guidance", "inpaint-fills", "inpaint-seed", "inpaint-steps", "inpaint-resample",
        "inpaint-sampler", None, None, "inpaint-status", "inpaint-picture", "inpaint-xt", "inpaint-x0",
        "inpaint-gallery", "inpaint-scrub", "inpaint-run-id", "inpaint-summary"]
    assert ids["super_resolve"][4:6] == ["superres-factor", "superres-low-resolution"]
    assert ids["super_resolve"][-11:] == [
        "superres-status", "superres-low", "superres-bicubic", "superres-xt", "superres-x0-network", "superres-x0",
        "superres-gallery", "superres-table", "superres-scrub", "superres-run-id", "superres-summary"]
    for name in ("inpaint", "super_resolve"):
        assert by_name[name].concurrency_id == "model" and by_name[name].concurrency_limit == settings.max_queue
        assert by_name[f"{name}_stop"].queue is False  # a stop must not wait behind the run it stops
        assert by_name[f"{name}_scrub"].concurrency_id == "light"
    assert len(settings.examples) >= 2  # both examples are computed at start-up
    tabs = [b.id for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs.index("applications") < tabs.index("applications-inpaint") < tabs.index("applications-superres")


def test_the_sections_are_switched_off_cleanly_without_the_model(monkeypatch, tmp_path):
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=tmp_path / "nothing", kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    models.clear_cache()
    demo, _ = app.create_app(app.settings_from_args(app.parse_args(["--device", "cpu"])))
    api_names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert not {"inpaint", "super_resolve", "inpaint_scrub"} & api_names and "heat_simulate" in api_names
    notices = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"inpaint-no-model", "superres-no-model"} <= notices
    models.clear_cache()


def _flanking(text: str, at: int) -> tuple[bool, bool]:
    """Whether the ``**`` at ``at`` can open and close emphasis (CommonMark's flanking rules)."""
    before = text[at - 1] if at > 0 else " "
    after = text[at + 2] if at + 2 < len(text) else " "

    def punct(c: str) -> bool:
        return unicodedata.category(c)[0] in "PS"

    opens = not after.isspace() and (not punct(after) or before.isspace() or punct(before))
    closes = not before.isspace() and (not punct(before) or after.isspace() or punct(after))
    return opens, closes


def test_bold_text_renders_in_both_languages():
    """A ``**`` closed right after a full stop and before a Chinese character shows as two stars."""
    own = ("applications.inpaint.", "applications.superres.", "applications.restore.", "applications.canvas.",
           "applications.intro", "applications.no_model")
    checked = 0
    for lang in ("en", "zh-CN"):
        for key, text in TR.strings[lang].items():
            if not key.startswith(own):
                continue
            marks = [i for i in range(len(text) - 1) if text.startswith("**", i)]
            assert len(marks) % 2 == 0, (lang, key)
            for k, at in enumerate(marks):
                opens, closes = _flanking(text, at)
                assert (opens if k % 2 == 0 else closes), (lang, key, text[max(0, at - 8):at + 10])
                checked += 1
    assert checked >= 20
    assert _flanking("**重采样。**直接", 6) == (True, False)  # the check sees the broken form: it cannot close
