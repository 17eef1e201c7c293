"""Lesson 7's anomaly detection: preparation, both scores, the reference, the metrics and the CLIs."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffusion import cli
from diffusion.datasets import digits as data
from diffusion.errors import InputError
from diffusion.evaluate import anomaly as evaluate_anomaly
from diffusion.lessons.applications import anomaly, outliers
from diffusion.models import registry
from diffusion.models.digit_autoencoder import DigitAutoencoder, build_autoencoder
from diffusion.train import autoencoder as train_autoencoder

FAST = anomaly.DiffusionSettings(timesteps=(100, 300), draws=1, reconstruction_t=300)


@pytest.fixture(scope="module")
def split():
    torch.set_num_threads(1)
    return evaluate_anomaly.heldout_split()


@pytest.fixture(scope="module")
def digit_model():
    return registry.load_unet_model("mnist")


def _pixel_noise(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def test_noise_scores_higher_than_a_real_heldout_digit_with_both_shipped_models(split):
    pictures = np.stack([split.heldout_images[0], split.heldout_images[500], _pixel_noise()])
    for method in anomaly.METHODS:
        scores = anomaly.compute_scores(method, pictures).scores
        assert scores[2] > max(scores[0], scores[1]), method


def test_diffusion_errors_match_diffusers_add_noise_and_tweedie(digit_model, split):
    unet, config = digit_model
    digit = split.heldout_images[3]
    got = anomaly.diffusion_scores(unet, config, digit, FAST)
    scheduler = DDPMScheduler.from_config(config)
    x0 = data.to_model_range(digit[None])
    eps = FAST.noise()
    expected = np.zeros(10)
    for c in range(10):
        for k, t in enumerate(FAST.timesteps):
            tau = torch.tensor([t - 1])
            x_t = scheduler.add_noise(x0, eps[k:k + 1], tau)  # DDPM eq. 4, by diffusers
            with torch.no_grad():
                eps_hat = unet(x_t, tau, class_labels=torch.tensor([c])).sample
            expected[c] += ((eps_hat - eps[k:k + 1]) ** 2).mean().item() / len(FAST.timesteps)
            if c == int(np.argmin(got.class_errors[0])) and t == FAST.reconstruction_t:
                x0_hat = scheduler.step(eps_hat, int(tau), x_t).pred_original_sample  # eq. 15, clipped
                np.testing.assert_allclose(got.reconstruction[0], ((x0_hat[0, 0] + 1) / 2).numpy(), atol=1e-5)
    np.testing.assert_allclose(got.class_errors[0], expected, rtol=1e-4)
    best = np.sort(expected)
    np.testing.assert_allclose(got.scores[0], np.log(best[0]) - FAST.margin_weight * np.log(best[1] - best[0]),
                               rtol=1e-4)
    np.testing.assert_allclose(got.error_map[0].mean(), best[0], rtol=1e-4)


def test_same_input_same_score(digit_model):
    unet, config = digit_model
    picture = _pixel_noise(3)
    first = anomaly.diffusion_scores(unet, config, picture, FAST)
    second = anomaly.diffusion_scores(unet, config, picture.copy(), FAST)
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.error_map, second.error_map)
    ae = registry.load_autoencoder()
    np.testing.assert_array_equal(anomaly.autoencoder_scores(ae, picture).scores,
                                  anomaly.autoencoder_scores(ae, picture).scores)


def test_autoencoder_score_is_the_mean_squared_error_on_the_unit_scale(split):
    model = registry.load_autoencoder()
    got = anomaly.autoencoder_scores(model, split.heldout_images[:4])
    x = torch.from_numpy(split.heldout_images[:4].astype(np.float32) / 127.5 - 1)[:, None]
    with torch.no_grad():
        x_hat = ((model(x) + 1) / 2).numpy()[:, 0]
    expected = ((x_hat - split.heldout_images[:4] / 255.0) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5)
    assert got.reconstruction.min() >= 0 and got.reconstruction.max() <= 1


def test_auroc_against_sklearn_and_a_hand_computed_case():
    # normal {1, 2, 3}, anomalous {2, 4}: pairs won 0.5 + 1 + 0 (for 2) and 3 (for 4) out of 6
    assert outliers.auroc([1, 2, 3], [2, 4]) == pytest.approx(4.5 / 6)
    assert outliers.auroc([0, 0], [1]) == 1.0 and outliers.auroc([1], [0, 0]) == 0.0
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    normal, anomalous = np.round(rng.normal(0, 1, 300), 1), np.round(rng.normal(0.7, 1, 200), 1)  # with ties
    truth = np.r_[np.zeros(300), np.ones(200)]
    scores = np.r_[normal, anomalous]
    assert outliers.auroc(normal, anomalous) == pytest.approx(metrics.roc_auc_score(truth, scores), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(truth, scores)
    assert outliers.false_alarm_at_detection(normal, anomalous) == pytest.approx(fpr[tpr >= 0.95].min())


def test_threshold_and_percentile_against_numpy():
    ref = np.random.default_rng(1).normal(size=1000)
    for alpha in (0.01, 0.05, 0.2):
        tau = anomaly.threshold_at(ref, alpha)
        assert (ref > tau).mean() <= alpha < (ref >= tau).mean()  # at most α above, and no lower τ would do
        assert tau in ref
    for score in (-3.0, 0.1, ref[17], 5.0):
        below, equal = (ref < score).mean(), (ref == score).mean()
        assert anomaly.percentile_of(ref, score) == pytest.approx(100 * (below + equal / 2))
    assert anomaly.percentile_of([1.0, 2.0, 3.0, 4.0], 2.5) == 50.0


def test_prepare_undoes_inversion_size_and_colour(split):
    digit = split.heldout_images[7]
    big = np.asarray(Image.fromarray(digit).resize((280, 280), Image.Resampling.BICUBIC))
    paper = 255 - big  # black ink on white paper
    rgb = np.repeat(paper[:, :, None], 3, axis=2)
    rgba = np.dstack([rgb, np.full(big.shape, 255, np.uint8)])
    padded = np.pad(big, ((10, 90), (60, 5)))  # off centre, not square
    for picture in (digit, big, paper, rgb, rgba, padded, big[:, :, None], Image.fromarray(rgb)):
        out = anomaly.prepare_picture(picture)
        assert out.dtype == np.uint8 and out.shape == (28, 28)
        assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.9  # resampling blurs by under a pixel
    ys, xs = np.mgrid[0:28, 0:28]
    framed = anomaly.prepare_picture(np.pad(np.full((50, 30), 200, np.uint8), ((5, 100), (100, 5))))
    rows, cols = np.flatnonzero(framed.any(1)), np.flatnonzero(framed.any(0))
    assert rows.size == 20 and cols.size == 12  # MNIST's 20-pixel box, aspect kept
    assert abs((framed * ys).sum() / framed.sum() - 14) <= 0.5 and abs((framed * xs).sum() / framed.sum() - 14) <= 0.5


@pytest.mark.parametrize("picture, code", [
    (None, "image_missing"), ([[0, 255]], "image_unreadable"), ("digit.png", "image_unreadable"),
    (np.zeros((4, 4), np.uint8), "image_too_small"), (np.zeros((40, 40), np.uint8), "anomaly_blank"),
    (np.full((40, 40, 3), 180, np.uint8), "anomaly_blank"), (np.zeros((5, 40, 40), np.uint8), "image_unreadable"),
    (np.full((30, 30), np.nan), "image_unreadable"),
])
def test_bad_pictures_are_refused(picture, code):
    with pytest.raises(InputError) as error:
        anomaly.prepare_picture(picture)
    assert error.value.code == code


@pytest.mark.parametrize("kwargs, code", [
    ({"method": "vae"}, "bad_choice"), ({"method": None}, "bad_choice"),
    ({"false_alarm_rate": 0.9}, "out_of_range"), ({"false_alarm_rate": float("nan")}, "not_a_number"),
    ({"false_alarm_rate": "5%"}, "not_a_number"), ({"false_alarm_rate": True}, "not_a_number"),
])
def test_bad_requests_are_refused(kwargs, code):
    with pytest.raises(InputError) as error:
        anomaly.score_picture(_pixel_noise(), **kwargs)
    assert error.value.code == code


def test_bad_digit_arrays_and_settings_are_refused():
    for digits in (np.zeros((2, 28, 28), np.float32), np.zeros((2, 32, 32), np.uint8), [[0]], np.zeros((0, 28, 28), np.uint8)):
        with pytest.raises(InputError, match="uint8 array"):
            anomaly.check_digits(digits)
    with pytest.raises(InputError):
        anomaly.DiffusionSettings(timesteps=(100, 2000))
    with pytest.raises(InputError):
        anomaly.DiffusionSettings(reconstruction_t=250)
    for scores in ([], [1.0, float("inf")], [[1.0]]):
        with pytest.raises(InputError):
            anomaly.threshold_at(scores)
        with pytest.raises(InputError):
            outliers.auroc(scores, [1.0])


def test_shipped_reference_matches_recomputation_and_its_threshold(split):
    assert len(split.heldout_images) == 1000
    for method, digits in (("autoencoder", split.heldout_images), ("diffusion", split.heldout_images[[0, 400, 999]])):
        reference = anomaly.reference_scores(method)
        assert reference.shape == (1000,)
        index = np.arange(1000) if method == "autoencoder" else np.array([0, 400, 999])
        np.testing.assert_allclose(anomaly.compute_scores(method, digits).scores, reference[index], rtol=1e-4, atol=1e-6)
        assert (reference > anomaly.threshold_at(reference, 0.05)).mean() <= 0.05


def test_stale_or_missing_reference_is_refused(tmp_path):
    data_ = json.loads(anomaly.REFERENCE_FILE.read_text())
    data_["weights"]["diffusion"] = "0" * 16
    stale = tmp_path / "reference.json"
    stale.write_text(json.dumps(data_))
    with pytest.raises(InputError) as error:
        anomaly.reference_scores("diffusion", stale)
    assert error.value.code == "anomaly_reference_stale"
    assert anomaly.reference_scores("autoencoder", stale).shape == (1000,)  # its own model is unchanged
    with pytest.raises(InputError) as error:
        anomaly.reference_scores("diffusion", tmp_path / "nothing.json")
    assert error.value.code == "anomaly_reference_missing"


def test_score_picture_summary_for_a_digit_and_noise(split):
    for method in anomaly.METHODS:
        digit = anomaly.score_picture(split.heldout_images[11], method)
        noise = anomaly.score_picture(_pixel_noise(), method, false_alarm_rate=0.01)
        summary = noise.summary()
        assert {"score", "threshold", "is_anomaly", "percentile", "method"} <= set(summary)
        assert summary["method"] == method and summary["is_anomaly"] is True and summary["verdict"] == "anomalous"
        assert noise.percentile > 99.0 and digit.percentile < noise.percentile
        assert digit.is_anomaly == (digit.score > digit.threshold)
        assert digit.reconstruction.shape == digit.error_map.shape == (28, 28)
        assert json.loads(json.dumps(summary)) == summary
    assert digit.best_class is None and anomaly.score_picture(split.heldout_images[11]).best_class == split.heldout_labels[11]


def test_bundled_examples_are_shipped_reproducible_and_heldout(split, tmp_path):
    shipped = outliers.examples()
    assert list(shipped) == list(outliers.EXAMPLES)
    try:
        fresh = outliers.render_examples(tmp_path, split.heldout_images, split.heldout_labels)
    except InputError as error:  # a machine without the fonts can still check the rest
        assert error.code == "font_missing"
    else:
        for name, path in fresh.items():
            np.testing.assert_array_equal(np.asarray(Image.open(path)), shipped[name])
    train = {d.tobytes() for d in split.train_images}
    heldout = {d.tobytes() for d in split.heldout_images}
    for name in ("digit_3", "digit_7"):
        assert shipped[name].tobytes() in heldout and shipped[name].tobytes() not in train
    for picture in shipped.values():
        anomaly.prepare_picture(picture)


def test_outlier_sets_are_deterministic_and_development_sets_differ(split):
    pytest.importorskip("PIL.ImageFont")
    try:
        first = outliers.outlier_sets(split.heldout_images[:5], n=6)
    except InputError as error:
        pytest.skip(error.code)
    again = outliers.outlier_sets(split.heldout_images[:5], n=6)
    dev = outliers.outlier_sets(split.heldout_images[:5], n=6, development=True)
    assert list(first) == list(outliers.SETS)
    for name in outliers.SETS:
        assert first[name].dtype == np.uint8 and first[name].shape[1:] == (28, 28)
        np.testing.assert_array_equal(first[name], again[name])
        if name != "upside_down":
            assert not np.array_equal(first[name], dev[name])
    np.testing.assert_array_equal(first["upside_down"], np.rot90(split.heldout_images[:5], 2, axes=(1, 2)))
    assert not set(outliers.CJK_EVAL) & set(outliers.CJK_DEV) and not set(outliers.EVAL_FONTS) & set(outliers.DEV_FONTS)


def test_autoencoder_round_trip_and_size(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder((8, 16), 12).eval()
    model.save_pretrained(tmp_path / "ae")
    loaded = DigitAutoencoder.from_pretrained(tmp_path / "ae", use_safetensors=True, local_files_only=True).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.config.latent_dim == 12 and list(loaded.config.channels) == [8, 16]
    assert (registry.MODELS["autoencoder"].path / "diffusion_pytorch_model.safetensors").stat().st_size < 1_000_000
    for bad in ({"channels": (8,)}, {"channels": (8, 1000)}, {"latent_dim": 0}, {"channels": ("a", "b")}):
        with pytest.raises(InputError):
            build_autoencoder(**bad)


def test_missing_autoencoder_folder_is_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(registry.MODELS, "autoencoder", registry.MODELS["autoencoder"].at(tmp_path / "none"))
    assert not registry.available("autoencoder")
    with pytest.raises(registry.ModelUnavailable):
        registry.load_autoencoder()
    broken = tmp_path / "broken"
    shutil.copytree(registry.MODELS_DIR / "digit-autoencoder", broken)
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    monkeypatch.setitem(registry.MODELS, "autoencoder", registry.MODELS["autoencoder"].at(broken))
    with pytest.raises(registry.ModelUnavailable):
        registry.load_autoencoder()
    registry.clear_cache()


def test_training_cli_exports_a_loadable_model(tmp_path):
    parser = cli.command_parser("python -m diffusion.train", "train", (train_autoencoder.add_subcommand,))
    args = parser.parse_args(["autoencoder", "--steps", "3", "--batch-size", "8", "--warmup", "0", "--channels",
                              "4,8", "--latent-dim", "4", "--log-every", "1", "--validate-every", "2",
                              "--threads", "1", "--out", str(tmp_path / "run"), "--export", str(tmp_path / "out")])
    assert args.func(args) == 0
    model = DigitAutoencoder.from_pretrained(tmp_path / "out", use_safetensors=True, local_files_only=True)
    info = json.loads((tmp_path / "out" / "train_info.json").read_text())
    assert info["task"] == "autoencoder" and info["steps"] == 3 and info["data"]["train"] == 4000
    assert info["settings"]["latent_dim"] == model.config.latent_dim == 4
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["autoencoder", "--out", "x", "--channels", "4,8,16"])


def test_evaluation_cli_with_the_autoencoder(tmp_path, capsys):
    parser = cli.command_parser("python -m diffusion.evaluate", "evaluate", (evaluate_anomaly.add_subcommand,), dest="task")
    args = parser.parse_args(["anomaly", "--methods", "autoencoder", "--per-set", "4", "--heldout", "30",
                              "--threads", "1", "--json", str(tmp_path / "report.json")])
    assert args.run(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["set"] for r in report["rows"]] == list(outliers.SETS)
    assert all(0.0 <= r["auroc_autoencoder"] <= 1.0 for r in report["rows"])
    assert "| noise | 4 |" in capsys.readouterr().out
    refused = parser.parse_args(["anomaly", "--heldout", "30", "--write-reference"])
    assert refused.run(refused) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["anomaly", "--methods", "vae"])
    assert isinstance(evaluate_anomaly.markdown(report), str) and isinstance(parser, argparse.ArgumentParser)
