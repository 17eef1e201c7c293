"""``python -m diffusion.train denoiser``: data rules, the loss, resume, export, and the evaluation CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffusion.evaluate import cli as evaluate
from diffusion.train import cli as train
from diffusion.models.denoiser_net import (NoiseLevels, build_denoiser_unet, image_channels, predict_noise,
                                           sigma_to_model, unshuffle_factor)
from diffusion.lessons.denoising import DiffusionDenoiser
from diffusion.errors import InputError
from diffusion.schedule import make_scheduler
from diffusion.train.denoiser import PatchSampler, denoiser_loss, load_grey_folder, load_training_folder, validate

TINY = ["--channels", "8,16", "--patch", "32", "--batch-size", "2", "--val-images", "1", "--validate-every", "3",
        "--checkpoint-every", "2", "--log-every", "1", "--threads", "1"]


def _images(folder, n=4, size=(48, 40), mode="L"):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n):
        grey = (128 + 90 * np.sin(xx / (3 + i)) * np.cos(yy / (4 + i)) + rng.normal(0, 5, xx.shape))
        Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert(mode).save(folder / f"img_{i}.png")
    return folder


def test_test_sets_are_refused_and_colour_is_read_as_grey(tmp_path):
    for name in ("Set12", "BSD68"):
        with pytest.raises(InputError, match="test set"):
            load_grey_folder(_images(tmp_path / name, n=1))
    with pytest.raises(InputError):
        load_grey_folder(tmp_path / "missing")
    images, names = load_grey_folder(_images(tmp_path / "train", n=2, mode="RGB"))
    assert [i.shape for i in images] == [(40, 48)] * 2 and names == ["img_0.png", "img_1.png"]


def test_patches_cover_scales_flips_and_stay_in_range():
    grey = np.arange(64 * 64, dtype=np.float64).reshape(64, 64) % 256
    sampler = PatchSampler([grey.astype(np.uint8)], patch=32)
    assert len(sampler.pyramid) == 4  # scales 1, 0.9, 0.8, 0.7 all fit a 32-pixel patch
    batch = sampler.sample(50, np.random.default_rng(0))
    assert batch.shape == (50, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    again = sampler.sample(50, np.random.default_rng(0))
    assert torch.equal(batch, again)
    with pytest.raises(InputError):
        PatchSampler([grey[:20, :20].astype(np.uint8)], patch=32)


def test_the_loss_is_the_weighted_tweedie_error():
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), unshuffle=2)
    levels = NoiseLevels.from_scheduler(make_scheduler("linear", 1000))
    x0 = torch.rand(3, 1, 16, 16) * 2 - 1
    loss = denoiser_loss(unet, levels, x0, 50.0, torch.Generator().manual_seed(1))
    # the same draws by hand: σ ~ U(0, 50/255·2), ε, x_τ = √ᾱ (x0 + σ ε), L = mean(σ (ε̂ - ε)²) / σ_25
    g = torch.Generator().manual_seed(1)
    sigma = torch.rand(3, generator=g, dtype=torch.float64) * 50.0 * 2 / 255
    noise = torch.randn(x0.shape, generator=g)
    abar = 1 / (1 + sigma**2)
    x_t = abar.sqrt().float().view(-1, 1, 1, 1) * (x0 + sigma.float().view(-1, 1, 1, 1) * noise)
    tau = torch.from_numpy(levels.tau(sigma.numpy())).float()
    with torch.no_grad():
        eps = unet(torch.nn.functional.pixel_unshuffle(x_t, 2), tau).sample
    eps = torch.nn.functional.pixel_shuffle(eps, 2)
    expected = (sigma.float().view(-1, 1, 1, 1) * (eps - noise) ** 2).mean() / float(sigma_to_model(25.0))
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)


def test_resume_repeats_the_run_and_the_export_loads(tmp_path):
    data = _images(tmp_path / "train")
    straight, paused, export = tmp_path / "straight", tmp_path / "paused", tmp_path / "export"
    base = ["denoiser", "--data-dir", str(data), "--steps", "4"]
    assert train.main([*base, "--out", str(straight), *TINY]) == 0
    assert train.main([*base, "--stop-at", "2", "--out", str(paused), *TINY]) == 0
    assert train.main([*base, "--out", str(paused), *TINY]) == 2  # never overwrites a run
    assert train.main([*base, "--out", str(paused), "--resume", *TINY, "--export", str(export)]) == 0
    for name in ("unet.safetensors", "ema.safetensors"):
        a, b = load_file(straight / "checkpoint" / name), load_file(paused / "checkpoint" / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
    info = json.loads((paused / "train_info.json").read_text())
    assert info["task"] == "denoiser" and info["steps"] == 4 and info["finished"]
    assert info["data"]["name"] == "train" and info["data"]["validation"] == 1
    validation = [json.loads(line) for line in (paused / "validation.jsonl").read_text().splitlines()]
    assert validation[-1]["step"] == 4 and set(validation[-1]) == {"step", "psnr_sigma15", "psnr_sigma25",
                                                                   "psnr_sigma50"}
    denoiser = DiffusionDenoiser.from_folder(export)
    ema = load_file(paused / "checkpoint" / "ema.safetensors")
    for key, value in denoiser.unet.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)
    assert json.loads((export / "denoiser.json").read_text())["pixel_unshuffle"] == 2


def test_evaluate_denoise_reports_every_method_on_each_set(tmp_path, capsys):
    root = tmp_path / "data"
    _images(root / "Set12", n=2, size=(40, 32))
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), unshuffle=2)
    from diffusion.train.denoiser import export_denoiser

    model = tmp_path / "model"
    (tmp_path / "info.json").write_text("{}")
    export_denoiser(unet, make_scheduler("linear", 1000), model, tmp_path / "info.json", 100.0)
    out = tmp_path / "report.json"
    assert evaluate.main(["denoise", "--model-dir", str(model), "--data-root", str(root), "--sets", "Set12",
                          "--sigmas", "25", "--methods", "diffusion_one_step,gaussian_heat", "--steps", "2",
                          "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    table = report["sets"]["Set12"]["25.0"]
    assert set(table) == {"noisy", "diffusion_one_step", "gaussian_heat"}
    assert table["gaussian_heat"]["psnr"] > table["noisy"]["psnr"]
    assert all(row["cpu_seconds"] >= 0 for row in table.values())
    printed = capsys.readouterr().out
    assert "| gaussian_heat |" in printed and "σ = 25" in printed


def test_fine_tuning_starts_from_an_exported_denoiser(tmp_path):
    data = _images(tmp_path / "train")
    first, tuned, export = tmp_path / "first", tmp_path / "tuned", tmp_path / "export"
    assert train.main(["denoiser", "--data-dir", str(data), "--steps", "2", "--out", str(first), *TINY,
                       "--export", str(export)]) == 0
    # learning rate 0: the fine-tuned weights must be exactly the exported ones
    assert train.main(["denoiser", "--data-dir", str(data), "--steps", "1", "--out", str(tuned), *TINY,
                       "--lr", "0", "--init", str(export)]) == 0
    start = DiffusionDenoiser.from_folder(export).unet.state_dict()
    weights = load_file(tuned / "checkpoint" / "unet.safetensors")
    for key, value in start.items():
        torch.testing.assert_close(weights[key], value.contiguous(), rtol=0, atol=0)
    assert json.loads((tuned / "train_info.json").read_text())["data"]["init"] == str(export)
    wrong = [a if a != "8,16" else "8,32" for a in TINY]
    assert train.main(["denoiser", "--data-dir", str(data), "--steps", "1", "--out", str(tmp_path / "x"), *wrong,
                       "--init", str(export)]) == 2


# ---- colour (--image-channels 3) -------------------------------------------------------------

def _colour_images(folder, n=3, size=(48, 40)):
    """RGB images whose three planes differ (a different pattern per plane)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n):
        planes = [128 + 90 * np.sin(xx / (3 + i + c)) * np.cos(yy / (4 + 2 * c)) + rng.normal(0, 5, xx.shape)
                  for c in range(3)]
        rgb = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(folder / f"img_{i}.png")
    return folder


def test_colour_folders_are_read_as_rgb_and_colour_test_sets_refused(tmp_path):
    folder = _colour_images(tmp_path / "train", n=2)
    images, names = load_training_folder(folder, 3)
    assert [i.shape for i in images] == [(40, 48, 3)] * 2 and names == ["img_0.png", "img_1.png"]
    np.testing.assert_array_equal(images[1], np.asarray(Image.open(folder / "img_1.png").convert("RGB")))
    for name in ("CBSD68", "Kodak24", "McMaster"):
        with pytest.raises(InputError, match="test set"):
            load_training_folder(_colour_images(tmp_path / name, n=1), 3)


def test_colour_patches_move_all_three_planes_together():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(64, 56, 3), dtype=np.uint8)
    colour = PatchSampler([rgb], patch=32)
    batch = colour.sample(40, np.random.default_rng(5))
    assert colour.channels == 3 and batch.shape == (40, 3, 32, 32)
    assert batch.min() >= -1 and batch.max() <= 1
    # each plane must be exactly what the grey sampler makes of that plane alone with the same draws
    for c in range(3):
        grey = PatchSampler([np.ascontiguousarray(rgb[:, :, c])], patch=32).sample(40, np.random.default_rng(5))
        torch.testing.assert_close(batch[:, c:c + 1], grey, rtol=0, atol=1e-6)
    with pytest.raises(InputError):
        PatchSampler([rgb, rgb[:, :, 0]], patch=32)


@pytest.mark.parametrize("channels,r", [(1, 1), (1, 2), (1, 4), (3, 1), (3, 2), (3, 4)])
def test_image_channels_and_unshuffle_are_read_from_the_config(channels, r):
    unet = build_denoiser_unet((8, 16), unshuffle=r, image_channels=channels)
    assert unet.config.in_channels == unet.config.out_channels == channels * r * r
    assert image_channels(unet) == channels and unshuffle_factor(unet) == r


def test_configs_that_are_not_a_denoiser_are_refused():
    for in_channels, out_channels in ((5, 5), (2, 2), (12, 4)):
        unet = build_denoiser_unet((8, 16))
        unet.register_to_config(in_channels=in_channels, out_channels=out_channels)
        with pytest.raises(ValueError):
            image_channels(unet)
    with pytest.raises(ValueError):
        build_denoiser_unet((8, 16), image_channels=2)


@pytest.mark.parametrize("shape", [(1, 3, 16, 16), (2, 3, 13, 29), (1, 3, 5, 3)])
def test_a_colour_network_takes_any_image_size(shape):
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), unshuffle=2, image_channels=3).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        eps = predict_noise(unet, x, torch.full((shape[0],), 10.0))
        assert eps.shape == x.shape and torch.isfinite(eps).all()
        # on a multiple of the size unit it is exactly unshuffle → UNet → shuffle (torch's own ops)
        y = torch.randn(2, 3, 16, 24)
        tau = torch.tensor([3.0, 400.0])
        direct = torch.nn.functional.pixel_shuffle(unet(torch.nn.functional.pixel_unshuffle(y, 2), tau).sample, 2)
        torch.testing.assert_close(predict_noise(unet, y, tau), direct)
        with pytest.raises(ValueError, match="3-plane"):
            predict_noise(unet, torch.randn(1, 1, 16, 16), torch.tensor([1.0]))


def test_the_colour_loss_decreases_with_training(tmp_path):
    images, _ = load_training_folder(_colour_images(tmp_path / "train", n=2), 3)
    x0 = PatchSampler(images, patch=32).sample(8, np.random.default_rng(0))
    torch.manual_seed(0)
    unet = build_denoiser_unet((8, 16), unshuffle=2, image_channels=3)
    levels = NoiseLevels.from_scheduler(make_scheduler("linear", 1000))
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)

    def loss_at(seed):
        return denoiser_loss(unet, levels, x0, 100.0, torch.Generator().manual_seed(seed))

    with torch.no_grad():
        before = np.mean([loss_at(1000 + k).item() for k in range(4)])
    for step in range(30):
        optimizer.zero_grad()
        loss_at(step).backward()
        optimizer.step()
    with torch.no_grad():
        after = np.mean([loss_at(1000 + k).item() for k in range(4)])
    assert after < 0.8 * before


def test_colour_validation_is_the_psnr_over_all_three_planes(tmp_path):
    from skimage.metrics import peak_signal_noise_ratio

    images, _ = load_training_folder(_colour_images(tmp_path / "val", n=2), 3)
    unet = build_denoiser_unet((8, 16), unshuffle=2, image_channels=3)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)  # ε_θ = 0: the estimate is the noisy image itself
    levels = NoiseLevels.from_scheduler(make_scheduler("linear", 1000))
    scores = validate(unet, levels, images, seed=3)
    for sigma in (15, 25, 50):
        psnrs = []
        for i, rgb in enumerate(images):
            noise = torch.randn((1, 3) + rgb.shape[:2], generator=torch.Generator().manual_seed(3000 + i))
            noisy = rgb.astype(np.float64) + sigma * noise[0].numpy().transpose(1, 2, 0)
            psnrs.append(peak_signal_noise_ratio(rgb.astype(np.float64), np.clip(noisy, 0, 255), data_range=255))
        assert scores[f"psnr_sigma{sigma}"] == pytest.approx(np.mean(psnrs), abs=2e-3)


def test_colour_training_exports_a_three_channel_denoiser(tmp_path):
    data = _colour_images(tmp_path / "train", n=4)
    run, export, grey = tmp_path / "run", tmp_path / "export", tmp_path / "grey"
    grey_args = ["denoiser", "--data-dir", str(data), "--steps", "2", *TINY]
    colour = [*grey_args, "--image-channels", "3"]
    assert train.main([*colour, "--out", str(run), "--export", str(export)]) == 0
    meta = json.loads((export / "denoiser.json").read_text())
    assert meta["channels"] == 3 and meta["pixel_unshuffle"] == 2
    config = json.loads((export / "unet" / "config.json").read_text())
    assert config["in_channels"] == config["out_channels"] == 12
    info = json.loads((run / "train_info.json").read_text())
    assert info["settings"]["image_channels"] == 3 and info["data"]["image_channels"] == 3
    validation = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert validation[-1]["step"] == 2 and np.isfinite(validation[-1]["psnr_sigma25"])
    # a resume must keep the run's channels
    assert train.main([*grey_args, "--steps", "3", "--out", str(run), "--resume"]) == 2
    # a grey model cannot start a colour run (same widths, different in/out channels)
    assert train.main([*grey_args, "--out", str(tmp_path / "g"), "--export", str(grey)]) == 0
    assert train.main([*colour, "--out", str(tmp_path / "x"), "--init", str(grey)]) == 2
    assert not (tmp_path / "x" / "checkpoint").exists()
