"""Lesson 6's content filter, offline, on tiny checkers built here.

The checkers are real ``StableDiffusionSafetyChecker`` s (tiny CLIP vision towers with random
weights, saved with ``save_pretrained``) whose concept embeddings and thresholds are set so
they flag every picture, none, or exactly the pictures chosen; the reference for what a
checker flags is diffusers' own ``StableDiffusionPipeline.run_safety_checker``.
"""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessor

from diffusion.errors import InputError
from diffusion.lessons import text2image as t2i
from diffusion.lessons.text2image import safety
from diffusion.models import pipelines, registry, tiny_sd

# SD 1.5's feature_extractor/preprocessor_config.json, as published with the model.
SD15_FEATURE_EXTRACTOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "image_processor_type": "CLIPImageProcessor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}


def _pictures():
    """Three different 32×32 pictures: a colour ramp, half white, noise."""
    yy, xx = np.mgrid[0:32, 0:32]
    ramp = np.stack([xx * 8, yy * 8, np.full_like(xx, 40)], -1).astype(np.uint8)
    half = np.zeros((32, 32, 3), np.uint8)
    half[:, :16] = 255
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return [ramp, half, noise]


def _checker(concepts=(), everything=False):
    """A tiny checker that flags every picture (``everything``), none, or those like ``concepts`` (uint8 pictures)."""
    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=224, patch_size=32),
                        projection_dim=16)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        checker.special_care_embeds_weights.fill_(2.0)  # a cosine never exceeds 1: never "special care"
        checker.concept_embeds_weights.fill_(-2.0 if everything else 2.0)
        if concepts:
            others = [p for p in _pictures() if not any(np.array_equal(p, c) for c in concepts)]
            embeds = _embeds(checker, list(concepts) + others)
            for i in range(len(concepts)):
                nearest_other = max(float(embeds[i] @ embeds[j]) for j in range(len(concepts), len(embeds)))
                checker.concept_embeds[i] = embeds[i]
                checker.concept_embeds_weights[i] = (1.0 + nearest_other) / 2  # between itself and the rest
    return checker


def _embeds(checker, pictures):
    clip_input = CLIPImageProcessor()([Image.fromarray(p) for p in pictures], return_tensors="pt").pixel_values
    with torch.no_grad():
        return torch.nn.functional.normalize(checker.visual_projection(checker.vision_model(clip_input)[1]))


@pytest.fixture(scope="module")
def checkers(tmp_path_factory):
    """Saved checker folders: ``all`` flags every picture, ``none`` none."""
    root = tmp_path_factory.mktemp("checkers")
    for name, everything in (("all", True), ("none", False)):
        _checker(everything=everything).save_pretrained(root / name)
    return root


def _parts(tokenizer_dir):
    torch.manual_seed(0)
    tokenizer = tiny_sd.build_tokenizer(tokenizer_dir)
    return dict(vae=tiny_sd.build_vae((32, 32), latent_channels=4),
                text_encoder=tiny_sd.build_text_encoder(tokenizer, width=32, layers=1), tokenizer=tokenizer,
                unet=tiny_sd.build_unet((32, 32), cross_attention_dim=32, sample_size=8, latent_channels=4,
                                        pooled_text=False),
                scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1),
                image_encoder=None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny SD pipeline folders: ``plain`` lists no checker (like SD-Turbo), ``own`` ships one that flags all."""
    root = tmp_path_factory.mktemp("tiny-sd-safety")
    parts = _parts(root / "tokenizer-files")
    StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(root / "plain")
    StableDiffusionPipeline(**parts, safety_checker=_checker(everything=True), feature_extractor=CLIPImageProcessor(),
                            requires_safety_checker=True).save_pretrained(root / "own")
    return root


class BrightChecker(torch.nn.Module):
    """The checker's forward signature; flags pictures brighter than CLIP's mean, counts calls and overlaps."""

    def __init__(self):
        super().__init__()
        self.calls, self.inside, self.most_inside = 0, 0, 0

    def forward(self, clip_input, images):
        self.calls += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.005)  # gives a second thread the chance to come in, were there no lock
        self.inside -= 1
        return images, [bool(v > 0) for v in clip_input.float().mean(dim=(1, 2, 3))]


def _bright_filter():
    return safety.SafetyFilter(BrightChecker(), CLIPImageProcessor())


WHITE, BLACK = np.full((16, 16, 3), 255, np.uint8), np.zeros((16, 16, 3), np.uint8)


def test_the_default_feature_extractor_is_stable_diffusions():
    ours, sd15 = CLIPImageProcessor(), CLIPImageProcessor.from_dict(SD15_FEATURE_EXTRACTOR)
    rng = np.random.default_rng(1)
    for h, w in ((512, 512), (512, 768), (1024, 640), (64, 64)):
        picture = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        a, b = ours(picture, return_tensors="pt").pixel_values, sd15(picture, return_tensors="pt").pixel_values
        assert a.shape == (1, 3, 224, 224) and torch.equal(a, b)


def test_check_flags_what_diffusers_run_safety_checker_flags(tmp_path):
    pictures = _pictures()
    checker = _checker(concepts=(pictures[0], pictures[2]))
    reference = StableDiffusionPipeline(**_parts(tmp_path / "tokenizer"), safety_checker=checker,
                                        feature_extractor=CLIPImageProcessor(), requires_safety_checker=True)
    as_output = np.stack(pictures).astype(np.float32) / 255.0  # what the pipeline hands its checker
    _, expected = reference.run_safety_checker(as_output.copy(), torch.device("cpu"), torch.float32)
    flags = safety.SafetyFilter(checker, CLIPImageProcessor()).check(pictures)
    assert flags == list(expected) == [True, False, True]  # both ways, per picture
    everything = safety.SafetyFilter(_checker(everything=True), CLIPImageProcessor())
    nothing = safety.SafetyFilter(_checker(), CLIPImageProcessor())
    assert everything.check(pictures) == [True] * 3 and nothing.check(pictures) == [False] * 3
    assert everything.check([]) == []


def test_filter_strip_replaces_exactly_the_flagged_pictures():
    strip = np.concatenate([WHITE, BLACK, WHITE], axis=1)
    kept = strip.copy()
    shown, flags = _bright_filter().filter_strip(strip, 3)
    assert flags == [True, False, True]
    sign = safety.blocked_picture(16, 16)
    assert np.array_equal(shown[:, :16], sign) and np.array_equal(shown[:, 32:], sign)
    assert np.array_equal(shown[:, 16:32], BLACK)
    assert np.array_equal(strip, kept)  # the strip given is not touched
    dark = np.concatenate([BLACK, BLACK, BLACK], axis=1)
    assert _bright_filter().filter_strip(dark, 3)[1] == [False] * 3


def test_the_blocked_picture_is_plain_grey_with_a_sign():
    picture = safety.blocked_picture(40, 60)
    assert picture.shape == (40, 60, 3) and picture.dtype == np.uint8
    assert (picture == 128).all(axis=2).mean() > 0.5 and (picture == 208).all(axis=2).any()
    assert (picture[..., 0] == picture[..., 1]).all() and (picture[..., 1] == picture[..., 2]).all()  # grey only
    assert safety.blocked_picture(1, 1).shape == (1, 1, 3)
    with pytest.raises(InputError):
        safety.blocked_picture(0, 10)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8),
                                 np.zeros((8, 8, 4), np.uint8), np.zeros((0, 8, 3), np.uint8), None])
def test_bad_pictures_are_refused_clearly(bad):
    with pytest.raises(InputError) as caught:
        _bright_filter().check([bad])
    assert caught.value.code in ("picture_shape", "picture_missing")


def test_bad_strips_and_batches_are_refused():
    with pytest.raises(InputError) as caught:
        safety.split_strip(np.zeros((8, 25, 3), np.uint8), 3)
    assert caught.value.code == "picture_shape"
    for batch in (0, 99, 1.5, None):
        with pytest.raises(InputError):
            safety.split_strip(np.zeros((8, 24, 3), np.uint8), batch)
    with pytest.raises(InputError):
        _bright_filter().check(WHITE)  # one array, not a list of pictures
    with pytest.raises(InputError):
        safety.replace_pictures(np.zeros((8, 24, 3), np.uint8), 3, [True])


def test_checks_from_many_threads_run_one_at_a_time():
    content_filter = _bright_filter()
    results = []
    threads = [threading.Thread(target=lambda: results.append(content_filter.check([WHITE, BLACK])))
               for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [[True, False]] * 6
    assert content_filter.checker.calls == 6 and content_filter.checker.most_inside == 1


def test_verdicts_block_forward_in_time_and_a_blocked_final_picture_everywhere():
    content_filter = _bright_filter()
    verdicts = safety.Verdicts(3)
    early = np.concatenate([BLACK, BLACK, BLACK], axis=1)
    late = np.concatenate([BLACK, WHITE, BLACK], axis=1)
    assert np.array_equal(safety.screen_x0(content_filter, verdicts, 0, early), early)
    shown = safety.screen_x0(content_filter, verdicts, 5, late)
    assert np.array_equal(shown[:, 16:32], safety.blocked_picture(16, 16))
    assert verdicts.blocked_at(4) == [False] * 3 and verdicts.blocked_at(5) == verdicts.blocked_at(9) == \
        [False, True, False]
    calls = content_filter.checker.calls
    safety.screen_x0(content_filter, verdicts, 6, late)  # picture 2 is already blocked: only 1 and 3 checked
    assert content_filter.checker.calls == calls + 1
    latent = np.zeros((4, 12, 3), np.uint8)
    assert np.array_equal(safety.screen_latent(verdicts, 2, latent), latent)
    assert np.array_equal(safety.screen_latent(verdicts, 7, latent)[:, 4:8], safety.blocked_picture(4, 4))
    final = [Image.fromarray(p) for p in (WHITE, BLACK, BLACK)]
    images = safety.screen_images(content_filter, verdicts, final)
    assert np.array_equal(np.asarray(images[0]), safety.blocked_picture(16, 16)) and images[1] is final[1]
    assert verdicts.blocked() == [True, False, False] and verdicts.blocked_at(0) == [True, False, False]
    again = pickle.loads(pickle.dumps(verdicts))  # crosses a process boundary with its run
    assert again.blocked_at(5) == [True, True, False] and again.final == (True, False, False)
    assert safety.screen_x0(None, None, 0, late) is late and safety.screen_latent(None, 0, latent) is latent
    assert safety.screen_images(None, None, final) == final


def test_a_model_without_a_checker_gets_the_standard_one(folders, checkers, monkeypatch):
    monkeypatch.setattr(pipelines, "STANDARD_CHECKER", str(checkers / "all"))
    pipe = t2i.load_pipeline(str(folders / "plain"), "cpu")
    content = pipelines.attached_checker(pipe)
    assert content is not None and content.source == str(checkers / "all") and pipe.safety_checker is None
    content_filter = safety.pipe_filter(pipe)
    assert content_filter is safety.pipe_filter(pipe)  # one filter, one lock, per loaded checker
    # The pipeline itself never blacks out a picture: the lesson sees it and blocks it itself.
    run = t2i.generate(pipe, t2i.T2IRequest("a red circle", num_inference_steps=2).validated(t2i.default_side(pipe)))
    picture = np.asarray(run.images[0])
    assert picture.std() > 0 and content_filter.check([picture]) == [True]
    lenient = t2i.load_pipeline(str(folders / "plain"), "cpu", checker_id=str(checkers / "none"))
    assert safety.pipe_filter(lenient).check([picture]) == [False]


def test_a_model_with_its_own_checker_uses_it(folders, checkers, monkeypatch):
    monkeypatch.setattr(pipelines, "STANDARD_CHECKER", str(checkers / "missing"))  # never asked for
    pipe = t2i.load_pipeline(str(folders / "own"), "cpu")
    content = pipelines.attached_checker(pipe)
    assert content.source.endswith("/safety_checker") and pipe.safety_checker is None
    assert safety.pipe_filter(pipe).check([BLACK]) == [True]


def test_no_filter_when_turned_off_or_for_the_embedded_model(folders, monkeypatch):
    monkeypatch.setattr(pipelines, "STANDARD_CHECKER", "diffusion-lab-tests/no-such-checker")
    assert safety.pipe_filter(t2i.load_pipeline(str(folders / "plain"), "cpu", safety=False)) is None
    monkeypatch.setitem(registry.MODELS, registry.T2I, registry.MODELS[registry.T2I].at(folders / "plain"))
    registry.clear_cache()
    try:
        assert safety.pipe_filter(registry.load_text2image(None, "cpu")) is None
        assert safety.pipe_filter(registry.load_text2image(str(folders / "plain"), "cpu")) is None  # embedded too
    finally:
        registry.clear_cache()


def test_a_filter_that_cannot_be_loaded_refuses_the_model(folders, tmp_path):
    for checker_id in ("diffusion-lab-tests/no-such-checker", str(tmp_path / "missing")):
        with pytest.raises(InputError) as caught:
            t2i.load_pipeline(str(folders / "plain"), "cpu", offline=True, checker_id=checker_id)
        assert caught.value.code == "content_filter_unavailable"
        assert "--no-safety-checker" in str(caught.value) and "content filter" in str(caught.value)
    with pytest.raises(InputError) as caught:  # a missing model is still reported as the model's fault
        t2i.load_pipeline(str(tmp_path / "nothing-here"), "cpu", offline=True)
    assert caught.value.code == "model_load_failed"
    with pytest.raises(InputError):
        t2i.load_pipeline(str(folders / "plain"), "cpu", safety="yes")


def test_checker_weights_are_loaded_from_safetensors_only(folders, tmp_path):
    import shutil

    pickled = tmp_path / "pickled-checker"
    checker = _checker(everything=True)
    checker.config.save_pretrained(pickled)
    torch.save(checker.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(InputError) as caught:
        t2i.load_pipeline(str(folders / "plain"), "cpu", checker_id=str(pickled))
    assert caught.value.code == "content_filter_unavailable" and "safetensors" in str(caught.value)
    own = tmp_path / "own-pickled"
    shutil.copytree(folders / "own", own)
    (own / "safety_checker" / "model.safetensors").unlink()
    torch.save(checker.state_dict(), own / "safety_checker" / "pytorch_model.bin")
    with pytest.raises(InputError) as caught:
        t2i.load_pipeline(str(own), "cpu", checker_id=str(tmp_path / "unused"))
    assert caught.value.code == "content_filter_unavailable" and "safetensors" in str(caught.value)


def test_the_registry_keeps_the_filter_on_and_off_apart(folders, checkers, monkeypatch):
    monkeypatch.setattr(pipelines, "STANDARD_CHECKER", str(checkers / "all"))
    registry.clear_cache()
    try:
        on = registry.load_text2image(str(folders / "plain"), "cpu")
        off = registry.load_text2image(str(folders / "plain"), "cpu", safety=False)
        assert on is not off and safety.pipe_filter(on) is not None and safety.pipe_filter(off) is None
        assert registry.load_text2image(str(folders / "plain"), "cpu", safety=False) is off
        again = registry.load_text2image(str(folders / "plain"), "cpu", safety=True)
        assert safety.pipe_filter(again) is not None
    finally:
        registry.clear_cache()
