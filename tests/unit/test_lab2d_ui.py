"""The 2-D lab's tab logic, called without a browser or Blocks: train, continue, stop, sample, field."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from diffusion.errors import InputError
from diffusion.lessons import lab2d
from diffusion.ui import lab2d as tab
from diffusion.ui.canvas import player_value, read_strokes
from diffusion.ui.handlers import guarded
from diffusion.ui.i18n import Translator


@pytest.fixture(scope="module")
def tr():
    return Translator()


@pytest.fixture(scope="module")
def handlers(tr):
    return tab.Lab2DHandlers(tr)


def _train(handlers, steps=200, **changes):
    args = dict(dataset="moons", n_points=200, seed=3, train_steps=steps, hidden=32, depth=2,
                learning_rate=3e-3, schedule="linear", text="", lang="en")
    args.update(changes)
    return list(handlers.train(*args.values()))


@pytest.fixture(scope="module")
def trained(handlers):
    return _train(handlers)[-1]


def test_training_streams_then_answers_the_api_summary(handlers, trained):
    summary = trained["summary"]
    assert {"run_id", "dataset", "n_train", "train_steps", "seconds", "final_loss"} <= set(summary)
    assert summary["dataset"] == "moons" and summary["n_train"] == 200 and summary["train_steps"] == 200
    run = tab.RUNS.get(summary["run_id"]).run
    assert summary["final_loss"] == pytest.approx(float(np.mean(run.losses[-100:])), abs=1e-6)
    # The same inputs train the same weights (every draw comes from the seed).
    again = tab.RUNS.get(_train(handlers)[-1]["summary"]["run_id"]).run
    for a, b in zip(run.model.parameters(), again.model.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())


def test_continue_training_goes_on_from_where_it_stopped(handlers):
    first = _train(handlers, steps=100)[-1]["summary"]
    more = list(handlers.resume(first["run_id"], 100, "en"))[-1]["summary"]
    assert more["run_id"] == first["run_id"] and more["train_steps"] == 200 and more["steps_this_call"] == 100
    # Two pieces of 100 steps give the weights of one piece of 200.
    whole = tab.RUNS.get(_train(handlers, steps=200)[-1]["summary"]["run_id"]).run
    pieces = tab.RUNS.get(first["run_id"]).run
    for a, b in zip(whole.model.parameters(), pieces.model.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())


def test_stop_ends_training_and_keeps_the_run(handlers):
    stream = handlers.train("moons", 200, 0, 50_000, 32, 2, 3e-3, "linear", "", "en")
    run_id = next(stream)["run_id"]
    stopper = threading.Timer(0.5, tab.Lab2DHandlers.stop, args=(run_id,))
    stopper.start()
    final = list(stream)[-1]["summary"]
    stopper.join()
    assert final["stopped"] and 0 < final["train_steps"] < 50_000
    assert tab.RUNS.get(run_id).run.step == final["train_steps"]


def test_sampling_answers_points_in_the_data_set_s_coordinates(handlers, trained):
    run_id = trained["summary"]["run_id"]
    out = handlers.sample(run_id, "ddim", 20, 0.0, 300, 5, "en")["summary"]
    assert out["sampler"] == "ddim" and len(out["samples"]) == 300
    session = tab.RUNS.get(run_id)
    direct = lab2d.sample(session.run, "ddim", 20, 0.0, 300, 5)
    np.testing.assert_allclose(np.asarray(out["samples"]), direct.samples, atol=1e-5)
    assert {"seconds", "nearest_train_distance_median", "sliced_wasserstein", "sliced_wasserstein_ratio"} <= set(out)


def test_the_exact_score_copies_the_training_points_and_the_network_does_not(handlers, trained):
    run_id = trained["summary"]["run_id"]
    exact = handlers.sample(run_id, "exact", 50, 0.0, 300, 5, "en")["summary"]
    learned = handlers.sample(run_id, "ddim", 50, 0.0, 300, 5, "en")["summary"]
    assert exact["sampler"] == "exact" and exact["predictor"] == "exact"
    assert exact["nearest_train_distance_median"] < 0.2 * learned["nearest_train_distance_median"]


def test_the_sample_button_plays_three_samplers_from_the_same_noise(handlers, trained):
    answers = list(handlers.sample_all(trained["summary"]["run_id"], 20, 0.0, 200, 1, "zh-CN"))
    final = answers[-1]
    player = json.loads(final["player"])
    assert [p["title"] for p in player["panels"]] == ["DDPM（学到的）", "DDIM（学到的）", "精确得分（DDIM）"]
    assert player["labels"][-1] == "t = 0" and player["labels"][0] == "t = 951"  # DDIM-20 starts at τ = 950
    first = [p["frames"][0] for p in player["panels"]]
    assert first[0] == first[1] == first[2]  # the same x_T
    assert {"ddpm_learned", "ddim_learned", "ddim_exact"} <= set(final["summary"])
    assert player["play"] == "播放" and final["nearest_plot"] is not None


def test_a_drawing_becomes_the_training_set(handlers):
    canvas = json.dumps({"strokes": [[[20, 20], [200, 20]], [[20, 200], [200, 200]]], "width": 360, "height": 360})
    final = list(handlers.train_drawn("drawing", 200, 0, 100, 32, 2, 3e-3, "linear", "", canvas, "en"))[-1]
    points = tab.RUNS.get(final["summary"]["run_id"]).run.dataset.points
    assert final["summary"]["dataset"] == "drawing" and points.shape == (200, 2)
    assert len(np.unique(np.sign(points[:, 1]))) == 2  # two horizontal strokes: above and below the middle


@pytest.mark.parametrize("value, code", [
    ("", "drawing_empty"), ('{"strokes": []}', "drawing_empty"), ("not json", "drawing_bad"),
    ('{"strokes": [[["x", 1]]]}', "drawing_bad"), ("[1, 2]", "drawing_bad"), ("x" * 3_000_000, "drawing_bad"),
])
def test_a_broken_drawing_is_refused_with_a_reason(handlers, value, code):
    with pytest.raises(InputError) as error:
        handlers.make_dataset("drawing", 100, 0, "", value)
    assert error.value.code == code


def test_errors_name_the_lab_s_own_parameters_in_both_languages(tr, handlers):
    wrapped = guarded(tr, "lab2d")(handlers.train)
    with pytest.raises(Exception) as error:
        list(wrapped("moons", 5, 0, 100, 32, 2, 3e-3, "linear", "", "zh-CN"))
    assert "训练点数" in str(error.value) and "20" in str(error.value)
    with pytest.raises(Exception) as error:
        list(wrapped("moons", 200, 0, 0, 32, 2, 3e-3, "linear", "", "en"))
    assert "Training steps" in str(error.value)
    with pytest.raises(Exception) as error:
        handlers_sample = guarded(tr, "lab2d")(handlers.sample)
        handlers_sample("0" * 32, "ddim", 20, 0.0, 100, 0, "en")
    assert "no longer in the server's memory" in str(error.value)


def test_read_strokes_and_the_player_value():
    assert read_strokes("") == (None, None)
    strokes, size = read_strokes(json.dumps({"strokes": [[[1, 2], [3, 4]]], "width": 10, "height": 20}))
    assert strokes == [[[1, 2], [3, 4]]] and size == (10, 20)
    value = json.loads(player_value([{"title": "a", "color": "#000", "frames": [np.zeros((2, 2)), np.ones((2, 2))]}],
                                    ["t = 2", "t = 0"], np.full((3, 2), 0.12345), [-1, 1, -1, 1], "Play", "Pause"))
    assert value["panels"][0]["frames"] == [[0, 0, 0, 0], [1, 1, 1, 1]] and value["background"][0] == 0.123
