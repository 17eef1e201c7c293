"""The browser frame player's packing: lossless pictures, captions per moment, checked sizes, a byte cap."""

from __future__ import annotations

import base64
import io
import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from diffusion.ui import player
from diffusion.ui.i18n import Translator


def decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture)


def noisy(n: int, side: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Pictures that do not compress, each with its index written in its first pixel."""
    frames = np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    frames[:, 0, 0, 0] = np.arange(n)
    return list(frames)


def test_pictures_and_captions_arrive_unchanged():
    grey = [np.full((5, 7), v, dtype=np.uint8) for v in (0, 128, 255)]
    colour = noisy(3, side=7)
    value = json.loads(player.pack_frames([("grey", grey), ("colour", colour)], ["a", "b", "c"], start=1, fps=5,
                                          note="n", pixelated=True))
    assert value["captions"] == ["a", "b", "c"] and value["start"] == 1 and value["fps"] == 5
    assert value["note"] == "n" and value["pixelated"] is True and value["width"] == 7
    assert [p["title"] for p in value["panels"]] == ["grey", "colour"]
    for (_, frames), panel in zip([("grey", grey), ("colour", colour)], value["panels"], strict=True):
        for frame, url in zip(frames, panel["frames"], strict=True):
            np.testing.assert_array_equal(decode(url), frame)  # lossless
    assert json.loads(player.pack_frames([("", grey)], ["a", "b", "c"]))["start"] == 2  # the last by default


def test_over_the_cap_moments_are_left_out_evenly_keeping_first_last_and_start():
    frames = noisy(40)
    captions = [f"moment {i}" for i in range(40)]
    full = player.pack_frames([("", frames)], captions, start=13)
    cap = len(full) // 3
    value = player.pack_frames([("", frames)], captions, start=13, max_bytes=cap)
    assert len(value) <= cap
    data = json.loads(value)
    kept = [int(c.split()[1]) for c in data["captions"]]
    assert 2 < len(kept) < 40 and kept == sorted(kept) and {0, 13, 39} <= set(kept)
    assert data["captions"][data["start"]] == "moment 13"
    # Each caption still belongs to its own picture.
    assert [int(decode(url)[0, 0, 0]) for url in data["panels"][0]["frames"]] == kept
    gaps = np.diff([k for k in kept if k != 13])
    assert gaps.max() - gaps.min() <= 3  # evenly spread


def test_pictures_that_cannot_fit_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        player.pack_frames([("", noisy(4))], list("abcd"), max_bytes=10_000)


@pytest.mark.parametrize("panels, captions, kwargs, message", [
    ([], ["a"], {}, "1..4 panels"),
    ([("", [np.zeros((4, 4), np.uint8)])] * 5, ["a"], {}, "1..4 panels"),
    ([("", [np.zeros((4, 4), np.float32)])], ["a"], {}, "uint8"),
    ([("", [np.zeros((4, 4, 2), np.uint8)])], ["a"], {}, r"\(H, W\)"),
    ([("", [np.zeros((4, 1025), np.uint8)])], ["a"], {}, "1..1024 pixels"),
    ([("", [np.zeros((0, 4), np.uint8)])], ["a"], {}, "1..1024 pixels"),
    ([("", [np.zeros((4, 4), np.uint8)] * 2)], ["a"], {}, "one picture per caption"),
    ([("", [np.zeros((2, 2), np.uint8)] * 121)], ["a"] * 121, {}, "1..120 moments"),
    ([("", [])], [], {}, "1..120 moments"),
    ([("", [np.zeros((4, 4), np.uint8)])], ["x" * 301], {}, "at most 300"),
    ([(None, [np.zeros((4, 4), np.uint8)])], ["a"], {}, "title"),
    ([("", [np.zeros((4, 4), np.uint8)])], ["a"], {"start": 1}, "start"),
    ([("", [np.zeros((4, 4), np.uint8)])], ["a"], {"fps": 0}, "fps"),
    ([("", [np.zeros((4, 4), np.uint8)])], ["a"], {"note": 3}, "note"),
])
def test_malformed_frames_are_refused(panels, captions, kwargs, message):
    with pytest.raises(ValueError, match=message):
        player.pack_frames(panels, captions, **kwargs)


def test_the_widget_carries_both_languages_and_ships_its_script():
    tr = Translator()
    widget = player.frame_player(tr, "some-player", "heat.player_slider")
    assert isinstance(widget, gr.HTML) and widget.elem_id == "some-player"
    assert widget.props["play_en"] == "Play" and widget.props["play_zh"] == "播放"
    assert widget.props["pause_en"] == "Pause" and widget.props["pause_zh"] == "暂停"
    assert widget.props["slider_zh"] == tr.text("heat.player_slider", "zh-CN")
    assert "dlLocalize" in widget.js_on_load and "dl-frames-play" in widget.js_on_load
    assert "http" not in widget.js_on_load  # nothing is fetched from elsewhere
