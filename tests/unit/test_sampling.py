"""Lesson 4 sampler and model registry, checked against bare diffusers loops and the paper's formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffusion.models import registry as models
from diffusion.lessons import sampling
from diffusion.errors import InputError
from diffusion.lessons.sampling.sampler import SampleRequest

# diffusers' Euler and DPM-Solver schedulers pass a tensor to np.array(copy=False).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 28  # diffusion.datasets.digits trains on native 28x28 digits, no padding
NULL = 10
BETA_START, BETA_END, T = 1e-4, 0.02, 1000


def tiny_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        num_class_embeds=11, norm_num_groups=4,
    ).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny network is far too small for the intra-op pool; on a busy machine its
    # synchronisation alone made each call several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    return tiny_unet()


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear").config


def alpha_bar_table() -> np.ndarray:
    """ᾱ_t = Π (1 - β_s) for DDPM's linear schedule, in float64 (DDPM section 4, eq. 4)."""
    return np.cumprod(1.0 - np.linspace(BETA_START, BETA_END, T))


@torch.no_grad()
def bare_loop(unet, config, sampler, steps, labels, w, seed, eta=None, unconditional_only=False):
    """The textbook diffusers loop; guidance from two separate network calls."""
    scheduler = sampling.SAMPLERS[sampler].from_config(config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 1, SIZE, SIZE), generator=generator) * scheduler.init_noise_sigma
    null = torch.full_like(labels, NULL)
    inputs = []
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        inputs.append(x_in.clone())
        if unconditional_only:
            eps = unet(x_in, t, class_labels=null).sample
        elif w == 1.0:
            eps = unet(x_in, t, class_labels=labels).sample
        else:
            eps_c = unet(x_in, t, class_labels=labels).sample
            eps_u = unet(x_in, t, class_labels=null).sample
            eps = eps_u + w * (eps_c - eps_u)
        extra = {} if eta is None else {"eta": eta, "use_clipped_model_output": True}
        x = scheduler.step(eps, t, x, generator=generator, **extra).prev_sample
    return x, inputs


@pytest.mark.parametrize("sampler, eta", [("ddpm", None), ("ddim", 0.0)])
def test_conditional_run_equals_bare_loop(unet, config, sampler, eta):
    request = SampleRequest(sampler=sampler, num_inference_steps=8, seed=3, batch_size=3, digit="7",
                            guidance_scale=1.0)
    payloads = []
    run = sampling.sample(unet, config, request, callback=payloads.append)
    labels = torch.full((3,), 7)
    expected, inputs = bare_loop(unet, config, sampler, 8, labels, 1.0, seed=3, eta=eta)
    assert run.labels.tolist() == [7, 7, 7]
    torch.testing.assert_close(run.samples, expected, atol=1e-6, rtol=0)
    for info, x_in, stored in zip(payloads, inputs, run.x_t):
        torch.testing.assert_close(info.x_t, x_in, atol=1e-6, rtol=0)
        assert torch.equal(stored, x_in.half())


@pytest.mark.parametrize("sampler, eta", [("ddpm", None), ("ddim", 0.5), ("euler_ancestral", None),
                                          ("dpm_solver", None)])
def test_guided_run_equals_two_call_reference(unet, config, sampler, eta):
    request = SampleRequest(sampler=sampler, num_inference_steps=6, seed=11, batch_size=2,
                            digit="random", guidance_scale=2.5, eta=eta or 0.0)
    run = sampling.sample(unet, config, request)
    expected, _ = bare_loop(unet, config, sampler, 6, run.labels, 2.5, seed=11, eta=eta)
    # One batched call of 2B and two calls of B round differently (~1e-7); x̂_0 divides by
    # sqrt(ᾱ_t) ≈ 0.01 at the first steps, so the runs may drift apart by ~1e-5, while a
    # wrong guidance formula or generator use would differ by O(1).
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(run.samples, expected, atol=2e-4 * scale, rtol=0)


def test_guidance_zero_is_the_unconditional_model(unet, config):
    request = SampleRequest(sampler="ddim", num_inference_steps=5, seed=2, batch_size=2, digit="4",
                            guidance_scale=0.0)
    run = sampling.sample(unet, config, request)
    expected, _ = bare_loop(unet, config, "ddim", 5, torch.full((2,), 4), 0.0, seed=2, eta=0.0,
                            unconditional_only=True)
    torch.testing.assert_close(run.samples, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler, clip", [("ddim", False), ("ddim", True), ("ddpm", True),
                                           ("dpm_solver", False)])
def test_x0_prediction_is_tweedie(unet, sampler, clip):
    config = DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                           clip_sample=clip).config
    payloads = []
    sampling.sample(unet, config, SampleRequest(sampler=sampler, num_inference_steps=5, batch_size=2,
                                                guidance_scale=2.0), callback=payloads.append)
    table = alpha_bar_table()
    assert len(payloads) == 5
    for info in payloads:
        alpha_bar = table[int(info.t)]
        assert info.alpha_bar == pytest.approx(alpha_bar, rel=1e-5)
        x0 = (info.x_t.double() - math.sqrt(1 - alpha_bar) * info.eps_pred.double()) / math.sqrt(alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
        torch.testing.assert_close(info.x0_pred.double(), x0, atol=1e-4 / math.sqrt(alpha_bar), rtol=1e-4)


def test_same_request_same_pixels_and_shared_noise(unet, config):
    request = SampleRequest(sampler="ddpm", num_inference_steps=4, seed=5, batch_size=2)
    first = sampling.sample(unet, config, request)
    again = sampling.sample(unet, config, request)
    assert torch.equal(first.samples, again.samples) and torch.equal(first.x0_pred, again.x0_pred)
    assert torch.equal(first.labels, again.labels)
    other = sampling.sample(unet, config, SampleRequest(sampler="ddpm", num_inference_steps=4, seed=6,
                                                        batch_size=2))
    assert not torch.equal(first.samples, other.samples)

    noise = sampling.initial_noise(request, (2, 1, SIZE, SIZE))
    assert torch.equal(noise, torch.randn((2, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(5)))
    assert torch.equal(sampling.sample(unet, config, request, noise=noise).samples, first.samples)
    ddim = sampling.sample(unet, config, SampleRequest(sampler="ddim", num_inference_steps=4, seed=99,
                                                       batch_size=2), noise=noise)
    assert torch.equal(ddim.x_t[0], noise.half())
    with pytest.raises(ValueError, match="shape"):
        sampling.sample(unet, config, request, noise=torch.zeros(3, 1, SIZE, SIZE))


def test_random_digits_are_seeded(config):
    labels = [sampling.class_labels(SampleRequest(seed=s, batch_size=16).validated(T)) for s in (0, 0, 1)]
    assert torch.equal(labels[0], labels[1]) and not torch.equal(labels[0], labels[2])
    assert labels[0].min() >= 0 and labels[0].max() <= 9


def test_stop_after_k_steps_and_callback_order(unet, config):
    seen = []
    request = SampleRequest(sampler="ddim", num_inference_steps=10, batch_size=2)
    run = sampling.sample(unet, config, request, callback=seen.append, stop=lambda: len(seen) >= 3)
    assert run.stopped and len(run) == 3 and run.x_t.shape[0] == 3
    assert [info.step for info in seen] == [0, 1, 2] and all(info.total == 10 for info in seen)
    full_steps = []
    full = sampling.sample(unet, config, request, callback=full_steps.append)
    assert not full.stopped and len(full) == 10
    assert [info.step for info in full_steps] == list(range(10))
    scheduler = DDPMScheduler.from_config(config)
    ts = [info.t for info in full_steps]
    assert ts == sorted(ts, reverse=True) and len(set(ts)) == 10 and all(0 <= t < T for t in ts)
    assert full.timesteps.tolist() == ts and scheduler.config.num_train_timesteps == T
    # the stopped run ends where the full run stood after three steps
    assert torch.equal(run.samples.half(), full.x_t[3])
    assert full.frame(3).x_t.dtype == torch.float32
    assert torch.equal(full.frame(3).x_t, full.x_t[3].float())


@pytest.mark.parametrize("changes, code", [
    ({"num_inference_steps": T + 1}, "out_of_range"),
    ({"num_inference_steps": 0}, "out_of_range"),
    ({"num_inference_steps": 2.5}, "not_an_integer"),
    ({"batch_size": 17}, "out_of_range"),
    ({"digit": "12"}, "bad_digit"),
    ({"digit": None}, "bad_digit"),
    ({"guidance_scale": float("nan")}, "not_a_number"),
    ({"guidance_scale": 10.5}, "out_of_range"),
    ({"sampler": "plms"}, "bad_choice"),
    ({"eta": 1.5, "sampler": "ddim"}, "out_of_range"),
    ({"seed": -1}, "out_of_range"),
])
def test_validation_codes(unet, config, changes, code):
    request = SampleRequest(**changes)
    with pytest.raises(InputError) as error:
        request.validated(T)
    assert error.value.code == code
    with pytest.raises(InputError):
        sampling.sample(unet, config, request)


def test_validation_normalises():
    checked = SampleRequest(sampler="ddpm", eta=0.7, digit=" 3 ", num_inference_steps=T).validated(T)
    assert checked.eta == 0.0 and checked.digit == "3" and checked.num_inference_steps == T
    assert SampleRequest(digit=5).validated(T).digit == "5"
    assert SampleRequest(eta=0.7).validated(T).eta == 0.7


def test_trajectory_memory_bound_and_summary(unet, config):
    steps, batch = 3, 16
    run = sampling.sample(unet, config, SampleRequest(num_inference_steps=steps, batch_size=batch))
    assert run.x_t.dtype == run.x0_pred.dtype == run.eps.dtype == torch.float16
    assert run.x_t.device.type == "cpu"
    assert run.nbytes == 3 * 2 * steps * batch * SIZE * SIZE
    summary = run.summary()
    json.dumps(summary, allow_nan=False)
    assert summary["sampler"] == "ddim" and summary["steps_run"] == steps and summary["batch_size"] == batch
    ts, std = sampling.std_curve(run)
    assert len(ts) == len(std) == steps
    assert std[0] == pytest.approx(run.x_t[0].float().std().item(), rel=1e-3)
    assert sampling.request_from_summary(summary) == run.request

    bare = sampling.sample(unet, config, SampleRequest(num_inference_steps=steps, batch_size=2), record=False)
    assert bare.nbytes == 0 and len(bare) == steps
    with pytest.raises(ValueError, match="record=False"):
        bare.frame(0)
    with pytest.raises(InputError) as error:
        run.frame(steps)
    assert error.value.code == "out_of_range"


def test_uint8_grid():
    batch = torch.full((3, 1, 32, 32), -1.0)
    batch[:, :, 2:30, 2:30] = 1.0  # a white 28x28 digit inside 2 px of padding
    batch[1, 0, 5, 5] = float("nan")
    grid = sampling.to_uint8_grid(batch, nrow=2, pad=2)
    assert grid.dtype == np.uint8 and grid.shape == (2 + 2 * 30, 2 + 2 * 30)
    first = grid[2:30, 2:30]
    assert (first == 255).all()  # cropped back to 28x28: no black border left
    assert grid[2 + 3, 32 + 3] == 0  # NaN shows black
    assert (grid[32:60, 32:60] == 64).all()  # the empty fourth cell is background
    noise = sampling.to_uint8_grid(np.array([[[-3.0, 0.0, 3.0]]]), nrow=1, lo=-3, hi=3, pad=0)
    assert noise.tolist() == [[0, 128, 255]]


# ---- model registry -------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch, tmp_path):
    models.clear_cache()
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=tmp_path / "mnist-ddpm", kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    yield tmp_path / "mnist-ddpm"
    models.clear_cache()


def test_missing_model_is_unavailable(registry):
    assert not models.available("mnist") and not models.available("imagenet")
    with pytest.raises(models.ModelUnavailable) as error:
        models.load_unet_model("mnist")
    assert error.value.code == "model_unavailable" and error.value.params["path"] == str(registry)
    assert isinstance(error.value, InputError)
    with pytest.raises(InputError) as error:
        models.load_unet_model("imagenet")
    assert error.value.code == "bad_choice"


def save_model(folder, unet, config) -> None:
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler.from_config(config).save_pretrained(folder / "scheduler")


def test_saved_model_loads_through_registry(registry, unet, config):
    save_model(registry, unet, config)
    assert models.available("mnist")
    loaded, scheduler_config = models.load_unet_model("mnist", "cpu")
    assert models.load_unet_model("mnist", torch.device("cpu"))[0] is loaded
    assert not loaded.training and scheduler_config["num_train_timesteps"] == T
    for name, tensor in unet.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    request = SampleRequest(num_inference_steps=3, batch_size=2)
    torch.testing.assert_close(sampling.sample(loaded, scheduler_config, request).samples,
                               sampling.sample(unet, config, request).samples, atol=1e-6, rtol=0)


def test_corrupt_or_mismatched_model_is_unavailable(registry, unet, config):
    save_model(registry, unet, config)
    (registry / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(models.ModelUnavailable):
        models.load_unet_model("mnist")
    assert not models.available("mnist")

    models.clear_cache()
    other = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=11, norm_num_groups=4)
    save_model(registry, other, config)
    with pytest.raises(models.ModelUnavailable) as error:
        models.load_unet_model("mnist")
    assert "sample_size" in str(error.value)


def test_ddim_direction_uses_the_clipped_x0(unet):
    """η = 0: x_{t-1} = sqrt(ᾱ_prev) x̂0 + sqrt(1 - ᾱ_prev) ε̂ with ε̂ implied by the clipped x̂0."""
    config = DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                           clip_sample=True).config
    run = sampling.sample(unet, config, SampleRequest(sampler="ddim", num_inference_steps=5, batch_size=3,
                                                      guidance_scale=4.0))
    table = alpha_bar_table()
    clipped_somewhere = False
    for i in range(len(run) - 1):
        now, nxt = run.frame(i), run.frame(i + 1)
        a, a_prev = table[int(now.t)], table[int(nxt.t)]
        x0 = now.x0_pred.double()
        clipped_somewhere |= bool((x0.abs() >= 1 - 1e-6).any())
        eps = (now.x_t.double() - math.sqrt(a) * x0) / math.sqrt(1 - a)
        expected = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        torch.testing.assert_close(nxt.x_t.double(), expected, atol=2e-2, rtol=1e-2)  # frames are float16
    assert clipped_somewhere  # the check above really exercised clipping
