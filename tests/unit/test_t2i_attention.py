"""Lesson 6's attention per word (DAAM) on a tiny random Stable Diffusion built here, and on the embedded model.

The reference for every recorded map is computed here from the layers' own projections:
forward hooks capture each cross-attention layer's inputs, and softmax(Q Kᵀ/√d) is
formed by hand in float64, then reduced as DAAM describes (conditional half, mean over
heads, the prompt's tokens, bilinear upsampling, mean over layers).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from diffusion.errors import InputError
from diffusion.lessons import text2image as t2i
from diffusion.lessons.text2image import attention as att
from diffusion.models import registry
from tests.unit.tiny_sd_parts import tiny_pipeline, tokenizer_files


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd-attention")
    built = tiny_pipeline(tokenizer_files(root / "tokenizer-files"))
    unet = built.unet
    with torch.no_grad():  # sharper attention than random weights give, so a wrong half or token shows plainly
        for module in unet.modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                module.to_k.weight.mul_(4.0)
    built.set_progress_bar_config(disable=True)
    yield built
    att.uninstall(built.unet)


@pytest.fixture(scope="module")
def embedded():
    loaded = registry.load_text2image(None, "cpu")
    yield loaded
    att.uninstall(loaded.unet)  # the cached pipeline goes back as it was loaded


def _request(**changes):
    base = dict(prompt="a red circle on a white background", num_inference_steps=4, guidance_scale=3.0)
    return t2i.T2IRequest(**{**base, **changes}).validated(16)


def _pixels(run):
    return np.stack([np.asarray(image) for image in run.images]).astype(int)


def _double(bias):
    return None if bias is None else bias.double()


class _Reference:
    """softmax(Q Kᵀ/√d) of every cross-attention call, by hand from the layer's inputs (float64)."""

    def __init__(self, unet):
        self.calls, self.handles = [], []
        for name, module in unet.named_modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                self.handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))

    def _hook(self, name):
        def hook(module, args, kwargs, output):
            x, context = args[0].double(), kwargs["encoder_hidden_states"].double()
            q = F.linear(x, module.to_q.weight.double(), _double(module.to_q.bias))
            k = F.linear(context, module.to_k.weight.double(), _double(module.to_k.bias))
            heads = module.heads
            d = q.shape[-1] // heads
            q = q.view(q.shape[0], -1, heads, d).transpose(1, 2)
            k = k.view(k.shape[0], -1, heads, d).transpose(1, 2)
            self.calls.append((name, torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)))
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def _daam(calls, positions, batch, size):
    """DAAM's map of one step from reference probabilities: (B, T, h, w)."""
    h, w = size
    maps = []
    for _, probs in calls:
        n = probs.shape[2]
        factor = int(round((h * w / n) ** 0.5))
        grid = (h // factor, w // factor)
        m = probs[-batch:].mean(dim=1)[..., positions]  # conditional half, mean over heads, prompt tokens
        m = m.transpose(1, 2).reshape(batch, len(positions), *grid).float()
        maps.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False))
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("width, height", [(0, 0), (96, 64)])
def test_recorded_maps_are_daam_of_softmax_qk_computed_by_hand(pipe, monkeypatch, width, height):
    """Every layer call's probabilities match softmax(Q Kᵀ/√d) by hand; each step's map is their DAAM average."""
    handed = []
    real_add = att.AttentionRecorder.add
    monkeypatch.setattr(att.AttentionRecorder, "add",
                        lambda self, layer, probs: handed.append((layer, probs.clone())) or real_add(self, layer, probs))
    reference = _Reference(pipe.unet)
    bounds = []
    try:
        run = t2i.generate(pipe, _request(width=width, height=height, batch_size=2), attention=True,
                           callback=lambda info: bounds.append(len(reference.calls)))
    finally:
        reference.close()
    maps = run.attention
    ids = pipe.tokenizer("a red circle on a white background").input_ids
    assert maps.token_ids == ids[1:-1] and maps.tokens == ["a", "red", "circle", "on", "a", "white", "background"]
    assert len(handed) == len(reference.calls) == 4 * 4  # 4 steps × 4 cross-attention layers (1 down, 1 middle, 2 up)
    assert [name for name, _ in handed] == [name + ".processor" for name, _ in reference.calls]
    for (_, probs), (_, every) in zip(handed, reference.calls, strict=True):
        assert every.shape[0] == 4  # the UNet's batch: [unconditional; conditional] × 2 pictures
        expected = every[2:]  # the conditional half
        assert probs.shape == expected.shape
        # Over the whole context (start, end and padding tokens included) each row sums to 1.
        torch.testing.assert_close(probs.double().sum(-1), torch.ones(probs.shape[:-1], dtype=torch.float64),
                                   atol=1e-6, rtol=0)  # float32 rounding
        torch.testing.assert_close(probs.double(), expected, atol=1e-5, rtol=0)
    size = ((height or 16) // 2, (width or 16) // 2)  # 0: the model's own 16×16
    assert maps.steps.shape == (4, 2, 7, *size) and maps.steps.dtype == torch.float16
    starts = [0] + bounds[:-1]
    for step, (lo, hi) in enumerate(zip(starts, bounds, strict=True)):
        expected = _daam(reference.calls[lo:hi], list(range(1, 8)), 2, size)
        torch.testing.assert_close(maps.at(step + 1), expected, atol=2e-4, rtol=0)
    torch.testing.assert_close(maps.at(0), maps.steps.float().sum(0), atol=1e-2, rtol=1e-3)
    assert not torch.equal(maps.at(1)[0], maps.at(1)[1])  # each picture its own noise, its own maps


def test_pixels_are_bit_identical_without_recording_and_equal_with_it(pipe):
    att.uninstall(pipe.unet)
    assert all(type(p) is AttnProcessor2_0 for p in pipe.unet.attn_processors.values())
    request = _request(batch_size=2, seed=5)
    default = t2i.generate(pipe, request)  # diffusers' own processors
    assert att.ensure_installed(pipe.unet)
    installed = t2i.generate(pipe, request)
    assert all(isinstance(p, att.RecordingProcessor) for p in pipe.unet.attn_processors.values())
    assert np.array_equal(_pixels(default), _pixels(installed)) and torch.equal(default.x_t, installed.x_t)
    assert installed.attention is None and installed.summary()["attention"] is False
    recorded = t2i.generate(pipe, request, attention=True)
    # The recording layers compute their output as diffusers' SDPA processor does: the very same pixels.
    assert np.array_equal(_pixels(recorded), _pixels(default)) and torch.equal(recorded.x_t, default.x_t)
    assert recorded.summary()["attention"] is True
    assert recorded.nbytes == installed.nbytes + recorded.attention.nbytes > installed.nbytes


def test_installing_is_idempotent_and_can_be_undone(pipe):
    att.uninstall(pipe.unet)
    before = pipe.unet.attn_processors
    assert att.ensure_installed(pipe.unet)
    first = pipe.unet.attn_processors
    assert att.ensure_installed(pipe.unet) and pipe.unet.attn_processors == first
    assert all(first[name].inner is before[name] for name in before)
    att.uninstall(pipe.unet)
    assert pipe.unet.attn_processors == before


def test_other_processors_are_left_alone_and_recording_is_unavailable(pipe):
    class Custom(AttnProcessor2_0):  # e.g. a user's own processor: its behaviour is not ours to assume
        pass

    att.uninstall(pipe.unet)
    before = pipe.unet.attn_processors
    name = next(n for n in before if n.endswith("attn2.processor"))
    custom = Custom()
    pipe.unet.set_attn_processor({**before, name: custom})
    try:
        assert not att.ensure_installed(pipe.unet)
        assert pipe.unet.attn_processors[name] is custom
        run = t2i.generate(pipe, _request(), attention=True)
        assert run.attention is None and len(run.images) == 1 and run.summary()["attention"] is False
    finally:
        pipe.unet.set_attn_processor(before)


def test_diffusers_classic_processor_is_recorded_through_its_own_probabilities(pipe):
    """A UNet on ``AttnProcessor`` (no SDPA) records the probabilities its output is made of."""
    att.uninstall(pipe.unet)
    before = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(AttnProcessor())
    try:
        classic = t2i.generate(pipe, _request())
        reference, bounds = _Reference(pipe.unet), []
        try:
            run = t2i.generate(pipe, _request(), attention=True,
                               callback=lambda info: bounds.append(len(reference.calls)))
        finally:
            reference.close()
        assert all(type(p.inner) is AttnProcessor for p in pipe.unet.attn_processors.values())
        assert np.abs(_pixels(run) - _pixels(classic)).max() <= 1
        torch.testing.assert_close(run.attention.at(1), _daam(reference.calls[:bounds[0]], list(range(1, 8)), 1,
                                                              (8, 8)), atol=2e-4, rtol=0)
    finally:
        att.uninstall(pipe.unet)
        pipe.unet.set_attn_processor(before)


def test_guidance_records_only_the_conditional_half(pipe):
    """Step 1 sees the same noise with and without guidance: its conditional attention is the same."""
    unguided = t2i.generate(pipe, _request(guidance_scale=1.0, batch_size=2), attention=True)
    reference, bounds = _Reference(pipe.unet), []
    try:
        guided = t2i.generate(pipe, _request(guidance_scale=5.0, batch_size=2), attention=True,
                              callback=lambda info: bounds.append(len(reference.calls)))
    finally:
        reference.close()
    assert torch.equal(unguided.x_t[0], guided.x_t[0])
    assert unguided.attention.steps.shape[1] == guided.attention.steps.shape[1] == 2
    torch.testing.assert_close(guided.attention.at(1), unguided.attention.at(1), atol=2e-4, rtol=0)
    # The unconditional half (the empty prompt's attention) is far from what was kept.
    unconditional = _daam([(n, p[:2]) for n, p in reference.calls[:bounds[0]]], list(range(1, 8)), 2, (8, 8))
    assert (unconditional - guided.attention.at(1)).abs().max() > 5e-3


@pytest.fixture
def one_thread():
    """One torch thread: runs side by side then split no reduction differently than alone (same pixels)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_two_threads_recording_at_once_keep_their_own_maps(pipe, one_thread):
    prompts = ["a red circle", "a blue square on a white background"]
    alone = [t2i.generate(pipe, _request(prompt=p, num_inference_steps=5), attention=True) for p in prompts]
    plain = t2i.generate(pipe, _request(prompt="a white square", num_inference_steps=5))
    barrier = threading.Barrier(3, timeout=60)
    results, errors = {}, []

    def work(key, prompt, attention):
        try:  # every step waits for the others: the three runs interleave step by step
            results[key] = t2i.generate(pipe, _request(prompt=prompt, num_inference_steps=5), attention=attention,
                                        callback=lambda info: barrier.wait())
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, p, True)) for i, p in enumerate(prompts)]
    threads.append(threading.Thread(target=work, args=(2, "a white square", False)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 3
    for i in range(2):
        assert results[i].attention.tokens == alone[i].attention.tokens
        torch.testing.assert_close(results[i].attention.steps, alone[i].attention.steps, atol=1e-5, rtol=0)
        torch.testing.assert_close(results[i].attention.total, alone[i].attention.total, atol=1e-4, rtol=0)
    assert results[2].attention is None and np.array_equal(_pixels(results[2]), _pixels(plain))


def test_a_stopped_run_keeps_the_maps_of_its_steps(pipe):
    polls = []
    run = t2i.generate(pipe, _request(num_inference_steps=10), attention=True,
                       stop=lambda: polls.append(1) or len(polls) >= 3)
    maps = run.attention
    assert run.stopped and len(run) == 3 and maps.steps_run == 3 and maps.steps.shape[0] == 3
    torch.testing.assert_close(maps.at(0), maps.steps.float().sum(0), atol=1e-2, rtol=1e-3)
    assert torch.equal(maps.at(3), maps.steps[2].float())
    for bad in (4, -1, 1.5, "one", True, None, float("nan")):
        with pytest.raises(InputError):
            maps.at(bad)
    empty = att.AttentionRecorder(pipe.tokenizer, "a red circle", (8, 8), 1, 10).result()
    with pytest.raises(InputError) as caught:
        empty.at(0)
    assert caught.value.code == "no_steps"


def test_past_the_byte_budget_only_the_aggregate_is_kept(pipe):
    request = _request(num_inference_steps=3)
    recorder = att.AttentionRecorder(pipe.tokenizer, request.prompt, (8, 8), 1, 3, max_bytes=1000)
    assert att.ensure_installed(pipe.unet)
    run_pipe = t2i.with_scheduler(pipe, "ddim")

    def end_step(p, i, t, kwargs):
        recorder.end_step()
        return kwargs

    with torch.inference_mode(), att.recording(recorder):
        run_pipe(request.prompt, num_inference_steps=3, guidance_scale=3.0, width=16, height=16,
                 generator=torch.Generator().manual_seed(0), callback_on_step_end=end_step)
    maps = recorder.result()
    kept = t2i.generate(pipe, request, attention=True).attention
    assert maps.steps is None and maps.steps_dropped and maps.steps_run == 3
    assert maps.nbytes == maps.total.numel() * 4 < kept.nbytes
    torch.testing.assert_close(maps.at(0), kept.at(0), atol=1e-2, rtol=1e-3)
    with pytest.raises(InputError) as caught:
        maps.at(1)
    assert caught.value.code == "attention_steps_not_kept"


def test_overlays_blend_each_word_normalised_on_its_own():
    import matplotlib

    picture = np.full((16, 24, 3), 100, np.uint8)
    maps = torch.zeros(2, 4, 6)
    maps[0, 1, 2] = 1.0
    maps[1] = torch.arange(24.0).reshape(4, 6) * 1000  # any scale: each word is normalised to [0, 1]
    shown = att.overlays(picture, maps, ["red", "circle"], alpha=0.5)
    assert [caption for _, caption in shown] == ["red", "circle"]
    assert all(o.shape == (16, 24, 3) and o.dtype == np.uint8 for o, _ in shown)
    inferno = matplotlib.colormaps["inferno"]
    low = np.rint(0.5 * 100 + 0.5 * np.asarray(inferno(0.0, bytes=True)[:3], float)).astype(np.uint8)
    np.testing.assert_array_equal(shown[0][0][15, 0], low)  # far from the hot cell: the map's minimum
    high = np.rint(0.5 * 100 + 0.5 * np.asarray(inferno(1.0, bytes=True)[:3], float)).astype(np.uint8)
    np.testing.assert_array_equal(shown[0][0][5, 9], high)  # the hot cell (row 1 of 4, column 2 of 6), upsampled
    same = att.overlays(picture, maps[1:] / 1000, ["circle"], alpha=0.5)
    np.testing.assert_array_equal(same[0][0], shown[1][0])
    assert att.overlays(picture, np.zeros((0, 4, 6)), []) == []
    for bad in [dict(picture=picture[..., 0]), dict(picture=picture.astype(float)), dict(maps=maps[0]),
                dict(tokens=["red"]), dict(tokens="ab"), dict(maps=maps * float("nan")), dict(maps=[["a"]]),
                dict(picture=np.zeros((4000, 10, 3), np.uint8)), dict(alpha=2.0), dict(colormap="nope")]:
        arguments = dict(picture=picture, maps=maps, tokens=["red", "circle"]) | bad
        with pytest.raises(InputError):
            att.overlays(**arguments)


def _embedded_request(prompt, **changes):
    return t2i.T2IRequest(prompt=prompt, guidance_scale=5.0, **changes).validated(64)


def test_on_the_embedded_model_circle_looks_where_the_circle_is(embedded):
    centre = t2i.generate(embedded, _embedded_request("a large red circle in the center on a white background"),
                          attention=True)
    maps = centre.attention
    side = 64 // embedded.vae_scale_factor  # the latent's side
    assert len(maps.layers) == 7 and maps.steps.shape == (30, 1, 11, side, side)
    circle = maps.at(0)[0, maps.tokens.index("circle")]
    q, half = side // 4, side // 2
    middle = circle[q:side - q, q:side - q].mean()
    corners = torch.stack([circle[:q, :q], circle[:q, -q:], circle[-q:, :q], circle[-q:, -q:]]).mean()
    assert middle > 2 * corners  # 2.9–3.1× for the shipped model at guidance 1–5; 1× would be no focus at all
    corner = t2i.generate(embedded, _embedded_request("a large red circle at the bottom right on a white background"),
                          attention=True).attention
    moved = corner.at(0)[0, corner.tokens.index("circle")]
    assert moved[half:, half:].sum() > 2 * moved[:half, :half].sum()  # the word follows the shape to its corner
    plain = t2i.generate(embedded, _embedded_request("a large red circle in the center on a white background"))
    assert np.array_equal(_pixels(centre), _pixels(plain))


def test_on_the_embedded_model_an_odd_non_square_latent_works(embedded):
    run = t2i.generate(embedded, _embedded_request("a small blue square", width=72, height=64,
                                                   num_inference_steps=3), attention=True)
    maps = run.attention
    f = embedded.vae_scale_factor
    assert run.images[0].size == (72, 64) and maps.steps.shape == (3, 1, 4, 64 // f, 72 // f)
    assert len(maps.layers) == 7  # every layer's grid (for 8×9 latents: 8×9, 4×5, 2×3) was found
    assert maps.tokens == ["a", "small", "blue", "square"] and torch.isfinite(maps.total).all()
