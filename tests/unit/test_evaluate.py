"""The evaluation CLI: the Fréchet distance formula, 8-bit rounding, and a tiny full run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffusion.evaluate import cli as evaluate_cli
from diffusion.evaluate import mnist as evaluate
from tests.unit.test_sampling import tiny_unet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert evaluate.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean shifted by (1, 2, 0): d² = |Δμ|² = 5.
    assert evaluate.frechet_distance(a, a + [1.0, 2.0, 0.0]) == pytest.approx(5.0, rel=1e-6)
    # N(0, I) against N(0, 4I) in 3-d: Tr(I + 4I - 2·2I) = 3 (up to sampling error).
    b = rng.normal(size=(4000, 3)) * 2.0
    assert evaluate.frechet_distance(a, b) == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError):
        evaluate.frechet_distance(a[:1], b)


def test_quantise_gives_png_levels():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.3, 1.0, 5.0])
    q = evaluate.quantise(x)
    levels = (q + 1) * 127.5
    torch.testing.assert_close(levels, torch.round(levels))
    assert q.min() == -1 and q.max() == 1


def test_classifier_learns_separable_patterns():
    torch.manual_seed(0)
    x = -torch.ones(200, 1, 28, 28)
    y = torch.arange(200) % 10
    for k in range(200):  # class c: a bright bar in row band c
        x[k, 0, 2 * y[k] + 4: 2 * y[k] + 7, 4:24] = 1.0
    model = evaluate.train_classifier(x, y, steps=120, seed=0)
    feats, pred = evaluate.predict(model, x)
    assert feats.shape == (200, evaluate.FEATURES)
    assert (pred == y.numpy()).mean() > 0.9


def test_tiny_end_to_end_run_writes_a_report(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler().save_pretrained(folder / "scheduler")
    out = tmp_path / "report.json"
    code = evaluate_cli.main(["mnist", "--model-dir", str(folder), "--samples-per-class", "2", "--reference", "60",
                              "--ddpm-steps", "4", "--ddim-steps", "2", "--eta-steps", "2", "--classifier-steps",
                              "5", "--threads", "1", "--guidance", "2", "--low-precision-steps", "2",
                              "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["rows"]]
    assert names == ["DDPM-4", "DDIM-2", "DDIM-2 bf16", "DDIM-2 η=1", "DDIM-2 s=1"]
    assert [r["precision"] for r in report["rows"]] == ["fp32", "fp32", "bf16", "fp32", "fp32"]
    assert all(r["samples"] == 20 and r["frechet"] >= 0 and 0 <= r["accuracy"] <= 1 for r in report["rows"])
    assert report["classifier"]["train_heldout_digits"] == 1000 and report["classifier"]["test_real_digits"] == 4000
    assert report["frechet_floor_real_vs_real"] > 0
    assert "| DDPM-4 | 2 |" in capsys.readouterr().out
