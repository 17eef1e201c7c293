"""End-to-end: lesson 4 through gradio_client on the real app with the shipped digit model.

Streaming, stop, scrubbing, GIF export, the DDPM/DDIM comparison and validation.
Runs use few steps and small batches so the suite stays fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.models import registry as models
from diffusion.ui import sampling as tab

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not models.available("mnist"), reason="the digit model is not installed")]

OUT = ("status", "x_t", "x0", "eps", "gallery", "scrub", "run_id", "summary")


def request(**changes):
    base = dict(sampler="ddim", num_inference_steps=12, eta=0.0, seed=5, batch_size=4, digit="3",
                guidance_scale=2.0, lang="en")
    return {**base, **changes}


def stream(client, **changes):
    job = client.submit(**request(**changes), api_name="/sample")
    outputs = [dict(zip(OUT, out)) for out in job]
    return outputs, dict(zip(OUT, job.result()))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_sampling_streams_steps_then_gallery_and_summary(client):
    outputs, final = stream(client)
    assert len(outputs) >= 3  # a start frame, at least one step frame, the final frame
    assert final["run_id"] and len(final["run_id"]) == 32
    assert any("Step" in o["status"] and o["x_t"] for o in outputs[:-1])  # live frames with the step shown
    summary = final["summary"]
    assert list(summary)[:6] == ["sampler", "steps", "seconds", "digit", "guidance_scale", "seed"]
    assert (summary["sampler"], summary["steps"], summary["digit"], summary["seed"]) == ("ddim", 12, "3", 5)
    assert summary["steps_run"] == 12 and not summary["stopped"] and summary["labels"] == [3, 3, 3, 3]
    json.dumps(summary, allow_nan=False)
    gallery = final["gallery"]
    assert len(gallery) == 4
    for item in gallery:
        with Image.open(item["image"]) as png:
            assert png.format == "PNG" and png.size == (28, 28) and png.mode == "L"
    assert "Done" in final["status"]


def test_same_seed_same_digits_other_seed_other_digits(client):
    _, a = stream(client, seed=11)
    _, b = stream(client, seed=11)
    _, c = stream(client, seed=12)
    first = [pixels(i["image"]) for i in a["gallery"]]
    assert all(np.array_equal(x, pixels(i["image"])) for x, i in zip(first, b["gallery"]))
    assert not all(np.array_equal(x, pixels(i["image"])) for x, i in zip(first, c["gallery"]))


def test_scrubbing_replays_the_cached_run(client):
    _, final = stream(client, num_inference_steps=10)
    run_id = final["run_id"]
    start = client.predict(run_id, 1, "en", api_name="/sample_scrub")
    end = client.predict(run_id, 10, "en", api_name="/sample_scrub")
    assert "step 1 / 10" in start[0] and "step 10 / 10" in end[0]
    assert pixels(start[1]).std() > pixels(end[1]).std() * 0.5  # x_t at the start is noise
    assert np.array_equal(pixels(end[2]), pixels(final["x0"]))  # same x̂₀ as the run's last frame
    chinese = client.predict(run_id, 10, "zh-CN", api_name="/sample_scrub")
    assert "第 10 / 10 步" in chinese[0]
    with pytest.raises(AppError):  # the run set the slider's range to its 10 steps
        client.predict(run_id, 11, "en", api_name="/sample_scrub")
    with pytest.raises(AppError) as error:
        client.predict("0" * 32, 1, "en", api_name="/sample_scrub")
    assert "no longer" in str(error.value)
    with pytest.raises(AppError) as error:
        client.predict("", 1, "en", api_name="/sample_scrub")
    assert "Run the sampler first" in str(error.value)


def test_stop_ends_a_long_run_cleanly_and_keeps_it_scrubbable(client):
    job = client.submit(**request(sampler="ddpm", num_inference_steps=1000, batch_size=16, digit="random"),
                        api_name="/sample")
    run_id = None
    deadline = time.monotonic() + 120
    while run_id is None and time.monotonic() < deadline:
        for out in job.outputs():
            if isinstance(out[6], str) and out[6]:  # later answers leave the id unchanged (an update)
                run_id = out[6]
        time.sleep(0.05)
    assert run_id, "the run never reported its id"
    time.sleep(0.5)
    client.predict(run_id, api_name="/sample_stop")
    final = dict(zip(OUT, job.result(timeout=120)))
    summary = final["summary"]
    assert summary["stopped"] and 1 <= summary["steps_run"] < 1000 and summary["steps"] == 1000
    assert len(final["gallery"]) == 16 and "Stopped" in final["status"]
    last = client.predict(run_id, summary["steps_run"], "en", api_name="/sample_scrub")
    assert f"step {summary['steps_run']} / {summary['steps_run']}" in last[0]


def test_closing_the_stream_stops_the_worker(client):
    job = client.submit(**request(sampler="ddpm", num_inference_steps=1000, batch_size=16), api_name="/sample")
    deadline = time.monotonic() + 120
    while not any(o[6] for o in job.outputs()) and time.monotonic() < deadline:
        time.sleep(0.05)
    run_id = next(o[6] for o in job.outputs() if o[6])
    while run_id not in tab.RUNS._live and time.monotonic() < deadline:  # the app runs in this process
        time.sleep(0.01)
    ticket = tab.RUNS._live[run_id]  # the run-store entry is the request's ticket of the job queue
    while ticket.job.state != "running" and time.monotonic() < deadline:  # it may wait behind the examples
        time.sleep(0.01)
    live = ticket.job.live
    job.cancel()
    assert live.done.wait(60), "the worker kept sampling after the stream was closed"
    assert live.result.stopped and len(live.result) < 1000
    deadline = time.monotonic() + 30
    while run_id in tab.RUNS._live and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run_id not in tab.RUNS._live
    _, final = stream(client, num_inference_steps=3, batch_size=1)  # and the queue is free again
    assert final["summary"]["steps_run"] == 3


def test_gif_export_of_a_run(client):
    _, final = stream(client, num_inference_steps=8, batch_size=2)
    path = client.predict(final["run_id"], "en", api_name="/sample_gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 8


def test_compare_runs_ddpm_and_ddim_from_the_same_noise(client):
    out = client.predict(30, 10, 0.0, 4, 2, "7", 2.0, "en", api_name="/sample_compare")
    status, ddpm, ddim, plot, compare_id, summary = out
    assert summary["ddpm"]["steps"] == 30 and summary["ddim"]["steps"] == 10
    assert summary["labels"] == [7, 7] and summary["speedup_ddim_over_ddpm"] > 0
    assert pixels(ddpm).shape == pixels(ddim).shape
    assert "faster" in status and plot


# Slider bounds are enforced by gradio itself before our code runs (its own message);
# the rest is checked by the core and reported in the user's language.
@pytest.mark.parametrize("changes, fragment", [
    (dict(num_inference_steps=5000), "maximum value 1000"),
    (dict(batch_size=17), "maximum value 16"),
    (dict(guidance_scale=-1), "minimum value 0"),
    (dict(eta=2.0), "maximum value 1"),
    (dict(digit="12"), "0–9 or random"),
    (dict(seed=-3), "seed"),
])
def test_bad_sampling_input_gets_a_clear_message(client, changes, fragment):
    with pytest.raises(AppError) as error:
        stream(client, **changes)
    assert fragment.lower() in str(error.value).lower()


def test_sampling_errors_follow_the_language(client):
    with pytest.raises(AppError) as error:
        stream(client, digit="x", lang="zh-CN")
    assert "数字必须是" in str(error.value)
