"""The 2-D lab through the real API, as a student's notebook would call it."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import AppError

from diffusion.lessons import lab2d

pytestmark = pytest.mark.e2e
TRAIN = dict(dataset="moons", n_points=300, seed=2, train_steps=400, hidden=64, depth=2, learning_rate=3e-3,
             schedule="linear", text="", lang="en")


@pytest.fixture(scope="module")
def trained(client):
    job = client.submit(**TRAIN, api_name="/lab2d_train")
    outputs = job.outputs()
    return outputs, job.result()[-1]


def test_training_streams_the_loss_and_ends_with_its_summary(trained):
    outputs, summary = trained
    assert len(outputs) >= 2  # at least the first answer and the final one
    assert summary["dataset"] == "moons" and summary["n_train"] == 300 and summary["train_steps"] == 400
    assert summary["final_loss"] is not None and 0 < summary["final_loss"] < 1.0
    assert len(summary["run_id"]) == 32


def test_every_sampler_answers_points_and_the_figures(client, trained):
    run_id = trained[1]["run_id"]
    results = {s: client.predict(run_id, s, 40, 0.0, 400, 7, "en", api_name="/lab2d_sample")
               for s in ("ddpm", "ddim", "exact")}
    for name, summary in results.items():
        points = np.asarray(summary["samples"])
        assert points.shape == (400, 2) and np.isfinite(points).all(), name
        assert summary["sampler"] == name and summary["seconds"] >= 0
    # The same seed starts every sampler from the same x_T; the exact score copies training points.
    assert results["exact"]["nearest_train_distance_median"] < results["ddim"]["nearest_train_distance_median"]
    again = client.predict(run_id, "ddim", 40, 0.0, 400, 7, "en", api_name="/lab2d_sample")
    assert again["samples"] == results["ddim"]["samples"]
    # Samples come in the data set's own coordinates: moons lie in about [-1, 2] × [-0.5, 1].
    ddim = np.asarray(results["ddim"]["samples"])
    assert -1.6 < np.median(ddim[:, 0]) < 2.5 and -1.0 < np.median(ddim[:, 1]) < 1.5
    fresh = lab2d.make_dataset("moons", 2000, 99).points
    assert abs(ddim[:, 0].mean() - fresh[:, 0].mean()) < 0.3


def test_continue_and_the_field(client, trained):
    run_id = trained[1]["run_id"]
    more = client.predict(run_id, 200, "en", api_name="/lab2d_continue")[-1]
    assert more["train_steps"] == 600 and more["steps_this_call"] == 200
    plot, text = client.predict(run_id, 50, "en", api_name="/lab2d_field")
    assert plot and "t = 50" in text


def test_bad_requests_get_clear_translated_messages(client):
    with pytest.raises(AppError, match="Train a model first|no longer"):
        client.predict("0" * 32, "ddim", 20, 0.0, 100, 0, "en", api_name="/lab2d_sample")
    with pytest.raises(AppError, match="训练"):
        client.predict("0" * 32, "ddim", 20, 0.0, 100, 0, "zh-CN", api_name="/lab2d_sample")
    with pytest.raises(AppError, match="Data set|must be one of"):
        client.predict(**dict(TRAIN, dataset="mnist"), api_name="/lab2d_train")
    with pytest.raises(AppError, match="characters"):
        client.predict(**dict(TRAIN, dataset="text", text="x" * 40), api_name="/lab2d_train")
