"""Lesson 7 inpainting (RePaint), checked against DDPM's closed form, diffusers' DDIM step and counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from diffusion.datasets import digits
from diffusion.errors import InputError
from diffusion.lessons.applications.inpaint import (
    PRESET_MASKS, InpaintRequest, InpaintRun, inpaint, preset_mask,
)
from diffusion.models import registry

SIZE, T, BETA_START, BETA_END = 28, 1000, 1e-4, 0.02


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingUNet(torch.nn.Module):
    """A tiny random class-conditional UNet that counts its calls and their batch sizes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inner = UNet2DModel(
            sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=11, norm_num_groups=4).eval()
        self.config = self.inner.config
        self.batches: list[int] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    def forward(self, x, t, class_labels=None):
        self.batches.append(int(x.shape[0]))
        return self.inner(x, t, class_labels=class_labels)


@pytest.fixture()
def unet() -> CountingUNet:
    return CountingUNet()


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END,
                         beta_schedule="linear").config


@pytest.fixture(scope="module")
def digit() -> np.ndarray:
    """A real held-out digit in [0, 1]."""
    images, labels = digits.mnist_offline()
    split = digits.split_train_heldout(images, labels, 0.2, 0)
    return split.heldout_images[0].astype(np.float64) / 255.0


def alpha_bar_table() -> np.ndarray:
    """ᾱ_t = Π (1 - β_s) for DDPM's linear schedule in float64 (DDPM eq. 4), diffusers' index t."""
    return np.cumprod(1.0 - np.linspace(BETA_START, BETA_END, T))


def test_preset_masks_are_the_four_halves():
    masks = {name: preset_mask(name) for name in PRESET_MASKS}
    rows, cols = np.indices((SIZE, SIZE))
    assert np.array_equal(masks["top"], rows < 14) and np.array_equal(masks["bottom"], rows >= 14)
    assert np.array_equal(masks["left"], cols < 14) and np.array_equal(masks["right"], cols >= 14)
    assert all(m.dtype == bool and m.sum() == 392 for m in masks.values())
    with pytest.raises(InputError) as err:
        preset_mask("middle")
    assert err.value.code == "bad_choice"


@pytest.mark.parametrize("change, code", [
    ({"mask": np.zeros((28, 28), bool)}, "mask_empty"),
    ({"mask": np.ones((28, 28), bool)}, "mask_full"),
    ({"mask": np.full((28, 28), 0.5)}, "mask_values"),
    ({"mask": np.where(preset_mask("top"), np.nan, 0.0)}, "mask_values"),
    ({"mask": np.zeros((28, 27), bool)}, "picture_shape"),
    ({"image": np.zeros((27, 28))}, "picture_shape"),
    ({"image": np.zeros((1, 28, 28))}, "picture_shape"),
    ({"image": np.full((28, 28), np.nan)}, "picture_not_finite"),
    ({"image": np.full((28, 28), 1.5)}, "picture_range"),
    ({"image": np.full((28, 28), -0.1)}, "picture_range"),
    ({"image": np.full((28, 28), "a")}, "picture_type"),
    ({"image": None}, "picture_missing"),
    ({"digit": 10}, "bad_digit"),
    ({"digit": "seven"}, "bad_digit"),
    ({"fills": 0}, "out_of_range"),
    ({"fills": 9}, "out_of_range"),
    ({"fills": 2.5}, "not_an_integer"),
    ({"resample": 0}, "out_of_range"),
    ({"resample": 11}, "out_of_range"),
    ({"num_inference_steps": 0}, "out_of_range"),
    ({"num_inference_steps": 500, "resample": 3}, "too_many_calls"),
    ({"guidance_scale": float("nan")}, "not_a_number"),
    ({"seed": -1}, "out_of_range"),
    ({"sampler": "euler"}, "bad_choice"),
])
def test_bad_requests_get_a_message_and_no_network_call(unet, config, change, code):
    fields = {"image": np.zeros((28, 28)), "mask": preset_mask("top"), **change}
    with pytest.raises(InputError) as err:
        inpaint(unet, config, InpaintRequest(**fields))
    assert err.value.code == code
    assert str(err.value) and unet.batches == []


def test_validated_accepts_uint8_digits_numeric_masks_and_any_class():
    image = np.full((28, 28), 255, np.uint8)
    request = InpaintRequest(image, preset_mask("left").astype(np.uint8), digit="any").validated(T)
    assert request.image.dtype == np.float32 and np.all(request.image == 1.0)
    assert request.mask.dtype == bool and np.array_equal(request.mask, preset_mask("left"))
    assert request.digit is None
    assert InpaintRequest(image, preset_mask("left"), digit="7").validated(T).digit == 7
    with pytest.raises(ValueError):
        request.image[0, 0] = 0.0  # validated pictures are read-only


def test_equal_requests_share_a_key(digit):
    a = InpaintRequest(digit.copy(), preset_mask("top"), seed=3).validated(T)
    b = InpaintRequest(digit.copy(), preset_mask("top").astype(int), seed=3).validated(T)
    c = InpaintRequest(digit.copy(), preset_mask("bottom"), seed=3).validated(T)
    assert a == b and hash(a) == hash(b) and a != c
    assert json.loads(json.dumps(a.key())) == a.key()


@pytest.mark.parametrize("sampler, resample", [("ddpm", 1), ("ddpm", 2), ("ddim", 1), ("ddim", 3)])
def test_known_region_of_the_result_is_the_original(unet, config, digit, sampler, resample):
    mask = preset_mask("right")
    run = inpaint(unet, config, InpaintRequest(digit, mask, fills=2, sampler=sampler, num_inference_steps=6,
                                               resample=resample))
    known = ~mask
    expected = (2.0 * digit.astype(np.float32) - 1.0)[known]
    assert np.array_equal(run.samples[:, 0].numpy()[:, known], np.stack([expected, expected]))
    assert np.abs(run.pictures()[:, known] - digit[known]).max() < 1e-6
    assert not torch.equal(run.samples[0], run.samples[1])  # two seeds, two fills


def test_known_region_follows_q_xt_given_x0_at_every_step(unet, config, digit):
    """The network sees the original noised by DDPM eq. 4: standardised, the known pixels are N(0, 1)."""
    mask = preset_mask("top")
    seen = []
    inpaint(unet, config, InpaintRequest(digit, mask, fills=8, num_inference_steps=10, resample=2),
            callback=lambda info: seen.append((info.t, info.alpha_bar, info.x_t.clone())))
    table = alpha_bar_table()
    x0 = 2.0 * digit[~mask] - 1.0
    for t, alpha_bar, x_t in seen[1:]:  # step 0 sees x_T itself
        assert alpha_bar == pytest.approx(table[t], rel=1e-5)
        z = (x_t[:, 0].double().numpy()[:, ~mask] - np.sqrt(table[t]) * x0) / np.sqrt(1.0 - table[t])
        assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.1, (t, z.mean(), z.std())


def test_hole_is_diffusers_ddim_step(unet, config, digit):
    """With DDIM and no resampling, the hole of x_τ' is ``DDIMScheduler.step`` of what the network saw."""
    mask = preset_mask("bottom")
    hole = torch.from_numpy(mask)
    seen = []
    steps = 5
    run = inpaint(unet, config, InpaintRequest(digit, mask, fills=2, sampler="ddim", num_inference_steps=steps,
                                               resample=1),
                  callback=lambda info: seen.append(info.to_cpu()))
    reference = DDIMScheduler.from_config(config)
    reference.set_timesteps(steps)
    assert [info.t for info in seen] == [int(t) for t in reference.timesteps]
    nexts = [info.x_t for info in seen[1:]] + [run.samples]
    for info, x_next in zip(seen, nexts):
        expected = reference.step(info.eps_pred, info.t, info.x_t, eta=0.0, use_clipped_model_output=True).prev_sample
        assert torch.allclose(x_next[..., hole], expected[..., hole], atol=1e-5)


@pytest.mark.parametrize("digit_class, guidance, batch", [(None, 1.5, 3), (4, 1.5, 6), (4, 1.0, 3)])
def test_resampling_calls_the_network_u_times_per_step(unet, config, digit, digit_class, guidance, batch):
    steps, resample = 6, 3
    infos = []
    run = inpaint(unet, config, InpaintRequest(digit, preset_mask("left"), digit=digit_class, fills=3,
                                               guidance_scale=guidance, num_inference_steps=steps,
                                               resample=resample), callback=infos.append)
    assert len(unet.batches) == (steps - 1) * resample + 1 == run.network_calls  # the last step is not redone
    assert set(unet.batches) == {batch}  # guidance: one call on 2 × fills
    assert [i.step for i in infos] == list(range(steps)) and {i.total for i in infos} == {steps}
    assert len(run) == steps and run.x_t.shape == (steps, 3, 1, SIZE, SIZE)
    assert run.labels.tolist() == [10 if digit_class is None else digit_class] * 3


def test_stop_ends_the_run_and_keeps_a_scrubbable_partial_trajectory(unet, config, digit):
    done = []
    run = inpaint(unet, config, InpaintRequest(digit, preset_mask("top"), fills=2, num_inference_steps=8),
                  callback=done.append, stop=lambda: len(done) >= 3)
    assert isinstance(run, InpaintRun) and run.stopped and len(run) == 3 and len(done) == 3
    assert run.scrub(99).step == 2 and run.scrub(0).step == 0
    assert torch.allclose(run.frame(1).x_t, done[1].x_t, atol=2e-3)  # float16 frames
    assert run.summary()["stopped"] is True and run.summary()["steps_run"] == 3


def test_same_seed_same_pixels_and_each_fill_is_its_own_seed(unet, config, digit):
    def fills(seed: int, n: int) -> torch.Tensor:
        return inpaint(unet, config, InpaintRequest(digit, preset_mask("top"), fills=n, seed=seed,
                                                    num_inference_steps=5), record=False).samples

    first, again = fills(7, 3), fills(7, 3)
    assert torch.equal(first, again)
    assert not torch.allclose(first, fills(8, 3))
    assert torch.allclose(first[2], fills(9, 1)[0], atol=1e-4)  # fill k of seed s = fill 0 of seed s + k


def test_bad_network_or_precision_is_a_programming_error(config, digit):
    wide = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), num_class_embeds=11, norm_num_groups=4)
    with pytest.raises(ValueError):
        inpaint(wide, config, InpaintRequest(digit, preset_mask("top")))
    with pytest.raises(ValueError):
        inpaint(CountingUNet(), config, InpaintRequest(digit, preset_mask("top")), precision="fp8")


def test_shipped_model_fills_a_held_out_digit(digit):
    unet, config = registry.load_unet_model("mnist")
    mask = preset_mask("bottom")
    run = inpaint(unet, config, InpaintRequest(digit, mask, fills=2, num_inference_steps=10, resample=2))
    pictures = run.pictures_uint8()
    assert pictures.shape == (2, SIZE, SIZE) and pictures.dtype == np.uint8
    assert np.array_equal(pictures[:, ~mask], np.stack([np.rint(digit[~mask] * 255)] * 2).astype(np.uint8))
    assert pictures[:, mask].max() > 128  # the model drew strokes in the hole ...
    assert (pictures[:, mask] < 32).mean() > 0.5  # ... on a mostly black background, like MNIST
    summary = json.loads(json.dumps(run.summary()))
    assert summary["network_calls"] == 19 and summary["seeds"] == [0, 1] and summary["hole_pixels"] == 392
    assert all(isinstance(v, float) for v in summary["hole_psnr_db"])
