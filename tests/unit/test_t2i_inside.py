"""Lesson 6's views inside a run: two prompts from the same noise, the guidance sweep, the latent's path
and the per-model defaults, on the shipped embedded model (6-step runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2hsv

from diffusion.errors import InputError
from diffusion.lessons import text2image as t2i
from diffusion.lessons.text2image.inside import (
    GuidanceEffect, LatentPath, guidance_effects, path_latents, plot_path, project,
)
from diffusion.ui.i18n import Translator
from diffusion.ui.settings import AppSettings

STEPS = 6


@pytest.fixture
def tabs():
    """The tab's handlers on a fresh server (its own job queue: nothing is shared with other tests)."""
    from diffusion.ui.text2image.compare import ManyRunHandlers
    from diffusion.ui.text2image.inside import InsideHandlers
    from diffusion.ui.text2image.run import TextToImageHandlers

    settings = AppSettings()
    main = TextToImageHandlers(Translator(), settings, t2i.EMBEDDED)
    many = ManyRunHandlers(main)
    yield main, many, InsideHandlers(many)
    settings.jobs.shutdown()


def _last(stream):
    items = list(stream)
    return items[-1]


def _generated(main, prompt, **settings):
    return _last(main.generate(prompt, **{"num_inference_steps": STEPS, **settings}))


# -- the latent's path ---------------------------------------------------------------------------
def test_the_projection_agrees_with_an_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(0)
    paths = [rng.normal(size=(7, 40)) * np.linspace(3, 0.1, 40), rng.normal(size=(5, 40))]
    result = project(paths, ["0", "1"])
    stacked = np.concatenate(paths)
    centred = stacked - stacked.mean(axis=0)
    values, vectors = np.linalg.eigh(centred.T @ centred)  # ascending
    order = np.argsort(values)[::-1]
    expected = centred @ vectors[:, order[:2]]
    got = np.concatenate(result.points)
    for k in range(2):  # equal up to each axis' sign
        sign = np.sign(expected[:, k] @ got[:, k])
        np.testing.assert_allclose(got[:, k], sign * expected[:, k], atol=1e-9)
    np.testing.assert_allclose(result.explained, values[order[:2]] / values.sum(), rtol=1e-9)
    assert [len(p) for p in result.points] == [7, 5]


def test_a_straight_path_lies_on_the_first_component():
    direction = np.random.default_rng(1).normal(size=64)
    line = np.outer(np.linspace(-2, 3, 9), direction)
    result = project([line], ["0"])
    assert result.explained[0] == pytest.approx(1.0) and result.explained[1] == pytest.approx(0.0, abs=1e-12)
    gaps = np.diff(result.points[0][:, 0])
    assert np.allclose(gaps, gaps[0])  # evenly spaced points stay evenly spaced


def test_a_run_path_has_one_point_per_step_and_the_end(tabs):
    main, _, _ = tabs
    run_id = _generated(main, "a red circle")["run_id"]
    from diffusion.ui.text2image.run import RUNS
    run = RUNS.get(run_id)
    latents = path_latents(run)
    assert latents.shape == (STEPS + 1, int(np.prod(run.x_t.shape[2:])))
    np.testing.assert_array_equal(latents[0], run.x_t[0, 0].double().flatten().numpy())
    with pytest.raises(InputError):
        path_latents(run, picture=1)
    figure = plot_path(project([latents], ["0"]))
    axes = figure.axes[0]
    assert "principal component 1" in axes.get_xlabel() and "%" in axes.get_ylabel()


def test_the_path_endpoint_runs_other_seeds_of_the_same_prompt(tabs):
    main, _, inside = tabs
    run_id = _generated(main, "a blue star", seed=3)["run_id"]
    result = _last(inside.path(run_id, 2, "en"))
    summary = result["path_summary"]
    assert summary["seeds"] == [3, 4, 5] and summary["steps"] == [STEPS] * 3
    assert 0 < summary["explained"][1] <= summary["explained"][0] <= 1
    with pytest.raises(InputError):
        list(inside.path(run_id, 9, "en"))
    with pytest.raises(InputError):
        list(inside.path("0" * 32, 0, "en"))


# -- what guidance did ---------------------------------------------------------------------------
def test_guidance_effects_measure_saturation_contrast_and_change():
    rng = np.random.default_rng(2)
    pictures = [rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) for _ in range(3)]
    pictures[2] = pictures[1].copy()
    effects = guidance_effects([1.0, 3.0, 7.5], pictures)
    for effect, picture in zip(effects, pictures):
        assert effect.saturation == pytest.approx(float(rgb2hsv(picture)[..., 1].mean()), abs=1e-9)
        luma = picture.astype(float) @ np.array([0.299, 0.587, 0.114]) / 255
        assert effect.contrast == pytest.approx(float(luma.std()))
    assert effects[0].change is None and effects[2].change == 0.0
    assert effects[1].change == pytest.approx(np.abs(pictures[1] / 255 - pictures[0] / 255).mean())
    regimes = [GuidanceEffect(w, 0, 0, None).regime for w in (0.0, 0.5, 1.0, 3.0, 7.5, 15.0)]
    assert regimes == ["unconditional", "weak", "plain", "moderate", "strong", "extreme"]


def test_the_sweep_runs_the_models_scales_from_the_same_noise(tabs):
    main, many, _ = tabs
    result = _last(many.sweep("a large green triangle", num_inference_steps=STEPS, seed=1, lang="zh-CN"))
    summary = result["summary"]
    assert summary["scales"] == list(t2i.defaults_for(t2i.EMBEDDED).sweep) and not summary["stopped"]
    assert len(result["gallery"]) == 4 and result["gallery"][1][1] == "w = 2"
    assert result["sentences"].count("- **w = ") == 4 and "饱和度" in result["sentences"]
    # Each column is exactly a single run at that guidance scale.
    single = _generated(main, "a large green triangle", seed=1, guidance_scale=5.0)
    np.testing.assert_array_equal(result["gallery"][2][0], single["gallery"][0][0])


# -- two prompts, same noise ---------------------------------------------------------------------
def test_prompt_a_of_a_comparison_is_pixel_identical_to_a_single_run(tabs):
    from diffusion.ui.text2image.run import RUNS

    main, many, _ = tabs
    settings = dict(num_inference_steps=STEPS, guidance_scale=3.0, seed=7, scheduler="ddim")
    result = _last(many.compare("a large red circle", "a large blue square", **settings))
    summary = result["summary"]
    assert summary["prompt_a"] == "a large red circle" and not summary["stopped"]
    single = _generated(main, "a large red circle", **settings)
    assert single["summary"]["shared"] is False  # computed again, not read from the comparison
    np.testing.assert_array_equal(result["col0"], single["gallery"][0][0])
    assert not np.array_equal(result["col0"], result["col1"]) and summary["mean_abs_difference"] > 0
    a, b = RUNS.get(summary["run_id_a"]), RUNS.get(summary["run_id_b"])
    torch.testing.assert_close(a.x_t[0], b.x_t[0], rtol=0, atol=0)  # the same z_T
    assert not torch.equal(a.x_t[-1], b.x_t[-1])
    scrubbed = many.scrub(result["run_ids"], 2, "en")
    np.testing.assert_array_equal(scrubbed["col0"], a.x0_picture(a.frame(1)))
    with pytest.raises(InputError):
        many.scrub("../../etc/passwd", 1, "en")


def test_a_comparison_needs_both_prompts(tabs):
    _, many, _ = tabs
    with pytest.raises(InputError) as error:
        list(many.compare("a red circle", "   ", num_inference_steps=STEPS))
    assert error.value.code == "compare_needs_prompts"


# -- per-model defaults --------------------------------------------------------------------------
def test_each_model_gets_the_settings_its_card_recommends(tabs):
    assert t2i.defaults_for(t2i.EMBEDDED).guidance_scale == 2.0  # the embedded card's best guidance
    turbo = t2i.defaults_for("stabilityai/sd-turbo")
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (1, 0.0) and "lcm" not in turbo.schedulers
    sd = t2i.defaults_for("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert 30 <= sd.num_inference_steps <= 50 and sd.guidance_scale == 7.5
    assert t2i.defaults_for("someone/my-sdxl-turbo") == turbo and t2i.defaults_for("someone/other") == sd
    assert t2i.defaults_for("someone/lcm", lcm_model=True).schedulers == ("lcm",)
    assert t2i.T2IRequest().guidance_scale == 2.0
    for suits in (turbo, sd, t2i.defaults_for(t2i.EMBEDDED)):
        assert suits.scheduler in suits.schedulers and set(suits.schedulers) <= set(t2i.SCHEDULERS)
        t2i.T2IRequest(num_inference_steps=suits.num_inference_steps, guidance_scale=suits.guidance_scale,
                       scheduler=suits.scheduler, width=suits.side, height=suits.side).validated(64)
    main, _, _ = tabs
    chosen = main.model_defaults("stabilityai/sd-turbo", "zh-CN")
    assert chosen["steps"] == 1 and chosen["guidance"] == 0.0 and chosen["width"] == 512
    assert [c[1] for c in chosen["scheduler"]["choices"]] == list(turbo.schedulers)
    assert "步数 1，" in chosen["model_note"]


def test_no_attention_map_is_drawn_over_a_blocked_picture(tabs):
    from diffusion.lessons.text2image.safety import Verdicts, blocked_picture
    from diffusion.ui.text2image.run import RUNS

    main, _, inside = tabs
    run_id = _generated(main, "a red circle")["run_id"]
    run = RUNS.get(run_id)
    shown = inside.attention(run_id, 0, "en")["attention_gallery"]
    assert not np.array_equal(shown[0][0], blocked_picture(64, 64))
    run.verdicts = Verdicts(1, enabled=True)
    run.verdicts.add(2, [True])  # the filter blocked x̂₀ at step 3: every view from then on is hidden
    for step in (0, 3, STEPS):
        items = inside.attention(run_id, step, "en")["attention_gallery"]
        assert [w for _, w in items] == ["a", "red", "circle"]
        assert all(np.array_equal(p, blocked_picture(64, 64)) for p, _ in items)
    before = inside.attention(run_id, 2, "en")["attention_gallery"]
    assert not any(np.array_equal(p, blocked_picture(64, 64)) for p, _ in before)
