"""End-to-end: lesson 6 through gradio_client on the real app with the embedded model.

Streaming previews, the JSON summary, lossless PNGs, stop, scrubbing, image-to-image
and validation, as a script or a notebook would call them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.models import registry as models

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not models.text2image_available(), reason="the embedded model is not installed")]

OUT = ("status", "latent", "x0", "scrub", "gallery", "notice", "run_id", "summary")


def generate(client, prompt="a large red circle in the center on a white background", **changes):
    job = client.submit(prompt, **changes, api_name="/text_to_image")
    final = dict(zip(OUT, job.result()))
    return [dict(zip(OUT, out)) for out in job.outputs()], final


def test_only_the_prompt_is_needed_and_the_summary_names_the_run(client):
    outputs, final = generate(client)
    summary = final["summary"]
    assert {k: summary[k] for k in ("model", "scheduler", "steps", "guidance_scale", "seed")} == \
        {"model": "embedded", "scheduler": "ddim", "steps": 30, "guidance_scale": 2.0, "seed": 0}
    assert summary["seconds"] > 0 and summary["steps_run"] == 30 and not summary["stopped"]
    # a loading frame, at least one live step and the final frame; or at once, when the tab's
    # example (these very defaults) was computed at start-up
    assert len(outputs) >= 3 or summary["shared"]
    [item] = final["gallery"]
    assert item["image"].endswith(".png")
    with Image.open(item["image"]) as picture:
        assert picture.size == (64, 64) and picture.format == "PNG"
    assert final["latent"] and final["x0"]


def test_the_same_seed_gives_the_same_pixels(client):
    a = generate(client, "a small blue star", seed=7, num_inference_steps=10)[1]
    b = generate(client, "a small blue star", seed=7, num_inference_steps=10)[1]
    c = generate(client, "a small blue star", seed=8, num_inference_steps=10)[1]

    def pixels(final):
        with Image.open(final["gallery"][0]["image"]) as picture:
            return np.asarray(picture)

    assert np.array_equal(pixels(a), pixels(b)) and not np.array_equal(pixels(a), pixels(c))


def test_batches_schedulers_and_unknown_words(client):
    final = generate(client, "a green zebra square", scheduler="dpm_solver", num_inference_steps=8, batch_size=3,
                     guidance_scale=3.0)[1]
    assert len(final["gallery"]) == 3 and final["summary"]["scheduler"] == "dpm_solver"
    assert final["summary"]["unknown_words"] == ["zebra"]
    assert "zebra" in str(final["notice"])


def test_scrubbing_replays_recorded_steps(client):
    final = generate(client, num_inference_steps=6)[1]
    status, latent, x0 = client.predict(final["run_id"], 2, "en", api_name="/text_to_image_scrub")
    assert "step 2 / 6" in status and latent and x0
    with pytest.raises(AppError, match="no longer kept"):
        client.predict("0" * 32, 1, "en", api_name="/text_to_image_scrub")


def test_image_to_image_starts_at_the_strength_timestep(client, tmp_path):
    start = tmp_path / "start.png"
    Image.fromarray(np.full((90, 120, 3), (30, 80, 220), np.uint8)).save(start)
    final = generate(client, "a yellow circle", init_image=handle_file(str(start)), strength=0.5,
                     num_inference_steps=20)[1]
    summary = final["summary"]
    assert summary["img2img"] and summary["strength"] == 0.5 and summary["steps_run"] == 10
    assert 0 < summary["start_t"] < 1000


def test_stop_ends_a_run_early(client):
    job = client.submit("a purple triangle", num_inference_steps=100, api_name="/text_to_image")
    run_id, deadline = None, time.monotonic() + 120
    while run_id is None and time.monotonic() < deadline:
        run_id = next((out[6] for out in job.outputs() if out[6]), None)
        time.sleep(0.05)
    assert run_id, "the run never reported its id"
    time.sleep(0.5)
    client.predict(run_id, api_name="/text_to_image_stop")
    summary = dict(zip(OUT, job.result()))["summary"]
    assert summary["stopped"] and 0 < summary["steps_run"] < 100


@pytest.mark.parametrize("changes, message", [
    (dict(scheduler="lcm"), "LCM"),
    (dict(prompt="x" * 1001), "limit is 1000"),
    (dict(num_inference_steps=0), "Steps|num_inference_steps|minimum"),
    (dict(model="../../etc/passwd"), "not in the list of choices|not offered"),
    (dict(model="someone/unlisted"), "not in the list of choices|not offered"),
])
def test_bad_requests_get_clear_messages_and_the_server_carries_on(client, changes, message):
    prompt = changes.pop("prompt", "a red circle")
    with pytest.raises(AppError, match=message):
        generate(client, prompt, **changes)
    assert generate(client, "a red circle", num_inference_steps=2)[1]["summary"]["steps_run"] == 2


def test_a_file_that_is_not_a_picture_is_refused(client, tmp_path):
    fake = tmp_path / "essay.png"
    fake.write_text("not a picture")
    with pytest.raises(AppError, match="could not be read as an image"):
        generate(client, "a red circle", init_image=handle_file(str(fake)))


COMPARE_OUT = ("status", "col0", "col1", "scrub", "run_ids", "summary")


def _pixels(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_two_prompts_start_from_the_same_noise_and_a_is_the_single_run(client):
    settings = dict(num_inference_steps=8, guidance_scale=2.0, seed=11, scheduler="ddim")
    job = client.submit("a small red star", "a small green circle", "", settings["num_inference_steps"],
                        settings["guidance_scale"], settings["seed"], settings["scheduler"], 0, 0, "embedded", "en",
                        api_name="/text_to_image_compare")
    final = dict(zip(COMPARE_OUT, job.result()))
    summary = final["summary"]
    assert summary["prompt_a"] == "a small red star" and summary["prompt_b"] == "a small green circle"
    assert len(summary["run_ids"]) == 2 and summary["run_id_a"] == summary["run_ids"][0]
    single = generate(client, "a small red star", **settings)[1]
    assert np.array_equal(_pixels(final["col0"]), _pixels(single["gallery"][0]["image"]))
    assert not np.array_equal(_pixels(final["col0"]), _pixels(final["col1"]))
    # Both columns replay step by step, and each run id works with the single-run endpoints.
    status, a, b = client.predict(final["run_ids"], 3, "en", api_name="/text_to_image_compare_scrub")
    assert "step 3 / 8" in status and a and b
    status, latent, x0 = client.predict(summary["run_id_b"], 3, "en", api_name="/text_to_image_scrub")
    assert latent and x0


def test_the_guidance_sweep_shows_each_scale_with_a_sentence(client):
    status, gallery, sentences, summary, run_ids = client.predict(
        "a large yellow square", "", 6, 2, "ddim", 0, 0, "embedded", "zh-CN",
        api_name="/text_to_image_guidance_sweep")
    assert summary["scales"] == [1.0, 2.0, 5.0, 10.0] and len(gallery) == 4
    assert [item["caption"] for item in gallery] == ["w = 1", "w = 2", "w = 5", "w = 10"]
    assert sentences.count("**w = ") == 4 and "饱和度" in sentences
    assert all(0 <= e["saturation"] <= 1 for e in summary["effects"]) and summary["effects"][0]["change"] is None


def test_the_latent_path_of_a_run_and_two_other_seeds(client):
    final = generate(client, "a blue circle", num_inference_steps=6, seed=5)[1]
    status, plot, summary = client.predict(final["run_id"], 2, "en", api_name="/text_to_image_path")
    assert summary["seeds"] == [5, 6, 7] and summary["steps"] == [6, 6, 6] and plot
    assert 0 < summary["explained"][1] <= summary["explained"][0] <= 1


def test_attention_maps_of_a_run_per_word(client):
    final = generate(client, "a large red circle in the center", num_inference_steps=6)[1]
    assert final["summary"]["attention"] is True
    status, gallery, summary = client.predict(final["run_id"], 0, "en", api_name="/text_to_image_attention")
    assert summary["tokens"] == ["a", "large", "red", "circle", "in", "the", "center"] and summary["step"] == 0
    assert [item["caption"] for item in gallery] == summary["tokens"]
    status, gallery, summary = client.predict(final["run_id"], 4, "zh-CN", api_name="/text_to_image_attention")
    assert summary["step"] == 4 and "第 4 / 6 步" in status
    with pytest.raises(AppError, match="between 0 and 6"):
        client.predict(final["run_id"], 7, "en", api_name="/text_to_image_attention")
