"""End-to-end: lesson 7's inpainting and super-resolution through gradio_client on the real app.

Streaming, the JSON summary, determinism, Stop and the step slider, drawn holes and
uploaded digits, and clear messages for bad input (the server keeps serving after them).
Runs use few steps and fills so the suite stays fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.datasets import digits
from diffusion.models import registry as models

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not models.available("mnist"), reason="the digit model is not installed")]

INPAINT_OUT = ("status", "picture", "x_t", "x0", "gallery", "scrub", "run_id", "summary")
SUPERRES_OUT = ("status", "low", "bicubic", "x_t", "x0_net", "x0", "gallery", "table", "scrub", "run_id", "summary")
INPAINT = dict(source="heldout", heldout_index=512, upload=None, drawing="", mask="bottom", mask_drawing="",
               digit="any", guidance_scale=1.5, fills=2, seed=3, num_inference_steps=4, resample=2, sampler="ddpm",
               lang="en")
SUPERRES = dict(source="heldout", heldout_index=512, upload=None, drawing="", factor=4, low_resolution=False,
                digit="any", guidance_scale=1.5, fills=2, seed=3, num_inference_steps=8, eta=1.0,
                projection="ddnm_box", lang="en")
APIS = {"inpaint": (INPAINT, INPAINT_OUT), "super_resolve": (SUPERRES, SUPERRES_OUT)}


def stream(client, api="inpaint", **changes):
    base, names = APIS[api]
    job = client.submit(**{**base, **changes}, api_name=f"/{api}")
    outputs = [dict(zip(names, out)) for out in job]
    return outputs, dict(zip(names, job.result()))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def heldout(index: int) -> np.ndarray:
    images, labels = digits.mnist_offline()
    return digits.split_train_heldout(images, labels, 0.2, 0).heldout_images[index]


@pytest.mark.parametrize("api", sorted(APIS))
def test_a_run_streams_its_steps_then_the_results_and_summary(client, api):
    outputs, final = stream(client, api)
    assert len(outputs) >= 3  # a start frame, at least one step frame, the final frame
    assert any("Step" in o["status"] and o["x_t"] for o in outputs[:-1])
    assert len(final["run_id"]) == 32 and "Done" in final["status"]
    summary = final["summary"]
    json.dumps(summary, allow_nan=False)
    assert summary["kind"] == api and summary["run_id"] == final["run_id"]
    assert (summary["source"], summary["heldout_index"], summary["heldout_class"]) == ("heldout", 512, 5)
    assert summary["steps_run"] == summary["num_inference_steps"] and not summary["stopped"]
    assert summary["seeds"] == [3, 4] and summary["labels"] == [10, 10]  # "any": the unconditional label
    assert len(final["gallery"]) == 2
    for item in final["gallery"]:
        with Image.open(item["image"]) as png:
            assert png.format == "PNG" and png.size == (28, 28) and png.mode == "L"
    if api == "inpaint":
        assert summary["mask_choice"] == "bottom" and summary["hole_pixels"] == 392
        assert summary["network_calls"] == 3 * 2 + 1 and len(summary["hole_psnr_db"]) == 2
        known = heldout(512)[:14]
        for item in final["gallery"]:  # RePaint keeps the known half exactly
            np.testing.assert_array_equal(pixels(item["image"])[:14], known)
    else:
        assert len(summary["psnr_db"]) == 2 and summary["psnr_bicubic_db"] > 0
        assert max(summary["consistency"]) < 1e-4 < summary["bicubic_consistency"]
        assert pixels(final["low"]).shape[:2] == (28, 28) and pixels(final["bicubic"]).shape[:2] == (28, 28)
        assert "PSNR" in final["table"] and len(final["table"].splitlines()) == 2 + 1 + 2


@pytest.mark.parametrize("api", sorted(APIS))
def test_same_seed_same_pixels_other_seed_other_pixels(client, api):
    _, a = stream(client, api, seed=21)
    _, b = stream(client, api, seed=21)
    _, c = stream(client, api, seed=22)
    first = [pixels(i["image"]) for i in a["gallery"]]
    assert all(np.array_equal(x, pixels(i["image"])) for x, i in zip(first, b["gallery"]))
    assert not all(np.array_equal(x, pixels(i["image"])) for x, i in zip(first, c["gallery"]))
    assert b["summary"]["shared"]  # the second identical request was computed once, with the first


@pytest.mark.parametrize("api, long", [
    ("inpaint", dict(num_inference_steps=1000, resample=1, fills=8, digit="7", seed=99)),
    ("super_resolve", dict(num_inference_steps=1000, fills=8, digit="7", seed=99)),
])
def test_stop_ends_a_long_run_and_keeps_it_scrubbable(client, api, long):
    base, names = APIS[api]
    job = client.submit(**{**base, **long}, api_name=f"/{api}")
    at = names.index("run_id")
    run_id, deadline = None, time.monotonic() + 120
    while run_id is None and time.monotonic() < deadline:
        run_id = next((out[at] for out in job.outputs() if isinstance(out[at], str) and out[at]), None)
        time.sleep(0.05)
    assert run_id, "the run never reported its id"
    time.sleep(0.5)
    client.predict(run_id, api_name=f"/{api}_stop")
    final = dict(zip(names, job.result(timeout=300)))
    summary = final["summary"]
    assert summary["stopped"] and 1 <= summary["steps_run"] < 1000 and summary["num_inference_steps"] == 1000
    assert "Stopped" in final["status"] and len(final["gallery"]) == 8
    last = client.predict(run_id, summary["steps_run"], "en", api_name=f"/{api}_scrub")
    assert f"step {summary['steps_run']} / {summary['steps_run']}" in last[0]


def test_the_step_slider_replays_a_kept_run(client):
    _, final = stream(client, "inpaint", seed=31)
    start = client.predict(final["run_id"], 1, "en", api_name="/inpaint_scrub")
    end = client.predict(final["run_id"], 4, "zh-CN", api_name="/inpaint_scrub")
    assert "step 1 / 4" in start[0] and "第 4 / 4 步" in end[0]
    assert pixels(start[1]).std() > 0.5 * pixels(end[1]).std()  # x_t at the first step is mostly noise
    _, final = stream(client, "super_resolve", seed=31)
    status, x_t, x0_net, x0 = client.predict(final["run_id"], 8, "en", api_name="/super_resolve_scrub")
    assert "step 8 / 8" in status and np.array_equal(pixels(x0), pixels(final["x0"]))
    for api in APIS:
        with pytest.raises(AppError) as error:
            client.predict("0" * 32, 1, "en", api_name=f"/{api}_scrub")
        assert "no longer" in str(error.value)
        with pytest.raises(AppError) as error:
            client.predict("", 1, "en", api_name=f"/{api}_scrub")
        assert "Press Start first" in str(error.value)


def test_a_drawn_hole_over_an_uploaded_digit(client, tmp_path):
    digit = heldout(640)
    path = tmp_path / "six.png"
    Image.fromarray(digit).save(path)
    hole = np.zeros((28, 28), bool)
    hole[4:14, 6:22] = True
    painted = "".join("f" if h else "0" for h in hole.reshape(-1))  # the canvas's cells, as an API caller sends them
    _, final = stream(client, "inpaint", source="upload", upload=handle_file(str(path)), mask="drawn",
                      mask_drawing=json.dumps({"pixels": painted}))
    summary = final["summary"]
    assert summary["source"] == "upload" and summary["mask_choice"] == "drawn"
    assert summary["hole_pixels"] == int(hole.sum()) == 160
    for item in final["gallery"]:
        np.testing.assert_array_equal(pixels(item["image"])[~hole], digit[~hole])
    shown = pixels(final["picture"])
    assert shown.shape == (28, 28, 3) and (shown[hole, 0] > shown[hole, 2]).all()  # the hole is shown orange


def test_a_drawn_digit_and_a_low_resolution_picture_alone(client):
    ink = np.zeros((28, 28), int)
    ink[5:23, 12:16] = 15
    drawing = "".join("0123456789abcdef"[v] for v in ink.reshape(-1))
    _, final = stream(client, "super_resolve", source="drawing", drawing=drawing, low_resolution=True, factor=2)
    summary = final["summary"]
    assert summary["source"] == "drawing" and summary["low_resolution"] and summary["factor"] == 2
    assert summary["psnr_db"] is None and summary["psnr_bicubic_db"] is None  # no original to compare with
    assert "| – |" in final["table"]


@pytest.mark.parametrize("api, changes, fragment", [
    ("inpaint", dict(mask="drawn", mask_drawing=""), "The hole is empty"),
    ("inpaint", dict(mask="drawn", mask_drawing="f" * 784), "covers the whole digit"),
    ("inpaint", dict(mask="drawn", mask_drawing="x" * 5000), "The drawing could not be read"),
    ("inpaint", dict(source="drawing", drawing="0" * 784), "Draw a digit on the grid first"),
    ("inpaint", dict(source="upload", upload=None), "Please upload an image"),
    ("inpaint", dict(digit="12"), "0–9 or “any”"),
    ("inpaint", dict(num_inference_steps=500, resample=5), "at most 1000"),
    ("inpaint", dict(fills=9), "maximum value 8"),  # slider bounds: gradio's own message
    ("inpaint", dict(mask="diagonal"), "not in the list of choices"),
    ("inpaint", dict(heldout_index=2.5), "whole number"),
    ("super_resolve", dict(factor=3), "not in the list of choices"),
    ("super_resolve", dict(projection="dps"), "not in the list of choices"),
    ("super_resolve", dict(low_resolution="yes"), "Low-resolution picture only must be one of"),
    ("super_resolve", dict(digit="seven"), "0–9 or “any”"),
])
def test_bad_input_gets_a_clear_message(client, api, changes, fragment):
    with pytest.raises(AppError) as error:
        stream(client, api, **changes)
    assert fragment.lower() in str(error.value).lower(), str(error.value)


def test_messages_follow_the_language_and_the_server_keeps_serving(client):
    for changes, fragment in ((dict(mask="drawn", mask_drawing=""), "空洞是空的"),
                              (dict(mask="drawn", mask_drawing="f" * 784), "盖住了整个数字"),
                              (dict(digit="x"), "数字类别必须是")):
        with pytest.raises(AppError) as error:
            stream(client, "inpaint", **changes, lang="zh-CN")
        assert fragment in str(error.value)
    _, final = stream(client, "inpaint", seed=41, num_inference_steps=2)
    assert final["summary"]["steps_run"] == 2
    _, final = stream(client, "super_resolve", seed=41, num_inference_steps=2)
    assert final["summary"]["steps_run"] == 2
