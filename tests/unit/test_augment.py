"""Lesson 7's augmentation core: the export zip, the requests' caps, the classifier and the experiment.

References are independent of the code under test: the zip is read back with ``zipfile``,
``csv`` and Pillow; the split is recomputed from the shipped digits and the model's
``train_info.json``; the classifier is checked on a task with a known answer; the CLI's
verdict is checked against scipy's one-sample t-test.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest
import torch
from diffusers import UNet2DModel
from PIL import Image
from scipy import stats

from diffusion.datasets import digits as data
from diffusion.errors import InputError
from diffusion.evaluate import augment as evaluate_augment
from diffusion.lessons.applications import augment, augment_figures, classifier
from diffusion.lessons.sampling import SampleRequest, sample
from diffusion.models import registry

CONFIG = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
          "clip_sample": True}
FAST = classifier.TrainSettings(steps=4, batch_size=8, rounds=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=11, norm_num_groups=4,
    ).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def reference_split() -> data.Split:
    """The model's split recomputed from its train_info.json and the shipped digits."""
    info = json.loads((registry.MODELS["mnist"].path / "train_info.json").read_text())["settings"]
    images, labels = data.mnist_offline()
    return data.split_train_heldout(images, labels, info["heldout_fraction"], info["split_seed"])


def small_export(**changes) -> augment.ExportRequest:
    fields = {"digits": "0123456789", "per_class": 2, "num_inference_steps": 3, "seed": 5} | changes
    return augment.ExportRequest(**fields)


# --- the zip ------------------------------------------------------------------------------------

def test_zip_round_trip_with_zipfile_csv_and_pillow():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.array([2, 5, 9]), 4)
    images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    request = augment.ExportRequest(digits="259", per_class=4).validated(1000)
    blob = augment.to_zip(augment.GeneratedSet(images, labels, 0.0, request))
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode("utf-8"))))
        pngs = sorted(n for n in names if n.endswith(".png"))
        assert sorted(names) == sorted(pngs + ["labels.csv"])
        assert len(pngs) == len(rows) == 12
        assert list(rows[0]) == ["file", "label"]
        for i, row in enumerate(rows):
            assert re.fullmatch(r"\d{5}_\d\.png", row["file"])
            assert row["file"] == f"{i:05d}_{labels[i]}.png"
            assert int(row["label"]) == labels[i] == int(row["file"][6])
            picture = Image.open(io.BytesIO(archive.read(row["file"])))
            assert picture.format == "PNG" and picture.mode == "L" and picture.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(picture), images[i])
        assert {int(r["label"]) for r in rows} == {2, 5, 9}
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())


def test_zip_refuses_a_malformed_set():
    request = augment.ExportRequest().validated(1000)
    with pytest.raises(ValueError):
        augment.to_zip(augment.GeneratedSet(np.zeros((2, 28, 28), np.float32), np.zeros(2, np.int64), 0.0, request))
    with pytest.raises(ValueError):
        augment.to_zip(augment.GeneratedSet(np.zeros((2, 28, 28), np.uint8), np.array([0, 10]), 0.0, request))


def test_export_is_deterministic_and_uses_lesson_4s_sampler(unet):
    request = small_export()
    first, second = (augment.generate_dataset(unet, CONFIG, request, precision="fp32") for _ in range(2))
    assert first.images.shape == (20, 28, 28) and first.images.dtype == np.uint8
    np.testing.assert_array_equal(first.labels, np.repeat(np.arange(10), 2))
    assert augment.to_zip(first) == augment.to_zip(second)
    other = augment.generate_dataset(unet, CONFIG, small_export(seed=6), precision="fp32")
    assert augment.to_zip(other) != augment.to_zip(first)
    # The 7s are lesson 4's sample() with the class seed, rounded to 8 bits ...
    direct = sample(unet, CONFIG, SampleRequest(sampler="ddim", num_inference_steps=3, seed=augment.class_seed(5, 7),
                                                batch_size=2, digit="7"), record=False)
    np.testing.assert_array_equal(first.images[first.labels == 7], data.from_model_range(direct.samples))
    # ... and do not depend on the other classes asked for.
    sevens = augment.generate_dataset(unet, CONFIG, small_export(digits="73"), precision="fp32")
    np.testing.assert_array_equal(sevens.images[sevens.labels == 7], first.images[first.labels == 7])
    assert sevens.request.digits == "37" and sevens.summary()["count"] == 4
    assert augment.export_filename(sevens.request) == "digits-37-x2-ddim3-s1.5-seed5.zip"


def test_export_stop_keeps_whole_classes_and_reports_progress(unet):
    seen = []
    result = augment.generate_dataset(unet, CONFIG, small_export(), precision="fp32",
                                      stop=lambda: len(seen) >= 7, progress=seen.append)
    assert result.stopped
    assert len(result.labels) == 4 and set(result.labels) == {0, 1}  # classes 0, 1 done; 2 cut at its 1st step
    assert [p.done for p in seen] == list(range(1, 8)) and {p.phase for p in seen} == {"generate"}
    assert seen[0].total == 30
    assert augment.to_zip(result)  # a stopped export still packs what it has


# --- validation and caps ------------------------------------------------------------------------

@pytest.mark.parametrize("changes, code", [
    ({"digits": "112"}, "bad_digits"), ({"digits": "1a"}, "bad_digits"), ({"digits": ""}, "bad_digits"),
    ({"digits": 7}, "bad_digits"), ({"digits": "0123456789" * 2}, "bad_digits"),
    ({"per_class": 0}, "out_of_range"), ({"per_class": 101}, "out_of_range"), ({"per_class": 2.5}, "not_an_integer"),
    ({"per_class": "x"}, "not_a_number"), ({"guidance_scale": 10.5}, "out_of_range"),
    ({"guidance_scale": float("nan")}, "not_a_number"), ({"sampler": "plms"}, "bad_choice"),
    ({"num_inference_steps": 0}, "out_of_range"), ({"num_inference_steps": 1001}, "out_of_range"),
    ({"seed": -1}, "out_of_range"), ({"seed": 2**32}, "out_of_range"),
    ({"per_class": 100, "num_inference_steps": 51}, "export_too_big"),
])
def test_export_request_validation(changes, code):
    with pytest.raises(InputError) as error:
        augment.ExportRequest(**changes).validated(1000)
    assert error.value.code == code


def test_export_request_accepts_the_ui_forms_and_caps():
    assert augment.ExportRequest(digits=" 9, 0,4").validated(1000).digits == "049"
    assert augment.ExportRequest(digits=["7", 3]).validated(1000).digits == "37"
    biggest = augment.ExportRequest(per_class=100, num_inference_steps=50).validated(1000)  # 1000 digits, DDIM-50
    assert biggest.per_class == augment.MAX_PER_CLASS == 100
    # Without guidance one network call per step: twice the steps fit.
    assert augment.ExportRequest(per_class=100, num_inference_steps=100, guidance_scale=1.0).validated(1000)


@pytest.mark.parametrize("changes", [{"k_real": 0}, {"k_real": 101}, {"n_synthetic": -1},
                                     {"n_synthetic": augment.MAX_SYNTHETIC_TAB + 1}, {"seed": 1.5},
                                     {"guidance_scale": -1}, {"k_real": None}])
def test_experiment_request_validation(changes):
    with pytest.raises(InputError):
        augment.ExperimentRequest(**changes).validated()


def test_experiment_request_caps():
    for k in augment.K_CHOICES:
        assert augment.ExperimentRequest(k_real=k).validated().k_real == k
    assert augment.ExperimentRequest(n_synthetic=100).validated(max_synthetic=100).n_synthetic == 100
    with pytest.raises(InputError):  # offline tools cannot go past the export's cap either
        augment.ExperimentRequest(n_synthetic=101).validated(max_synthetic=1000)
    export = augment.ExperimentRequest(n_synthetic=30, seed=4, guidance_scale=2.0).export_request()
    assert (export.per_class, export.seed, export.guidance_scale, export.digits) == (30, 4, 2.0, "0123456789")


# --- the classifier -----------------------------------------------------------------------------

def squares(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class c: a bright 6×6 square at a place of its own, on noise; trivially separable."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = rng.uniform(-1.0, -0.6, (len(labels), 1, 28, 28)).astype(np.float32)
    for i, c in enumerate(labels):
        row, col = divmod(int(c), 5)
        images[i, 0, 2 + 12 * row: 8 + 12 * row, 1 + 5 * col: 7 + 5 * col] = 1.0
    return torch.from_numpy(images), torch.from_numpy(labels)


def test_classifier_learns_a_separable_task():
    train, heldout = squares(10, seed=0), squares(20, seed=1)
    result = classifier.train_arms([train], heldout, classifier.TrainSettings(steps=60, rounds=3), 0, 1)
    curve = result.curves[0]
    assert curve.steps == [20, 40, 60] and curve.size == 100
    assert curve.final_accuracy >= 0.95
    assert curve.train_loss[-1] < 0.5 * curve.train_loss[0]
    assert curve.epochs[-1] == pytest.approx(60 * 32 / 100)


def test_arms_share_initial_weights_and_are_independent():
    train, heldout = squares(3, seed=0), squares(5, seed=1)
    shuffled = (train[0].flip(0), train[1].flip(0))
    pair = classifier.train_arms([train, shuffled], heldout, FAST, 3, 4)
    alone = classifier.train_arms([shuffled], heldout, FAST, 3, 4)
    assert pair.curves[1].heldout_accuracy == alone.curves[0].heldout_accuracy
    assert pair.curves[1].train_loss == alone.curves[0].train_loss
    global_state = torch.random.get_rng_state()
    first = classifier.build_classifier(torch.Generator().manual_seed(3)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), global_state)  # no draw from the global generator
    again = classifier.build_classifier(torch.Generator().manual_seed(3)).state_dict()
    other = classifier.build_classifier(torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["features.0.weight"], other["features.0.weight"])


def test_initial_weights_follow_pytorchs_default_distribution():
    model = classifier.build_classifier(torch.Generator().manual_seed(0))
    fc = model.features[7].weight  # (64, 1568): U(-b, b) with b = 1/sqrt(1568), variance b²/3
    bound = 1.0 / np.sqrt(1568)
    assert float(fc.detach().abs().max()) <= bound
    assert float(fc.detach().var()) == pytest.approx(bound**2 / 3, rel=0.02)
    torch.manual_seed(0)
    reference = torch.nn.Linear(1568, 64)  # PyTorch's own default initialisation of the same layer
    assert float(fc.detach().var()) == pytest.approx(float(reference.weight.detach().var()), rel=0.03)
    assert float(model.features[7].bias.detach().abs().max()) <= bound


def test_accuracy_counts_arg_max_hits():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    predicted = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8])
    x = predicted.float().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)
    truth = torch.tensor([1, 2, 3, 0, 0, 6, 0, 8])
    assert classifier.accuracy(Fixed(), x, truth, batch_size=3) == pytest.approx(5 / 8)


def test_train_settings_validation():
    with pytest.raises(InputError):
        classifier.TrainSettings(steps=0).validated()
    assert classifier.TrainSettings(steps=3, rounds=10).validated().round_ends() == [1, 2, 3]


# --- the experiment -----------------------------------------------------------------------------

def test_model_split_is_the_models_own(reference_split):
    split = augment.model_split()
    np.testing.assert_array_equal(split.heldout_idx, reference_split.heldout_idx)
    np.testing.assert_array_equal(split.train_idx, reference_split.train_idx)
    assert len(split.heldout_idx) == 1000 and not split.images.flags.writeable


@pytest.mark.parametrize("seed", [0, 11])
def test_real_picks_come_from_the_training_part_k_per_class(reference_split, seed):
    split = augment.model_split()
    picks = {k: classifier.pick_real(split, k, seed) for k in (5, 10, 50)}
    for k, idx in picks.items():
        assert np.isin(idx, reference_split.train_idx).all()
        assert not np.isin(idx, reference_split.heldout_idx).any()
        assert len(np.unique(idx)) == len(idx)
        np.testing.assert_array_equal(np.bincount(split.labels[idx], minlength=10), np.full(10, k))
    assert np.isin(picks[5], picks[10]).all() and np.isin(picks[10], picks[50]).all()
    assert not np.array_equal(picks[5], classifier.pick_real(split, 5, seed + 1))


def test_tiny_experiment_end_to_end(unet, reference_split):
    seen = []
    request = augment.ExperimentRequest(k_real=2, n_synthetic=3, seed=1)
    result = augment.run_experiment(unet, CONFIG, request, settings=FAST, progress=seen.append, precision="fp32")
    assert np.isin(result.real_indices, reference_split.train_idx).all()
    np.testing.assert_array_equal(np.bincount(reference_split.train_labels[
        np.searchsorted(reference_split.train_idx, result.real_indices)], minlength=10), np.full(10, 2))
    assert result.real_only.size == 20 and result.with_synthetic.size == 50
    assert result.real_only.steps == result.with_synthetic.steps == [2, 4]
    assert result.heldout_size == 1000
    for value in (result.accuracy_real_only, result.accuracy_with_synthetic):
        assert 0.0 <= value <= 1.0 and (value * 1000) == pytest.approx(round(value * 1000))
    np.testing.assert_array_equal(np.bincount(result.synthetic.labels), np.full(10, 3))
    summary = json.loads(json.dumps(result.summary()))
    assert summary["accuracy_real_only"] == round(result.accuracy_real_only, 4)
    assert summary["seconds"] >= 0 and summary["k_real"] == 2 and summary["n_synthetic"] == 3
    assert [p.phase for p in seen] == ["generate"] * 200 + ["train"] * 2
    assert seen[-1].done == 4 and len(seen[-1].curves) == 2
    # The generated digits are exactly the export of the same seed and guidance.
    fours = sample(unet, CONFIG, SampleRequest(seed=augment.class_seed(1, 4), batch_size=3, digit="4",
                                               guidance_scale=result.request.guidance_scale), record=False)
    np.testing.assert_array_equal(data.from_model_range(fours.samples),
                                  result.synthetic.images[result.synthetic.labels == 4])
    figure = augment_figures.plot_result(result, text={"xlabel": "Schritte"})
    assert figure.axes[0].get_xlabel() == "Schritte" and len(figure.axes[0].lines) == 2
    shown = figure.axes[0].lines[1].get_ydata()
    np.testing.assert_allclose(shown, 100 * np.array(result.with_synthetic.heldout_accuracy))
    np.testing.assert_allclose(figure.axes[1].lines[0].get_xdata(), result.real_only.steps)


def test_no_synthetic_means_identical_arms(unet):
    result = augment.run_experiment(unet, CONFIG, augment.ExperimentRequest(k_real=1, n_synthetic=0),
                                    settings=FAST)
    assert result.synthetic is None and result.generate_seconds == 0.0
    assert result.accuracy_real_only == result.accuracy_with_synthetic
    assert result.summary()["gain"] == 0.0


def test_experiment_stop_is_honoured(unet):
    request = augment.ExperimentRequest(k_real=1, n_synthetic=1)
    during_generation = augment.run_experiment(unet, CONFIG, request, settings=FAST, stop=lambda: True)
    assert during_generation.stopped and during_generation.real_only.steps == []
    assert during_generation.summary()["accuracy_real_only"] is None
    rounds = []
    during_training = augment.run_experiment(unet, CONFIG, request, settings=FAST, progress=rounds.append,
                                             stop=lambda: any(p.phase == "train" for p in rounds))
    assert during_training.stopped and during_training.real_only.steps == [2]
    assert during_training.with_synthetic.steps == [2]
    running = augment_figures.plot_result(during_training)
    assert running._suptitle.get_text() == "Stopped at step 2 of 4"


# --- the CLI ------------------------------------------------------------------------------------

def test_cli_verdict_agrees_with_scipys_t_test():
    rng = np.random.default_rng(0)
    for shift in (-0.03, -0.005, 0.0, 0.005, 0.03):
        values = list(rng.normal(shift, 0.01, 5))
        verdict = evaluate_augment.paired(values)["verdict"]
        p = stats.ttest_1samp(values, 0.0).pvalue
        expected = "no clear effect" if p >= 0.05 else ("helps" if np.mean(values) > 0 else "hurts")
        assert verdict == expected
    assert evaluate_augment.paired([0.1])["verdict"] == "one seed"


def test_cli_arguments_are_checked():
    from diffusion import cli
    parser = cli.command_parser("python -m diffusion.evaluate", "test", [evaluate_augment.add_subcommand])
    args = parser.parse_args(["augment", "--k", "50,5", "--synthetic", "100,0,10"])
    assert args.k == [5, 50] and args.synthetic == [0, 10, 100] and args.seeds == 5
    for bad in (["--k", "101"], ["--synthetic", "101"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["augment", *bad])


def test_first_per_class_takes_the_head_of_each_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    images = np.arange(6, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
    request = augment.ExportRequest(digits="01", per_class=3).validated(1000)
    picked, picked_labels = evaluate_augment.first_per_class(augment.GeneratedSet(images, labels, 0.0, request), 2)
    np.testing.assert_array_equal(picked[:, 0, 0], [0, 1, 3, 4])
    np.testing.assert_array_equal(picked_labels, [0, 0, 1, 1])
