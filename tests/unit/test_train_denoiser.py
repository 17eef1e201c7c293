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
from diffusion.models.denoiser_net import NoiseLevels, build_denoiser_unet, sigma_to_model
from diffusion.lessons.denoising import DiffusionDenoiser
from diffusion.errors import InputError
from diffusion.schedule import make_scheduler
from diffusion.train.denoiser import PatchSampler, denoiser_loss, load_grey_folder

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
