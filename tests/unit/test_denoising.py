"""Lesson 5's core: noise levels, Tweedie, DDIM from t*, colour planes, classical baselines, metrics."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from skimage.metrics import peak_signal_noise_ratio

from diffusion.lessons.denoising import classical
from diffusion.models.denoiser_net import (NoiseLevels, build_denoiser_unet, predict_noise, sigma_to_model, size_multiple,
                                    tweedie)
from diffusion.lessons.denoising import (DiffusionDenoiser, add_noise, from_channels, run_method, score, summary,
                                 to_channels, to_uint8)
from diffusion.schedule import make_scheduler


@pytest.fixture(scope="module")
def scheduler():
    return make_scheduler("linear", 1000)


@pytest.fixture(scope="module")
def levels(scheduler):
    return NoiseLevels.from_scheduler(scheduler)


@pytest.fixture(scope="module")
def tiny_denoiser(scheduler):
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), layers_per_block=1, unshuffle=2, sample_size=16)
    return DiffusionDenoiser(unet, dict(scheduler.config), precision="fp32")  # exact comparisons


def test_levels_match_the_scheduler_at_integer_timesteps(levels, scheduler):
    abar = scheduler.alphas_cumprod.double().numpy()
    taus = np.arange(0, 1000, 37)
    np.testing.assert_allclose(levels.alpha_bar(taus), abar[taus], rtol=1e-12)
    np.testing.assert_allclose(levels.sigma(taus), np.sqrt((1 - abar[taus]) / abar[taus]), rtol=1e-9)
    assert levels.alpha_bar(-1.0) == pytest.approx(1.0)
    assert levels.tau(0.0) == pytest.approx(-1.0)


def test_tau_inverts_sigma_between_the_knots(levels):
    taus = np.random.default_rng(0).uniform(-1, 998, 200)
    np.testing.assert_allclose(levels.tau(levels.sigma(taus)), taus, atol=1e-6)
    assert np.all(np.diff(levels.sigma(np.linspace(-1, 999, 500))) > 0)  # σ grows with t
    # the defining equation: √((1 - ᾱ) / ᾱ) = σ at τ*(σ)
    for sigma_255 in (5, 15, 25, 50, 75, 100):
        s = sigma_to_model(sigma_255)
        abar = levels.alpha_bar(levels.tau(s))
        assert np.sqrt((1 - abar) / abar) == pytest.approx(s, rel=1e-9)
    with pytest.raises(ValueError):
        levels.tau(1e3)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (2, 1, 13, 29), (1, 1, 5, 3), (3, 1, 40, 24)])
def test_the_network_takes_any_image_size(tiny_denoiser, shape):
    unet = tiny_denoiser.unet
    assert size_multiple(unet) == 4
    x = torch.randn(shape)
    with torch.no_grad():
        eps = predict_noise(unet, x, torch.full((shape[0],), 10.0))
    assert eps.shape == x.shape and torch.isfinite(eps).all()


class GaussianOracle(torch.nn.Module):
    """The exact ε-predictor for Gaussian data x_0 ~ N(0, s²) per pixel, behind the UNet interface.

    E[ε | x_t] = √(1-ᾱ) x_t / (ᾱ s² + 1 - ᾱ): the network a perfect training run would learn.
    It stands in for the UNet so that Tweedie's formula can be checked against the Wiener filter.
    """

    def __init__(self, levels: NoiseLevels, s: float, r: int = 2) -> None:
        super().__init__()
        self.levels, self.s, self.r = levels, s, r
        self.config = types.SimpleNamespace(in_channels=r * r, out_channels=r * r, block_out_channels=(8,))
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, tau):
        abar = torch.as_tensor(self.levels.alpha_bar(tau.double().numpy()), dtype=x.dtype).view(-1, 1, 1, 1)
        eps = (1 - abar).sqrt() * x / (abar * self.s**2 + 1 - abar)
        return types.SimpleNamespace(sample=eps)


def test_tweedie_is_the_wiener_filter_for_gaussian_data(levels):
    s, sigma = 0.5, 0.3
    oracle = GaussianOracle(levels, s)
    y = torch.randn(2, 1, 8, 12, generator=torch.Generator().manual_seed(1))
    x0 = tweedie(oracle, levels, y, sigma)
    torch.testing.assert_close(x0, y * s**2 / (s**2 + sigma**2), rtol=1e-5, atol=1e-6)


def test_multi_step_is_ddim_eq12_as_diffusers_runs_it(tiny_denoiser, levels, scheduler):
    # τ* = 99 exactly, 4 steps: 99 → 74 → 49 → 24 → clean, the grid diffusers' DDIM uses with 40 steps.
    sigma_255 = float(levels.sigma(99.0)) * 127.5
    clean = np.random.default_rng(2).integers(0, 256, (20, 24, 1)).astype(np.uint8)
    noisy = add_noise(clean, sigma_255, seed=3, quantise=False)
    for eta in (0.0, 1.0):
        ours = tiny_denoiser.multi_step(noisy, sigma_255, steps=4, eta=eta, seed=7, color="rgb")
        np.testing.assert_allclose(ours.taus, [99, 74, 49, 24, -1], atol=1e-9)
        ddim = DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True, clip_sample=True)
        ddim.set_timesteps(40)
        ddim.timesteps = torch.tensor([99, 74, 49, 24])
        y = torch.from_numpy(noisy[:, :, 0] * 2 - 1).float()[None, None]
        x = y * scheduler.alphas_cumprod[99].sqrt()
        generator = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for t in ddim.timesteps:
                eps = predict_noise(tiny_denoiser.unet, x, t.float().view(1))
                x = ddim.step(eps, t, x, eta=eta, use_clipped_model_output=True, generator=generator).prev_sample
        np.testing.assert_allclose(ours.image[:, :, 0], (x[0, 0].double().numpy() + 1) / 2, atol=2e-5)
        assert len(ours.frames) == 5 and len(ours.predictions) == 4
        assert ours.sigmas_255[0] == pytest.approx(sigma_255) and ours.sigmas_255[-1] == 0


def test_one_step_matches_tweedie_per_plane(tiny_denoiser, levels):
    clean = np.random.default_rng(4).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    noisy = add_noise(clean, 30, seed=0)
    out = tiny_denoiser.one_step(noisy, 30, color="rgb")
    planes = torch.from_numpy(np.moveaxis(noisy * 2 - 1, -1, 0)).float()[:, None]
    expected = tweedie(tiny_denoiser.unet, levels, planes, float(sigma_to_model(30)))
    np.testing.assert_allclose(out, np.moveaxis((expected[:, 0].double().numpy() + 1) / 2, 0, -1), atol=1e-5)
    np.testing.assert_array_equal(tiny_denoiser.one_step(noisy, 0), noisy)


def test_multi_step_takes_its_first_pass_from_the_one_step_method(scheduler):
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), layers_per_block=1, unshuffle=2, sample_size=16)
    calls = []
    unet.register_forward_hook(lambda module, args, output: calls.append(1))
    warm = DiffusionDenoiser(unet, dict(scheduler.config), precision="fp32")
    cold = DiffusionDenoiser(unet, dict(scheduler.config), precision="fp32")
    clean = np.random.default_rng(5).integers(0, 256, (24, 20, 3)).astype(np.uint8)
    noisy = add_noise(clean, 25, seed=1)
    warm.one_step(noisy, 25)
    assert len(calls) == 1
    shared = warm.multi_step(noisy, 25, steps=3)
    assert len(calls) == 3 and shared.reused_passes == 1  # 3 steps, 2 passes computed
    alone = cold.multi_step(noisy, 25, steps=3)  # a fresh denoiser computes all three
    assert len(calls) == 6 and alone.reused_passes == 0
    np.testing.assert_array_equal(shared.image, alone.image)
    np.testing.assert_array_equal(shared.x0_pred[0], alone.x0_pred[0])
    assert warm.multi_step(noisy, 26, steps=3).reused_passes == 0  # another σ: another first pass
    assert warm.multi_step(noisy, 25, steps=3, color="rgb").reused_passes == 0  # other planes too


def test_the_remembered_first_passes_are_bounded(tiny_denoiser, monkeypatch):
    from diffusion.lessons.denoising import denoiser as module
    monkeypatch.setattr(module, "FIRST_PASSES", 3)
    clean = np.random.default_rng(6).integers(0, 256, (16, 16, 1)).astype(np.uint8)
    for sigma in range(10, 20):
        tiny_denoiser.one_step(add_noise(clean, sigma, seed=0), sigma)
    assert len(tiny_denoiser._first_passes) == 3
    monkeypatch.setattr(module, "FIRST_PASS_BYTES", 16 * 16 * 4 * 2)  # two planes' worth of bytes
    tiny_denoiser.one_step(add_noise(clean, 21, seed=0), 21)
    assert len(tiny_denoiser._first_passes) == 2


def test_opponent_planes_keep_independent_noise_and_invert_exactly():
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 1, (40, 30, 3))
    for color in ("opponent", "rgb"):
        planes, _ = to_channels(image, color)
        np.testing.assert_allclose(from_channels(planes, color), image, atol=1e-12)
    # i.i.d. noise of std σ in R, G, B becomes independent noise of std σ·factor per plane
    sigma = 0.1
    noise = sigma * rng.standard_normal((256, 256, 3))
    planes, factors = to_channels(0.5 + noise, "opponent")
    stds = planes.reshape(3, -1).std(axis=1) / 2  # planes are on the [-1, 1] scale
    np.testing.assert_allclose(stds, sigma * factors, rtol=0.02)
    np.testing.assert_allclose(np.corrcoef(planes.reshape(3, -1)), np.eye(3), atol=0.02)
    np.testing.assert_allclose(factors, [1 / np.sqrt(3), 1 / np.sqrt(2), np.sqrt(6) / 4])
    grey = rng.uniform(0, 1, (8, 8, 1))
    assert to_channels(grey, "opponent")[0].shape == (1, 8, 8)


def test_gaussian_blur_is_the_heat_equation_with_dt_half_the_variance():
    # A cosine mode with half-sample symmetry is an eigenfunction of the heat equation with
    # no-flux walls: it decays by exp(-D t ω²) per axis. Blurring with std s must match D t = s²/2.
    n, k = 64, 3
    omega = np.pi * k / n
    x = np.cos(omega * (np.arange(n) + 0.5))
    image = (0.5 + 0.4 * np.outer(x, x))[:, :, None]
    std, diffusion_time = classical.heat_time(25)
    assert diffusion_time == pytest.approx(std**2 / 2)
    blurred = classical.gaussian_heat(image, 25)
    exact = 0.5 + 0.4 * np.exp(-2 * diffusion_time * omega**2) * np.outer(x, x)
    np.testing.assert_allclose(blurred[:, :, 0], exact, atol=2e-3)


def test_classical_methods_keep_shape_and_remove_noise():
    rng = np.random.default_rng(6)
    yy, xx = np.mgrid[0:64, 0:64]
    clean = (128 + 80 * np.sin(xx / 7) * np.cos(yy / 9)).astype(np.uint8)
    for channels in (1, 3):
        c = np.repeat(clean[:, :, None], channels, axis=2)
        noisy = add_noise(c, 25, seed=int(rng.integers(1000)))
        methods = [classical.gaussian_heat, classical.total_variation, classical.nl_means]
        if classical.bm3d_available():  # optional dependency (non-commercial licence)
            methods.append(classical.bm3d)
        for method in methods:
            out = method(noisy, 25)
            assert out.shape == c.shape
            assert score(to_uint8(out), c)[0] > score(to_uint8(noisy), c)[0] + 3
            np.testing.assert_array_equal(method(noisy, 0), noisy)


def test_noise_estimate_recovers_a_known_sigma():
    yy, xx = np.mgrid[0:128, 0:128]
    clean = (120 + 60 * np.sin(xx / 11) + 30 * np.cos(yy / 13)).astype(np.uint8)[:, :, None]
    for sigma in (10, 25, 50):
        assert classical.estimate_noise(add_noise(clean, sigma, seed=1, quantise=False)) == pytest.approx(sigma, rel=0.1)


def test_noise_is_seeded_and_scores_are_those_of_the_returned_pixels(tiny_denoiser):
    clean = np.random.default_rng(7).integers(0, 256, (24, 24, 1)).astype(np.uint8)
    a, b = add_noise(clean, 20, seed=11), add_noise(clean, 20, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_noise(clean, 20, seed=12))
    assert np.all(a * 255 == np.rint(a * 255)) and a.min() >= 0 and a.max() <= 1  # 8-bit, clipped
    raw = add_noise(clean, 20, seed=11, quantise=False)
    assert raw.min() < 0 or raw.max() > 1 or not np.all(raw * 255 == np.rint(raw * 255))
    results = [run_method(m, a, 20, clean=clean, denoiser=tiny_denoiser, steps=3)
               for m in ("diffusion_one_step", "diffusion_multi_step", "gaussian_heat", "total_variation")]
    for r in results:
        assert r.image.dtype == np.uint8 and r.image.shape == clean.shape
        assert r.psnr == pytest.approx(peak_signal_noise_ratio(clean, r.image, data_range=255))
        assert r.seconds >= 0 and r.cpu_seconds >= 0
    out = summary(20, 19.5, results)
    assert set(out) == {"sigma", "sigma_estimated", "sigma_stderr", "methods"}
    assert "one_step" in next(iter(out["methods"]))
    assert out["methods"]["gaussian_heat"]["diffusion_time_px2"] == pytest.approx(classical.heat_time(20)[1], abs=1e-3)
    with pytest.raises(ValueError):
        run_method("diffusion_one_step", a, 20)
    with pytest.raises(ValueError):
        run_method("median", a, 20)


def test_reduced_precision_changes_the_result_only_slightly(tiny_denoiser, scheduler):
    from diffusion.lessons.denoising import choose_precision

    assert choose_precision(torch.device("cpu"), "fp32") == "fp32"
    assert choose_precision(torch.device("cuda"), "auto") == "fp16"
    assert choose_precision(torch.device("cpu"), "auto") in ("fp32", "bf16")
    with pytest.raises(ValueError):
        choose_precision(torch.device("cpu"), "int4")
    fast = DiffusionDenoiser(tiny_denoiser.unet, dict(scheduler.config), precision="bf16")
    clean = np.random.default_rng(8).integers(0, 256, (32, 32, 1)).astype(np.uint8)
    noisy = add_noise(clean, 25, seed=0)
    exact, approx = tiny_denoiser.one_step(noisy, 25), fast.one_step(noisy, 25)
    assert approx.dtype == np.float64 and np.abs(approx - exact).max() < 0.01
