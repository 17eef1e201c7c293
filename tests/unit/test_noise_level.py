"""The patch-PCA noise-level estimate against known noise (lesson 5)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from diffusion.evaluate import noise_level as evaluation
from diffusion.lessons.denoising import noise_level
from diffusion.lessons.denoising.compare import add_noise


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [5.0, 25.0])
def test_pure_noise_is_measured_within_a_few_percent(channels, sigma):
    rng = np.random.default_rng(0)
    image = 0.5 + sigma / 255.0 * rng.standard_normal((160, 160, channels))  # nothing clips
    found = noise_level.estimate(image)
    assert found.sigma == pytest.approx(sigma, rel=0.03)
    assert 0 < found.stderr < 0.05 * sigma


def test_a_photo_with_added_noise_and_its_texture_kept_apart():
    clean = data.astronaut()[::2, ::2]  # a scikit-image photo (not one of the test sets)
    for sigma in (15.0, 25.0):
        found = noise_level.estimate(add_noise(clean, sigma, 1))
        assert found.sigma == pytest.approx(sigma, rel=0.08)


def test_the_eigenvalue_rule_keeps_only_the_noise_ones():
    noise = np.full(50, 4.0) + np.linspace(-0.5, 0.5, 50)  # 50 noise eigenvalues around σ² = 4
    assert noise_level.noise_variance(np.concatenate([noise, [90.0, 400.0, 3000.0]])) == pytest.approx(4.0, abs=0.05)


def test_tiny_or_flat_pictures_are_refused_or_read_as_no_noise():
    with pytest.raises(ValueError):
        noise_level.estimate(np.zeros((5, 40, 1)))
    assert noise_level.estimate(np.full((64, 64, 3), 0.5)).sigma == 0.0


def test_the_evaluation_reports_both_estimators_on_given_photos():
    photos = [data.camera()[:128, :128, None], data.astronaut()[:128, :128]]
    report = evaluation.evaluate(photos, [25.0])
    row = report["25"]
    assert set(row) == {"pca_mae_pct", "pca_bias", "pca_stderr", "wavelet_mae_pct", "wavelet_bias",
                        "seconds_per_photo"}
    assert 0 <= row["pca_mae_pct"] < 20 and 0 <= row["wavelet_mae_pct"] < 40
