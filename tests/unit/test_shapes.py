"""Lesson 6's data: procedural scenes, their captions, the tokenizer, the independent reader, the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from diffusion.evaluate import cli as evaluate
from diffusion.evaluate import shape_checker
from diffusion.datasets import shapes
from diffusion.train import cli as train
from diffusion.lessons import text2image as t2i
from diffusion.models.tiny_sd import build_tokenizer


def test_scenes_are_reproducible_and_respect_the_held_out_pairings():
    images, scenes = shapes.dataset(300, seed=5)
    again, _ = shapes.dataset(300, seed=5)
    assert images.shape == (300, 64, 64, 3) and images.dtype == np.uint8 and np.array_equal(images, again)
    assert not any(s.heldout for s in scenes) and all(s.colour != s.background for s in scenes)
    _, held = shapes.dataset(100, seed=5, heldout=True)
    assert all((s.colour, s.shape) in shapes.HELDOUT_COLOUR_SHAPE or (s.shape, s.position) in
               shapes.HELDOUT_SHAPE_POSITION for s in held)
    # Every word still occurs in training on its own.
    for attribute, words in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES), ("position", shapes.POSITIONS)):
        assert {getattr(s, attribute) for s in scenes} == set(words)


def test_captions_read_like_english_and_drop_words_on_request():
    scene = shapes.Scene("orange", "star", "large", "top left", "white")
    assert shapes.caption(scene) == "a large orange star at the top left on a white background"
    scene = shapes.Scene("orange", "star", "small", "center", "orange")
    assert shapes.caption(scene) == "a small orange star in the center on an orange background"
    short = {shapes.caption(scene, np.random.default_rng(i), drop=1.0) for i in range(5)}
    assert short == {"an orange star"}
    words = set(" ".join(shapes.caption(s) for s in shapes.dataset(200, 1)[1]).split())
    assert words <= set(shapes.vocabulary())


def test_the_reader_reads_ground_truth_pictures_correctly():
    images, scenes = shapes.dataset(400, seed=11, heldout=None)
    wrong = [(s, shape_checker.read_scene(im)) for im, s in zip(images, scenes)
             if shape_checker.read_scene(im) != s.attributes()]
    assert not wrong, wrong[:3]


def test_the_reader_is_not_fooled_by_noise_or_an_empty_picture():
    blank = np.full((64, 64, 3), 245, np.uint8)
    assert shape_checker.read_scene(blank) == {"background": "white", "colour": None, "shape": None,
                                               "size": None, "position": None}
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    reading = shape_checker.read_scene(noise)
    assert set(reading) == set(shapes.ATTRIBUTES)
    assert [shape_checker.colour_name(np.array(c)) for c in ((250, 0, 0), (0, 0, 250), (10, 10, 10), (128,) * 3)] \
        == ["red", "blue", "black", "gray"]


def test_the_tokenizer_has_one_token_per_word_and_spells_the_rest(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    for word in shapes.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert tokenizer("RED Circle").input_ids == tokenizer("red circle").input_ids
    spelled = tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(spelled) > 1 and tokenizer.unk_token_id not in spelled
    ids = tokenizer("a" + " red" * 40, padding="max_length", truncation=True).input_ids
    assert len(ids) == tokenizer.model_max_length


def test_training_runs_resumes_and_exports_a_standard_pipeline(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    tiny = ["--out", str(out), "--vae-steps", "3", "--vae-batch-size", "2", "--scenes", "64", "--batch-size", "4",
            "--channels", "32,32", "--text-width", "32", "--text-layers", "1", "--vae-channels", "32,32",
            "--decoder-steps", "2", "--checkpoint-every", "2", "--log-every", "1", "--threads", "1"]
    assert train.main(["text2image", *tiny, "--steps", "4", "--stop-at", "2"]) == 0
    assert train.main(["text2image", *tiny, "--steps", "4"]) == 2  # an existing run needs --resume
    assert train.main(["text2image", *tiny, "--steps", "4", "--resume", "--export", str(export)]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(export, use_safetensors=True, local_files_only=True)
    assert t2i.default_side(pipe) == 64 and pipe.vae.config.scaling_factor > 0
    info = json.loads((export / "train_info.json").read_text())
    assert info["vae"]["steps"] == 3 and info["diffusion"]["steps"] == 4 and info["diffusion"]["finished"]
    assert info["decoder"]["steps"] == 2 and info["decoder"]["finished"]
    assert pipe.vae.config.scaling_factor == info["diffusion"]["latent_scaling_factor"]
    from diffusers import AutoencoderKL
    import torch
    stage1 = AutoencoderKL.from_pretrained(out / "vae" / "model", use_safetensors=True)
    for (name, a), b in zip(stage1.state_dict().items(), pipe.vae.state_dict().values()):
        if name.startswith(("encoder.", "quant_conv.")):  # stage 1b keeps the latent space
            assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for name, a, b in zip(stage1.state_dict(), stage1.state_dict().values(),
                                                           pipe.vae.state_dict().values())
               if name.startswith("decoder."))
    # --stop-at paused the first stage; the resumed run finished it and then ran the second.
    assert [i["start_step"] for i in info["vae"]["invocations"]] == [0, 2]
    assert [i["start_step"] for i in info["diffusion"]["invocations"]] == [0]
    assert not list(export.rglob("*.bin")) and not list(export.rglob("*.pt"))  # safetensors only
    assert t2i.unknown_words(pipe, "a red qwerty star") == ["qwerty"]
    # The defaults the shipped model is trained with travel in the standard configs.
    scheduler = pipe.scheduler.config
    assert (scheduler.prediction_type, scheduler.beta_schedule, scheduler.timestep_spacing) == (
        "v_prediction", "linear", "trailing")
    assert pipe.unet.config.addition_embed_type == "text"
    assert info["diffusion"]["settings"]["prediction_type"] == "v_prediction"


def test_the_pooled_caption_reaches_every_resnet_block():
    """With pooled text, two captions change the UNet's output even with cross-attention switched off."""
    import torch

    from diffusion.models.tiny_sd import build_unet
    torch.manual_seed(0)
    for pooled in (True, False):
        unet = build_unet((32, 32), cross_attention_dim=32, sample_size=8, latent_channels=4, head_dim=32,
                          pooled_text=pooled).eval()
        for module in unet.modules():  # cross-attention adds nothing: only the pooled path is left
            if hasattr(module, "attn2"):
                module.attn2.to_out[0].weight.data.zero_()
                module.attn2.to_out[0].bias.data.zero_()
        x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])
        with torch.no_grad():
            a = unet(x, t, encoder_hidden_states=torch.randn(1, 6, 32)).sample
            b = unet(x, t, encoder_hidden_states=torch.randn(1, 6, 32)).sample
        assert (not torch.allclose(a, b)) == pooled


def test_the_vae_loss_weights_the_shape_pixels():
    import torch

    from diffusion.models.tiny_sd import build_vae
    from diffusion.train.text2image import shape_mask, to_pixels, vae_loss
    images, scenes = shapes.dataset(4, seed=5)
    mask = shape_mask(images, scenes)
    for image, scene, m in zip(images, scenes, mask):
        background = np.all(image == shapes.COLOURS[scene.background], axis=-1)
        assert m[0][background].sum() == 0 and m[0][~background].mean() > 0.9  # antialiased rim counts as shape
        assert 0.005 < m.mean() < 0.5
    torch.manual_seed(0)
    vae = build_vae((8, 8), latent_channels=2)
    x = to_pixels(images)
    plain = vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1))
    assert torch.allclose(plain, vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1), torch.ones_like(mask)))
    with torch.no_grad():
        z = vae.encode(x).latent_dist
        r = vae.decode(z.mean + z.std * torch.randn(z.mean.shape, generator=torch.Generator().manual_seed(1))).sample
    weight = 1 + 9 * mask
    expected = (weight * (r - x).abs()).sum() / (3 * weight.sum())
    got = vae_loss(vae, x, 0.0, torch.Generator().manual_seed(1), weight)
    assert torch.allclose(got, expected, rtol=1e-4)


def test_the_evaluation_reports_accuracy_per_attribute(tmp_path, capsys):
    images, scenes = shapes.dataset(20, seed=2)
    from diffusion.evaluate.text2image import accuracy
    right = accuracy([s.attributes() for s in scenes], scenes)
    assert right["attributes"] == right["scenes"] == 1.0
    half = [dict(s.attributes(), colour="none") if i % 2 else s.attributes() for i, s in enumerate(scenes)]
    result = accuracy(half, scenes)
    assert result["colour"] == 0.5 and result["attributes"] == pytest.approx(0.9) and result["scenes"] == 0.5
    assert "text2image" in evaluate.build_parser().format_help()


def test_the_reader_drops_specks_as_scikit_image_does():
    import inspect

    from skimage import morphology

    from diffusion.evaluate.shape_checker import _without_small_specks

    new_api = "max_size" in inspect.signature(morphology.remove_small_objects).parameters
    rng = np.random.default_rng(1)
    for _ in range(20):
        mask = rng.random((48, 48)) > 0.65
        expected = (morphology.remove_small_objects(mask, max_size=6) if new_api
                    else morphology.remove_small_objects(mask, min_size=7))
        assert np.array_equal(_without_small_specks(mask, 6), expected)
