"""Lesson 6's tab code path at Stable Diffusion 1.5's real size, on the CPU (random weights, 64×64, 2 steps).

The pipeline is built from SD 1.5's published configurations (:mod:`diffusion.models.sd15`),
written as a diffusers folder, and every run goes through the tab's call
(:func:`diffusion.lessons.text2image.calls.generate`), through the benchmark that prints the
same numbers (:func:`diffusion.bench.sd15.run_sd15_cpu`). Tiny pipelines hide shape and
memory mistakes that this size shows. The references are independent of the lesson: the
parameter counts of the published model, diffusers' own schedulers reading the folder's
scheduler config, and the files themselves read with ``safetensors``.

The slow part is one module fixture (build, save, load, nine short runs); the folder (about
5 GB) is deleted afterwards and the loaded pipeline dropped.
"""

from __future__ import annotations

import gc
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import PNDMScheduler
from safetensors import safe_open

from diffusion.bench import sd15 as bench
from diffusion.errors import InputError
from diffusion.lessons.text2image.previews import strength_to_timestep
from diffusion.lessons.text2image.request import SCHEDULERS
from diffusion.models import registry, sd15

SIDE, STEPS = 64, 2
LATENT = SIDE // 8
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@pytest.fixture(scope="module")
def sd15_run(tmp_path_factory):
    """``run_sd15_cpu`` writing its folder into pytest's temp dir; the folder is kept until the module ends."""
    root = tmp_path_factory.mktemp("sd15-cpu")
    folder = root / "sd15"
    try:
        result = bench.run_sd15_cpu(steps=STEPS, side=SIDE, keep=folder)
        print("\n" + bench.format_report(result))  # shown with -s: the timings of this run
        yield folder, result
    finally:
        registry.clear_cache()
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def scheduler_config(sd15_run):
    """The folder's scheduler config, read by diffusers itself."""
    folder, _ = sd15_run
    return PNDMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True).config


@pytest.mark.slow
def test_the_folder_holds_sd15_in_safetensors_only(sd15_run):
    folder, result = sd15_run
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in PICKLE_SUFFIXES]
    weights = sorted(str(p.relative_to(folder)) for p in files if p.suffix == ".safetensors")
    assert weights == ["safety_checker/model.safetensors", "text_encoder/model.safetensors",
                       "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    stored = {}
    for name in weights:
        with safe_open(str(folder / name), framework="pt") as handle:
            stored[name.split("/")[0]] = sum(math.prod(handle.get_slice(k).get_shape()) for k in handle.keys())
    # SD 1.5's published sizes: UNet 859.5 M, VAE 83.7 M, CLIP ViT-L/14 text 123.1 M, its checker 304.0 M.
    published = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "safety_checker": 303_981_588}
    assert stored == published
    assert result["parameters"] == published  # as loaded through the tab's path, filter included
    assert result["build_s"] is not None and result["save_s"] is not None  # this run wrote the folder


@pytest.mark.slow
def test_the_default_run_streams_previews_and_scrubs_at_the_latent_size(sd15_run):
    _, result = sd15_run
    run = result["runs"]["ddim"]
    assert run["image"] == ((SIDE, SIDE, 3), "uint8")
    assert run["latents"] == (4, LATENT, LATENT)
    assert run["reported"] == [(0, STEPS), (1, STEPS)] and run["steps_run"] == STEPS and not run["stopped"]
    assert run["previews"] >= 1 and run["preview"] == (SIDE, SIDE, 3)  # the first x̂₀ preview is always decoded
    assert result["shapes"]["x0_picture"] == (SIDE, SIDE, 3)  # the step slider's decode of a recorded step
    assert result["shapes"]["latent_picture"] == (LATENT, LATENT, 3)
    assert result["problems"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", bench.SWAPS)
def test_each_scheduler_records_its_own_timesteps(sd15_run, scheduler_config, name):
    _, result = sd15_run
    cls, overrides = SCHEDULERS[name]
    reference = cls.from_config(scheduler_config, **overrides)
    reference.set_timesteps(STEPS)
    run = result["runs"][name]
    assert run["timesteps"] == [float(t) for t in reference.timesteps]
    assert run["image"] == ((SIDE, SIDE, 3), "uint8") and run["latents"] == (4, LATENT, LATENT)


@pytest.mark.slow
def test_a_stop_after_the_first_step_ends_a_stopped_run_of_one_step(sd15_run):
    _, result = sd15_run
    run = result["runs"]["stop"]
    assert run["stopped"] and run["steps_run"] == 1 and run["reported"] == [(0, STEPS)]
    assert run["image"] == ((SIDE, SIDE, 3), "uint8")  # the pipeline still decodes where it stopped
    # As on a ZeroGPU Space: x̂₀ of the one step decoded in the call, and the run rebuilt from its steps.
    assert result["shapes"]["stop_x0_pictures"] == [(0, (SIDE, SIDE, 3))]
    assert result["shapes"]["rebuilt_image"] == (SIDE, SIDE, 3)


@pytest.mark.slow
def test_image_to_image_starts_where_the_strength_says(sd15_run, scheduler_config):
    _, result = sd15_run
    steps = bench.img2img_steps(STEPS)
    assert int(steps * bench.STRENGTH) >= 2
    model = SimpleNamespace(scheduler=PNDMScheduler.from_config(scheduler_config))
    where = strength_to_timestep(model, "ddim", steps, bench.STRENGTH)
    run = result["runs"]["img2img"]
    assert run["steps_run"] == where["steps_run"] == int(steps * bench.STRENGTH)
    assert run["start_t"] == where["t"] and run["image"] == ((SIDE, SIDE, 3), "uint8")
    assert run["images"] == 2 and run["latents"] == (4, LATENT, LATENT)  # a batch of two from one picture


@pytest.mark.slow
def test_attention_maps_have_the_latent_grid_and_the_prompt_words(sd15_run):
    _, result = sd15_run
    if not bench.attention_supported():
        pytest.skip("calls.generate does not record attention yet")
    found = result["attention"]
    assert found["present"] and found["maps"] >= 1 and found["latent_grid"]
    assert found["tokens"] == bench.PROMPT.split()  # lesson 6's tokenizer has one token per caption word
    # SD 1.5's UNet has 16 cross-attention layers: 2 in each of 3 down blocks, 1 in the middle, 3 in each of 3 up blocks.
    assert found["layers"] == 16


def test_random_weights_come_from_the_seed_with_unit_norms_and_zero_biases():
    def net():
        with init_empty_weights(include_buffers=False):
            return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(8, 4))

    first = sd15.fill_random_(net(), torch.Generator().manual_seed(1))
    again = sd15.fill_random_(net(), torch.Generator().manual_seed(1))
    other = sd15.fill_random_(net(), torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not torch.equal(first[0].weight, other[0].weight)
    conv = first[0].weight
    assert conv.abs().max() <= 27 ** -0.5 and conv.std() == pytest.approx(27 ** -0.5 / 3 ** 0.5, rel=0.15)
    assert torch.equal(first[1].weight, torch.ones(8)) and not first[0].bias.any() and not first[2].bias.any()
    assert not any(p.requires_grad or p.is_meta for p in first.parameters())


def test_bad_arguments_are_refused_with_a_reason(tmp_path):
    with pytest.raises(InputError) as error:
        bench.run_sd15_cpu(steps=1)
    assert error.value.code == "out_of_range"
    with pytest.raises(InputError) as error:
        bench.run_sd15_cpu(side=100)
    assert error.value.code == "bad_side"
    with pytest.raises(InputError) as error:
        sd15.build_sd15(dtype=torch.int8)
    assert error.value.code == "bad_dtype"
    (tmp_path / "something.txt").write_text("not a model")
    with pytest.raises(InputError) as error:
        sd15.save_sd15_folder(tmp_path)
    assert error.value.code == "folder_not_empty" and (tmp_path / "something.txt").read_text() == "not a model"
    assert not sd15.is_sd15_folder(tmp_path) and not sd15.is_sd15_folder(tmp_path / "missing")
