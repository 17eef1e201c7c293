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


def test_the_texture_threshold_passes_pure_noise_at_its_stated_rate():
    rng = np.random.default_rng(2)
    x = 128.0 + 10.0 * rng.standard_normal((300, 300))
    strength = noise_level.texture_strength(x, noise_level.PATCH)[::3, ::3]  # apart, so nearly independent
    for confidence in (0.9, 0.99):
        above = np.mean(strength >= 100.0 * noise_level.texture_threshold(noise_level.PATCH, confidence))
        assert above == pytest.approx(1 - confidence, rel=0.35)


def test_texture_is_left_out_where_the_wavelet_rule_reads_it_as_noise():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:200, :200]
    stripes = np.where(xx < 100, 0.5 + 0.15 * np.sin(xx * 2.2) * np.cos(yy * 1.7), 0.5)  # fine texture, left half
    noisy = stripes[:, :, None] + 10 / 255 * rng.standard_normal((200, 200, 1))
    assert noise_level.estimate(noisy).sigma == pytest.approx(10, rel=0.05)
    from diffusion.lessons.denoising import classical
    assert classical.estimate_noise(noisy) > 12  # the wavelet rule, for contrast


def test_a_colour_photo_with_clipped_channels_at_high_noise():
    clean = data.astronaut()[::2, ::2].astype(np.float64)
    clean[:, :, 0] = np.maximum(clean[:, :, 0], 235.0)  # a red channel near its top: heavily clipped at σ = 50
    found = noise_level.estimate(add_noise(clean.astype(np.uint8), 50.0, 4))
    assert found.sigma == pytest.approx(50.0, rel=0.05) and found.patches > 0
