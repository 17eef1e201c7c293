"""Lesson 6's pipeline code on a tiny random Stable Diffusion built here, offline.

The pipeline is assembled from diffusers/transformers classes with random
weights and a tokenizer whose files this test writes, saved as a standard
folder, then loaded through the same path as any hub model.
"""

from __future__ import annotations

import base64
import io
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image

from diffusion.models import registry as models
from diffusion.lessons import text2image as t2i
from diffusion.errors import InputError
from tests.unit.tiny_sd_parts import tiny_pipeline, tokenizer_files

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    pipe = tiny_pipeline(tokenizer_files(root / "tokenizer-files"))
    pipe.save_pretrained(root / "pipe", safe_serialization=True)
    return root / "pipe"


@pytest.fixture(scope="module")
def pipe(tiny_folder):
    return t2i.load_pipeline(str(tiny_folder), "cpu", safety=False)  # random shapes: no filter to load


def _request(**changes):
    base = dict(prompt="a red circle", num_inference_steps=6, guidance_scale=3.0)
    return t2i.T2IRequest(**{**base, **changes}).validated(16)


def test_the_folder_loads_through_the_auto_pipeline_with_its_own_size(pipe):
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert t2i.default_side(pipe) == 16  # 8×8 latents, a VAE with two blocks halves once
    assert not t2i.is_lcm(pipe)


@pytest.mark.parametrize("name", [n for n in t2i.SCHEDULERS if n != "lcm"])
def test_every_scheduler_runs_and_records_its_own_timesteps(pipe, name):
    request = _request(scheduler=name)
    seen = []
    run = t2i.generate(pipe, request, callback=lambda info: seen.append((info.step, info.total)))
    reference = t2i.SCHEDULERS[name][0].from_config(pipe.scheduler.config, **t2i.SCHEDULERS[name][1])
    reference.set_timesteps(request.num_inference_steps)
    assert run.timesteps == pytest.approx([float(t) for t in reference.timesteps])
    assert seen == [(i, request.num_inference_steps) for i in range(request.num_inference_steps)]
    assert run.x_t.shape == (6, 1, 4, 8, 8) and len(run.images) == 1 and run.images[0].size == (16, 16)
    assert not torch.isnan(run.x0_pred).any()
    # Every scheduler's x̂_0 is Tweedie's formula on the z_t the network saw (DDPM eq. 15).
    for i in (0, len(run) - 1):
        info = run.frame(i)
        if name == "dpm_solver" or not math.isfinite(info.alpha_bar):
            continue
        a = info.alpha_bar
        expected = (info.x_t - math.sqrt(1 - a) * info.eps_pred) / math.sqrt(a)
        torch.testing.assert_close(info.x0_pred, expected, atol=0.05 * float(expected.abs().max()) + 1e-2, rtol=0)


def test_the_same_seed_gives_the_same_pixels_and_another_seed_others(pipe):
    first, again = t2i.generate(pipe, _request(seed=3)), t2i.generate(pipe, _request(seed=3))
    other = t2i.generate(pipe, _request(seed=4))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))
    assert pipe.scheduler.__class__ is DDIMScheduler  # runs swap schedulers on their own copy only


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral"])
def test_samplers_that_add_fresh_noise_draw_it_from_the_seed(pipe, name):
    """DDPM and Euler ancestral add noise at every step: it must come from the request's generator."""
    torch.manual_seed(0)
    first = t2i.generate(pipe, _request(seed=3, scheduler=name))
    torch.manual_seed(1)  # the global generator must not matter
    again = t2i.generate(pipe, _request(seed=3, scheduler=name))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert torch.equal(first.x_t, again.x_t)


def test_stop_ends_the_run_cleanly_after_the_current_step(pipe):
    calls = []
    run = t2i.generate(pipe, _request(num_inference_steps=20), stop=lambda: calls.append(1) or len(calls) >= 4)
    assert run.stopped and len(run) == 4 and len(run.images) == 1
    assert run.summary()["steps_run"] == 4 and run.summary()["stopped"] is True


def test_image_to_image_starts_where_the_strength_says(pipe):
    start = Image.fromarray(np.full((40, 30, 3), 200, np.uint8))
    request = _request(num_inference_steps=10, strength=0.5, batch_size=2)
    run = t2i.generate(pipe, request, init_image=start)
    where = t2i.strength_to_timestep(pipe, "ddim", 10, 0.5)
    assert run.img2img and len(run) == where["steps_run"] == 5 and run.start_t == where["t"]
    assert where["alpha_bar"] == pytest.approx(float(pipe.scheduler.alphas_cumprod[int(where["t"])]))
    assert len(run.images) == 2 and run.images[0].size == (16, 16)


def test_batches_and_pictures_of_the_latents(pipe):
    run = t2i.generate(pipe, _request(batch_size=3))
    assert len(run.images) == 3 and run.x_t.shape[1] == 3
    strip = t2i.latent_picture(run.frame(0).x_t)
    assert strip.shape == (8, 24, 3) and strip.dtype == np.uint8
    decoded = t2i.decode_latents(pipe.vae, run.frame(len(run) - 1).x0_pred)
    assert decoded.shape == (3, 3, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1
    # The last recorded x̂_0 decoded is the returned picture, up to PNG rounding.
    final = t2i.to_uint8(t2i.decode_latents(pipe.vae, run.x0_pred[-1].float()))
    assert np.abs(final[:, :16].astype(int) - np.asarray(run.images[0]).astype(int)).max() <= 1


@pytest.mark.parametrize("changes, code", [
    (dict(prompt="x" * (t2i.MAX_PROMPT_CHARS + 1)), "prompt_too_long"),
    (dict(prompt=123), "not_text"),
    (dict(scheduler="lcm"), "lcm_only"),
    (dict(scheduler="karras"), "bad_choice"),
    (dict(num_inference_steps=0), "out_of_range"),
    (dict(num_inference_steps=float("nan")), "not_a_number"),
    (dict(guidance_scale=float("inf")), "not_a_number"),
    (dict(width=32), "out_of_range"),
    (dict(height=10**9), "out_of_range"),
    (dict(batch_size=5), "out_of_range"),
    (dict(strength=0), "out_of_range"),
])
def test_bad_requests_are_refused_with_a_reason(changes, code):
    with pytest.raises(InputError) as caught:
        t2i.T2IRequest(**changes).validated(64)
    assert caught.value.code == code


def test_requests_fill_in_the_model_size_and_round_to_multiples_of_eight():
    request = t2i.T2IRequest(prompt="  a red\x00 circle ", width=0, height=100).validated(64)
    assert (request.width, request.height, request.prompt) == (64, 96, "a red circle")
    assert t2i.T2IRequest(scheduler="lcm").validated(64, lcm_model=True).scheduler == "lcm"


def test_only_listed_models_are_loaded_and_paths_never(tmp_path):
    embedded = tmp_path / "embedded"
    assert t2i.resolve_model("embedded", embedded) == str(embedded)
    assert t2i.resolve_model(None, embedded) == str(embedded)
    assert t2i.resolve_model(t2i.SUGGESTED[0], embedded) == t2i.SUGGESTED[0]
    assert t2i.resolve_model("/srv/models/mine", embedded, extra=("/srv/models/mine",)) == "/srv/models/mine"
    for refused in ("someone/model", "/etc", "../assets/models", "C:\\models"):
        with pytest.raises(InputError, match="not offered"):
            t2i.resolve_model(refused, embedded)
    assert t2i.resolve_model("someone/model", embedded, allow_any=True) == "someone/model"
    for refused in ("/etc/x", "../a/b", "a/../b", "x" * 300 + "/y", "a/b/c"):
        with pytest.raises(InputError):
            t2i.resolve_model(refused, embedded, allow_any=True)


def test_a_missing_model_is_a_clear_error_offline(tmp_path):
    with pytest.raises(InputError) as caught:
        t2i.load_pipeline(str(tmp_path / "nothing-here"), "cpu", offline=True)
    assert caught.value.code == "model_load_failed"
    with pytest.raises(InputError) as caught:
        t2i.load_pipeline("stabilityai/sd-turbo", "cpu", offline=True)
    assert caught.value.code == "model_load_failed" and "embedded model still works" in str(caught.value)


def test_a_corrupt_embedded_model_disables_only_itself(tiny_folder, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_folder, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated safetensors
    monkeypatch.setitem(models.MODELS, models.T2I, models.MODELS[models.T2I].at(broken))
    models.clear_cache()
    try:
        assert models.text2image_available()
        with pytest.raises(models.ModelUnavailable):
            models.load_text2image(None, "cpu")
        assert not models.text2image_available()  # remembered: the tab shows its notice
        (broken / "model_index.json").unlink()
        assert not models.text2image_available()
    finally:
        models.clear_cache()


def test_unknown_words_are_listed_not_refused(pipe):
    assert t2i.unknown_words(pipe, "A RED circle on a white background") == []
    assert t2i.unknown_words(pipe, "a red zebra circle, 42 zebra") == ["zebra", "42"]
    run = t2i.generate(pipe, _request(prompt="a red zebra circle"))
    assert len(run.images) == 1


def test_running_out_of_gpu_memory_retries_smaller_then_reports(pipe, monkeypatch):
    real = t2i.generate
    calls = []

    def tight_memory(p, request, **kwargs):  # a GPU that fits one picture at a time
        calls.append(request.batch_size)
        if request.batch_size > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(p, request, **kwargs)

    from diffusion.lessons.text2image import pipeline  # where generate_within_memory finds generate

    monkeypatch.setattr(pipeline, "generate", tight_memory)
    run = t2i.generate_within_memory(pipe, _request(batch_size=3))
    assert calls == [3, 1] and len(run.images) == 1 and run.request.batch_size == 3
    assert "batch_size=1" in run.summary()["fallback"]

    def no_memory(p, request, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline, "generate", no_memory)
    with pytest.raises(InputError) as caught:
        t2i.generate_within_memory(pipe, _request())
    assert caught.value.code == "out_of_memory"


def test_the_preview_pacer_keeps_decoding_to_its_share_of_the_run():
    now = [0.0]
    pacer = t2i.PreviewPacer(share=0.1, clock=lambda: now[0])

    def slow_decoder(z):  # a VAE pass that takes 0.05 s of the fake clock
        now[0] += 0.05
        return torch.zeros(1, 3, 4, 4)

    assert pacer.due()  # the first preview is always decoded
    decoded = []
    for frame in range(40):  # a frame every 0.05 s for 2 s
        if pacer.due():
            decoded.append(frame)
            pacer.decode(slow_decoder, torch.zeros(1, 4, 1, 1))
        now[0] += 0.05
    assert decoded[0] == 0 and 1 < len(decoded) < 40
    assert pacer.spent <= 0.1 * now[0] + 0.05  # within the share, give or take the one decode in flight
    assert pacer.decoded == len(decoded)
    fast = t2i.PreviewPacer(share=0.1, clock=lambda: now[0])
    for _ in range(10):  # a free decoder never falls behind: every frame is decoded
        assert fast.due()
        fast.decode(lambda z: torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 1, 1))
        now[0] += 0.05


def _png(url):
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        return np.asarray(picture)


def test_the_player_of_a_kept_run_decodes_its_steps_once(pipe, monkeypatch):
    from diffusion.ui.text2image import run as tab
    from diffusion.ui.i18n import Translator
    from diffusion.ui.run_player import RunPlayers
    from diffusion.ui.settings import AppSettings

    run = t2i.generate(pipe, _request(num_inference_steps=6, batch_size=2))
    decoded = []
    decoder = run.decoder
    run.decoder = lambda z: decoded.append(1) or decoder(z)
    monkeypatch.setattr(tab, "PLAYERS", RunPlayers())
    monkeypatch.setattr(tab, "PLAYER_FRAMES", 4)  # fewer frames than steps: the first and last among them
    handlers = tab.TextToImageHandlers(Translator(), AppSettings(), t2i.EMBEDDED)
    first, second = tab.RUNS.add(run), tab.RUNS.add(run)
    data = json.loads(handlers.player(first, "en")["player"])
    steps = [0, 2, 3, 5]
    assert data["captions"] == [f"Step {i + 1} / 6 · t = {float(run.timesteps[i]) + 1:.0f} · "
                                f"ᾱ_t = {float(run.alpha_bar[i]):.3g}" for i in steps]
    # ᾱ_t of each caption is the scheduler's own, at that step's timestep.
    for i in steps:
        assert float(run.alpha_bar[i]) == pytest.approx(float(pipe.scheduler.alphas_cumprod[int(run.timesteps[i])]))
    assert data["start"] == 3 and data["pixelated"] is True and "4 of the run's 6 steps" in data["note"]
    latents, pictures = (p["frames"] for p in data["panels"])
    for i, z_url, x_url in zip(steps, latents, pictures, strict=True):
        frame = run.frame(i)
        np.testing.assert_array_equal(_png(z_url), t2i.latent_picture(frame.x_t))
        expected = t2i.to_uint8(t2i.decode_latents(pipe.vae, frame.x0_pred))
        assert _png(x_url).shape == expected.shape == (16, 32, 3)
        np.testing.assert_array_equal(_png(x_url), expected)
    assert len(decoded) == 4
    # Another page (another run id, another language) gets the same pictures without decoding again.
    zh = json.loads(handlers.player(second, "zh-CN")["player"])
    assert zh["captions"][0].startswith("第 1 / 6 步 · t = ") and zh["panels"][1]["frames"] == pictures
    assert len(decoded) == 4
    assert handlers.player("", "en") == {"player": ""} and handlers.player("f" * 32, "en") == {"player": ""}


def test_big_pictures_are_shrunk_for_the_player_and_noise_is_not_averaged():
    from diffusion.ui.run_player import shrink

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (100, 800, 3), dtype=np.uint8)
    kept, factor = shrink(picture, 384, average=False)
    assert factor == 3 and max(kept.shape[:2]) <= 384
    np.testing.assert_array_equal(kept, picture[::3, ::3])
    smooth, factor = shrink(np.full((512, 2048, 3), 77, np.uint8), 384, average=True)
    assert factor == 6 and max(smooth.shape[:2]) <= 384 and (smooth == 77).all()
    same, factor = shrink(picture[:, :300], 384, average=True)
    assert factor == 1
    np.testing.assert_array_equal(same, picture[:, :300])
