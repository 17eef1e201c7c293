"""Lesson 7 super-resolution (DDNM), checked against block means, Pillow, diffusers' DDIM step and PSNR's formula."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from PIL import Image

from diffusion.datasets import digits
from diffusion.errors import InputError
from diffusion.lessons.applications.superres import (
    SuperResRequest, SuperResRun, bicubic_upscale, ddim_sigma, ddim_update, downsample, project_box, project_ddnm,
    psnr, super_resolve, upsample,
)
from diffusion.models import registry

SIZE, T, BETA_START, BETA_END = 28, 1000, 1e-4, 0.02


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
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=11, norm_num_groups=4).eval()


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear").config


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    """The shipped model's held-out digits (its training split is the other 4,000), in [0, 1]."""
    images, labels = digits.mnist_offline()
    return digits.split_train_heldout(images, labels, 0.2, 0).heldout_images.astype(np.float64) / 255.0


def block_means(pictures: np.ndarray, factor: int) -> np.ndarray:
    """A by hand: the mean of every factor × factor block of ``(..., 28, 28)``, in float64."""
    n = SIZE // factor
    return np.asarray(pictures, np.float64).reshape(*pictures.shape[:-2], n, factor, n, factor).mean(axis=(-3, -1))


def box_projection_by_bisection(v: np.ndarray, y: np.ndarray, factor: int) -> np.ndarray:
    """min ‖x - v‖ s.t. block means = y, -1 ≤ x ≤ 1: per block clip(v + λ), λ by 100 bisection steps."""
    out = np.empty_like(v)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            block = v[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor]
            lo, hi = -3.0, 3.0
            for _ in range(100):
                lam = (lo + hi) / 2
                lo, hi = (lam, hi) if np.clip(block + lam, -1, 1).mean() < y[i, j] else (lo, lam)
            out[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor] = np.clip(block + (lo + hi) / 2, -1, 1)
    return out


@pytest.mark.parametrize("factor", [2, 4])
def test_a_is_block_mean_and_a_dagger_is_its_exact_right_inverse(factor):
    g = torch.Generator().manual_seed(factor)
    x = torch.rand((3, 1, SIZE, SIZE), generator=g, dtype=torch.float64)
    assert np.allclose(downsample(x, factor).numpy(), block_means(x.numpy(), factor), atol=1e-12)
    y = torch.rand((3, 1, SIZE // factor, SIZE // factor), generator=g, dtype=torch.float64)
    assert torch.allclose(downsample(upsample(y, factor), factor), y, rtol=0, atol=1e-12)  # A A† = I


@pytest.mark.parametrize("factor", [2, 4])
def test_ddnm_keeps_the_null_space_and_takes_the_range_from_y(factor):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((2, 1, SIZE, SIZE), generator=g) * 2 - 1
    y = torch.rand((2, 1, SIZE // factor, SIZE // factor), generator=g) * 2 - 1
    out = project_ddnm(x0, y, factor)
    assert np.abs(block_means(out.numpy(), factor) - y.numpy()).max() < 1e-6

    def null(v: torch.Tensor) -> np.ndarray:  # (I - A†A) v: each block minus its mean
        return v.numpy() - np.kron(block_means(v.numpy(), factor), np.ones((factor, factor)))

    assert np.allclose(null(out), null(x0), atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4])
def test_box_projection_matches_bisection_and_stays_valid(factor):
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand((2, 1, SIZE, SIZE), generator=g) * 2 - 1
    y = torch.rand((2, 1, SIZE // factor, SIZE // factor), generator=g) * 2 - 1
    y[0, 0, 0, 0], y[0, 0, 1, 1] = -1.0, 1.0  # saturated blocks: all black, all white
    out = project_box(x0, y, factor)
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.abs(block_means(out.numpy(), factor) - y.numpy()).max() < 1e-6
    for k in range(2):
        reference = box_projection_by_bisection(x0[k, 0].double().numpy(), y[k, 0].double().numpy(), factor)
        assert np.abs(out[k, 0].numpy() - reference).max() < 1e-5
    assert torch.all(out[0, 0, :factor, :factor] == -1.0) and torch.all(out[0, 0, factor:2 * factor,
                                                                            factor:2 * factor] == 1.0)


def test_box_projection_is_ddnm_where_ddnm_stays_in_range():
    g = torch.Generator().manual_seed(3)
    x0 = (torch.rand((2, 1, SIZE, SIZE), generator=g) - 0.5) / 2
    y = (torch.rand((2, 1, 7, 7), generator=g) - 0.5) / 2
    assert project_ddnm(x0, y, 4).abs().max() < 1.0
    assert torch.allclose(project_box(x0, y, 4), project_ddnm(x0, y, 4), atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_ddim_update_is_diffusers_ddim_step(config, eta):
    """Eq. 12 with eq. 16's σ, against ``DDIMScheduler.step`` (no clipping, so x̂_0 is Tweedie's)."""
    scheduler = DDIMScheduler.from_config(config, clip_sample=False)
    scheduler.set_timesteps(20)
    alphas = np.cumprod(1.0 - np.linspace(BETA_START, BETA_END, T))
    g = torch.Generator().manual_seed(4)
    for t in (950, 500, 0):
        x, eps, noise = (torch.randn((2, 1, SIZE, SIZE), generator=g) for _ in range(3))
        ab, prev = alphas[t], t - T // 20
        ab_prev = alphas[prev] if prev >= 0 else 1.0
        x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        ours = ddim_update(x0, eps, ab_prev, ddim_sigma(ab, ab_prev, eta), noise)
        theirs = scheduler.step(eps, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        assert torch.allclose(ours, theirs, atol=2e-5), t


def keys_matrix(n: int, factor: int, a: float = -0.5) -> np.ndarray:
    """Upscaling by ``factor`` as a matrix: Keys' cubic kernel at the output pixel centres,
    cut at the picture's edge and renormalised, as Pillow's resampler does."""
    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))

    centres = (np.arange(n * factor) + 0.5) / factor
    weights = kernel(np.arange(n)[None, :] + 0.5 - centres[:, None])
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("factor", [2, 4])
def test_bicubic_is_pillows(factor):
    g = np.random.default_rng(factor)
    low = g.random((SIZE // factor, SIZE // factor)).astype(np.float32)
    ours = bicubic_upscale(low, factor)
    direct = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    assert ours.shape == (SIZE, SIZE) and np.allclose(ours, np.clip(direct, 0, 1), atol=1e-6)
    by_hand = np.clip(keys_matrix(low.shape[0], factor) @ low @ keys_matrix(low.shape[1], factor).T, 0, 1)
    assert np.allclose(ours, by_hand, atol=1e-5)
    assert np.allclose(bicubic_upscale(np.full_like(low, 0.25), factor), 0.25, atol=1e-6)


def test_psnr_is_ten_log_ten_of_one_over_mse():
    g = np.random.default_rng(5)
    truth, estimate = g.random((28, 28)), g.random((28, 28))
    assert psnr(truth, estimate) == pytest.approx(10 * np.log10(1.0 / np.mean((truth - estimate) ** 2)))
    assert psnr(truth, truth) == float("inf")


@pytest.mark.parametrize("projection, factor", [("ddnm_box", 4), ("ddnm_box", 2), ("ddnm", 4)])
def test_result_matches_the_measurement(unet, config, heldout, projection, factor):
    infos = []
    run = super_resolve(unet, config, SuperResRequest(heldout[1], factor, fills=2, num_inference_steps=6,
                                                      projection=projection), callback=infos.append)
    result = run.result()
    y = block_means(heldout[1], factor)
    assert np.allclose(result.low, y, atol=1e-6)
    assert np.abs(block_means(result.pictures, factor) - y).max() < 1e-5  # A x̂ = y
    assert max(result.consistency) < 1e-5
    if projection == "ddnm_box":
        assert result.pictures.min() >= 0.0 and result.pictures.max() <= 1.0
    assert result.psnr_bicubic == pytest.approx(psnr(heldout[1], result.bicubic))
    assert result.psnr == pytest.approx([psnr(heldout[1], p) for p in result.pictures])
    assert [i.step for i in infos] == list(range(6)) and len(run) == 6
    assert run.x0_network.shape == run.x0_pred.shape == (6, 2, 1, SIZE, SIZE)
    for info in infos:  # every x̂_0 the sampler used already matched y
        assert np.abs(block_means((info.x0_pred[:, 0].numpy() + 1) / 2, factor) - y).max() < 1e-5


def test_a_low_resolution_input_has_no_psnr(unet, config, heldout):
    low = block_means(heldout[2], 4)
    run = super_resolve(unet, config, SuperResRequest(low, 4, fills=1, num_inference_steps=4))
    result = run.result()
    assert result.original is None and result.psnr is None and result.psnr_bicubic is None
    assert np.allclose(result.low, low, atol=1e-7) and max(result.consistency) < 1e-5
    assert json.loads(json.dumps(run.summary()))["psnr_db"] is None


def test_stop_determinism_and_seeds(unet, config, heldout):
    def run(seed: int, fills: int, **kwargs) -> SuperResRun:
        return super_resolve(unet, config, SuperResRequest(heldout[3], 4, fills=fills, seed=seed,
                                                           num_inference_steps=5), **kwargs)

    first = run(11, 2)
    assert torch.equal(first.samples, run(11, 2, record=False).samples)
    assert not torch.allclose(first.samples, run(12, 2).samples)
    assert torch.allclose(first.samples[1], run(12, 1).samples[0], atol=1e-4)  # fill k = seed + k
    seen = []
    stopped = run(11, 2, callback=seen.append, stop=lambda: len(seen) >= 2)
    assert stopped.stopped and len(stopped) == 2 and stopped.scrub(5).step == 1
    assert stopped.summary()["steps_run"] == 2


@pytest.mark.parametrize("change, code", [
    ({"factor": 3}, "bad_factor"),
    ({"factor": "4"}, "bad_factor"),
    ({"factor": True}, "bad_factor"),
    ({"image": np.zeros((14, 14)), "factor": 4}, "picture_shape"),
    ({"image": np.zeros((20, 20))}, "picture_shape"),
    ({"image": np.full((28, 28), np.inf)}, "picture_not_finite"),
    ({"image": np.full((7, 7), 2.0)}, "picture_range"),
    ({"digit": -1}, "bad_digit"),
    ({"fills": 9}, "out_of_range"),
    ({"eta": 1.5}, "out_of_range"),
    ({"num_inference_steps": 1001}, "out_of_range"),
    ({"projection": "dps"}, "bad_choice"),
])
def test_bad_requests_get_a_message(unet, config, change, code):
    fields = {"image": np.zeros((28, 28)), **change}
    with pytest.raises(InputError) as err:
        super_resolve(unet, config, SuperResRequest(**fields))
    assert err.value.code == code and str(err.value)


def test_equal_requests_share_a_key(heldout):
    a = SuperResRequest(heldout[0].copy(), 2, seed=1).validated(T)
    b = SuperResRequest(heldout[0].astype(np.float32), 2.0, seed=1).validated(T)
    assert a == b and hash(a) == hash(b) and a != SuperResRequest(heldout[0], 4, seed=1).validated(T)
    assert json.loads(json.dumps(a.key())) == a.key()


def test_shipped_model_beats_bicubic_at_factor_4(heldout):
    """Mean PSNR over 8 held-out digits: DDNM-20, one fill each, against Pillow's bicubic."""
    unet, config = registry.load_unet_model("mnist")
    ours, bicubic = [], []
    for k in range(8):
        result = super_resolve(unet, config, SuperResRequest(heldout[10 + k], 4, fills=1, seed=k,
                                                             num_inference_steps=20), record=False).result()
        ours.append(result.psnr[0])
        bicubic.append(result.psnr_bicubic)
    print(f"DDNM {np.mean(ours):.2f} dB, bicubic {np.mean(bicubic):.2f} dB")
    assert np.mean(ours) > np.mean(bicubic) + 1.0, (np.mean(ours), np.mean(bicubic))
