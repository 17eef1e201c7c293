"""Lesson 1's tab handlers, called directly (no Blocks, no server) with a real Translator.

The numbers are checked against the core run and against their definitions (r = D dt / dx^2,
the FTCS growth factor |1 - 4r|), errors in both languages.
"""

from __future__ import annotations

import base64
import io
import json

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from diffusion.lessons import heat
from diffusion.lessons.heat import figures
from diffusion.ui import heat as tab
from diffusion.ui import player
from diffusion.ui.i18n import Translator
from diffusion.ui.settings import AppSettings

RUN_NAMES = ["status", "heatmap", "profile", "time", "error", "mass", "state", "summary"]
# Positional arguments of /heat_simulate (lang last): n = 101 on L = 20, so dx = 0.2.
SMALL = dict(initial_condition="spike", custom_expression="exp(-(x-50)**2/20)", diffusivity=0.1, length=20.0,
             n_points=101, t_end=20.0, n_steps=400, scheme="ftcs", boundary="dirichlet", sine_mode=1, seed=0)


@pytest.fixture(scope="module")
def tr():
    return Translator()


@pytest.fixture
def handlers(tr):
    return tab.HeatHandlers(tr)  # default settings: no drawing processes, drawn in-process


def run(handlers, lang="en", **changes):
    return handlers.simulate(*{**SMALL, **changes}.values(), lang)


def png_size(plot) -> tuple[int, int]:
    assert plot.type == "matplotlib" and plot.plot.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(plot.plot.split(",", 1)[1]))).size


def test_a_run_gives_every_output_and_the_cores_numbers(handlers):
    out = run(handlers)
    assert list(out) == RUN_NAMES
    core = heat.simulate(heat.HeatParams(**SMALL))
    expected = {k: v for k, v in core.summary().items() if k != "runtime_ms"}
    assert {k: v for k, v in out["summary"].items() if k != "runtime_ms"} == expected
    # r from its definition: D dt / dx^2 = 0.1 * (20 / 400) / 0.2^2
    assert out["summary"]["r"] == pytest.approx(0.125, rel=1e-12)
    assert out["summary"]["stable"] is True and out["summary"]["blew_up"] is False
    np.testing.assert_array_equal(out["state"].u, core.u)
    # The time slider spans the run, one step per stored frame (101 frames over 20 time units).
    assert out["time"] == gr.update(minimum=0, maximum=20.0, value=20.0, step=pytest.approx(0.2))
    for name in ("heatmap", "profile", "error", "mass"):
        width, height = png_size(out[name])
        assert width > height > 100
    assert out["status"].startswith("✓ $r = 0.125$")
    assert f"{out['summary']['mass_start']:.4g} → {out['summary']['mass_end']:.4g}" in out["status"]


def test_the_status_and_plots_follow_the_language(handlers):
    from diffusion.figures import cjk_font_available

    en, zh = run(handlers), run(handlers, lang="zh-CN")
    assert "max error vs exact" in en["status"] and "与精确解的最大误差" in zh["status"]
    assert {k: v for k, v in en["summary"].items() if k != "runtime_ms"} == \
        {k: v for k, v in zh["summary"].items() if k != "runtime_ms"}
    # Plot text is Chinese only where the server has a CJK font (English beats empty boxes).
    assert (en["heatmap"].plot != zh["heatmap"].plot) == cjk_font_available()


def test_a_blow_up_is_reported_with_the_growth_factor(handlers):
    # n = 101 on L = 100: dx = 1; dt = 60 / 100, so r = 0.6 and |1 - 4r| = 1.4.
    out = run(handlers, diffusivity=1.0, length=100.0, t_end=60.0, n_steps=100)
    summary = out["summary"]
    assert summary["r"] == pytest.approx(0.6) and summary["blew_up"] is True and summary["stable"] is False
    assert out["status"].startswith(f"⚠ **FTCS blew up at t = {summary['blow_up_time']:.4g}.**")
    assert "1.40 > 1" in out["status"]
    zh = run(handlers, lang="zh-CN", diffusivity=1.0, length=100.0, t_end=60.0, n_steps=100)
    assert "发散" in zh["status"] and "1.40" in zh["status"]
    # The slider ends on the last frame before the blow-up, not on the NaN frames.
    assert out["time"]["value"] == pytest.approx(summary["last_finite_time"])
    assert out["time"]["value"] < summary["blow_up_time"] <= out["time"]["maximum"]


def test_the_same_request_is_computed_and_drawn_once(handlers):
    first, second = run(handlers), run(handlers)
    assert (handlers.runs.misses, handlers.runs.hits) == (1, 1)
    assert second["heatmap"] is first["heatmap"] and second["state"] is first["state"]
    second["summary"]["r"] = -1.0  # a caller changing its copy does not change the cache
    assert run(handlers)["summary"]["r"] == pytest.approx(0.125)


class FakePool:
    """A render pool that answers with fixed pictures, or refuses (None) like a busy or broken one."""

    def __init__(self, pictures):
        self.pictures, self.requests = pictures, []

    def run(self, request, wait=True):
        self.requests.append(request)
        return self.pictures


def test_pictures_come_from_the_drawing_processes_when_they_answer(tr):
    urls = [f"data:image/png;base64,{i}" for i in range(4)]
    pool = FakePool(urls)
    out = run(tab.HeatHandlers(tr, AppSettings(render_pool=pool)))
    assert [out[name].plot for name in ("heatmap", "profile", "error", "mass")] == urls
    (request,) = pool.requests
    assert request["task"] == "heat" and request["params"]["n_points"] == 101 and request["frame"] == 100
    # A pool that cannot help (None) costs nothing but speed: the pictures are drawn here.
    local = run(tab.HeatHandlers(tr, AppSettings(render_pool=FakePool(None))))
    assert local["heatmap"].plot == run(tab.HeatHandlers(tr))["heatmap"].plot


@pytest.mark.parametrize("changes, english, chinese", [
    (dict(diffusivity=-1.0), "Diffusivity D must be between 1e-09 and 100.0 (got -1.0).", "扩散系数 D"),
    (dict(n_points=5000), "Grid points N must be between 8 and 4001 (got 5000).", "网格点数 N"),
    (dict(t_end="abc"), "End time T must be a number.", "终止时间 T 必须是一个数。"),
    (dict(n_points=4001, n_steps=100_000), "grid points × time steps = 4e+08 (at most 1e+08)", "计算量太大"),
    (dict(initial_condition="custom", custom_expression="y + 1"), "Unknown name 'y' in the formula",
     "未知的名称“y”"),
    (dict(scheme="magic"), "must be one of: ftcs, crank_nicolson, exact (got magic)", "必须是以下之一"),
])
def test_bad_input_gets_the_translated_message(handlers, changes, english, chinese):
    with pytest.raises(gr.Error) as info:
        run(handlers, **changes)
    assert english in info.value.message
    with pytest.raises(gr.Error) as info:
        run(handlers, lang="zh-CN", **changes)
    assert chinese in info.value.message and english not in info.value.message


def test_the_kernel_is_drawn_only_while_its_accordion_is_open(handlers, tr):
    assert handlers.kernel_if_open(False, 0.1, 20.0, 100.0, "en") == {"kernel": gr.skip()}
    shown = handlers.kernel_if_open(True, 0.1, 20.0, 100.0, "en")
    assert list(shown) == ["kernel"] and png_size(shown["kernel"])[0] > 100
    direct = handlers.heat_kernel(0.1, 20.0, 100.0, "en")["kernel"]
    assert direct is shown["kernel"]  # kept: drawn once for these D, t, L and language
    drawn = tab._plot(figures.plot_heat_kernel(0.1, 20.0, 100.0, tr.table("heat.plot.", "en")))
    assert direct.plot == drawn.plot
    with pytest.raises(gr.Error) as info:
        handlers.heat_kernel(-1.0, 20.0, 100.0, "zh-CN")
    assert "扩散系数 D" in info.value.message


def test_scrubbing_redraws_the_profile_at_the_nearest_stored_frame(handlers, tr):
    assert handlers.scrub(None, 3.0, "en") == {"profile": gr.skip()}  # no run yet
    result = run(handlers)["state"]
    assert len(result.times) == 101  # frames every 0.2 time units
    text = tr.table("heat.plot.", "en")
    at = handlers.scrub(result, 7.31, "en")
    assert list(at) == ["profile"]
    assert at["profile"].plot == tab._plot(figures.plot_profile(result, 37, text)).plot  # 7.31 ≈ 37 × 0.2
    assert at["profile"].plot != handlers.scrub(result, 8.0, "en")["profile"].plot


@pytest.mark.parametrize("settings, key, r", [
    ((1.0, 100.0, 101, 60.0, 100, "ftcs", "dirichlet"), "heat.r_unstable", 0.6),
    ((1.0, 100.0, 101, 50.0, 100, "ftcs", "dirichlet"), "heat.r_stable", 0.5),  # the edge is stable
    ((1.0, 100.0, 100, 50.0, 100, "ftcs", "periodic"), "heat.r_stable", 0.5),  # periodic: dx = L / N
    ((1.0, 100.0, 101, 60.0, 100, "crank_nicolson", "dirichlet"), "heat.r_other", 0.6),
])
@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_stability_line_shows_r_from_its_definition(handlers, tr, settings, key, r, lang):
    out = handlers.show_r(*settings, lang)
    fields = {"r": r}
    if key == "heat.r_other":
        fields["scheme"] = tr.text("heat.scheme.crank_nicolson", lang)
    assert out == {"stability": tr.text(key, lang, **fields)}
    assert f"{r:.4g}" in out["stability"]


def test_the_stability_line_asks_for_valid_settings(handlers, tr):
    assert handlers.show_r(1.0, 100.0, 3, 60.0, 100, "ftcs", "dirichlet", "en") == {
        "stability": "Enter valid settings to see $r$."}
    assert handlers.show_r(None, 100.0, 101, 60.0, 100, "ftcs", "dirichlet", "zh-CN") == {
        "stability": tr.text("heat.r_invalid", "zh-CN")}


def test_presets_fill_the_fields_they_name():
    for name, preset in tab.PRESETS.items():
        assert tab.apply_preset(name) == {field: preset[field] for field in tab.PRESET_FIELDS}
        assert heat.HeatParams(**preset).validated()  # every preset is a valid run
    assert tab.apply_preset(None) == {"initial_condition": gr.skip()}
    assert tab.apply_preset("nonsense") == {"initial_condition": gr.skip()}


def test_the_unstable_presets_are_what_their_names_say(handlers):
    r = {name: handlers.simulate(*{**SMALL, **tab.PRESETS[name]}.values(), "en")["summary"]["r"]
         for name in ("unstable", "cn_same_r", "edge")}
    # D = 1, dx = 1: r = dt = t_end / n_steps
    assert r == pytest.approx({"unstable": 0.6, "cn_same_r": 0.6, "edge": 0.5})


@pytest.mark.parametrize("ic, visible", [("custom", "custom_expression"), ("sine", "sine_mode"),
                                         ("random", "seed"), ("spike", None)])
def test_only_the_fields_an_initial_condition_uses_are_shown(ic, visible):
    out = tab.show_ic_fields(ic)
    assert out == {name: gr.update(visible=name == visible) for name in ("custom_expression", "sine_mode", "seed")}


def test_the_bridge_state_follows_the_accordion():
    assert tab.bridge_opened() == {"bridge_open": True} and tab.bridge_closed() == {"bridge_open": False}


def test_the_wiring_keeps_the_api_in_order(tr):
    """/heat_simulate's inputs and outputs, in API order, and the handler's names land on them."""
    with gr.Blocks() as demo:
        tab.build(tr, AppSettings(), demo)
    fns = {fn.api_name: fn for fn in demo.fns.values()}
    simulate = fns["heat_simulate"]
    ids = [getattr(block, "elem_id", None) for block in simulate.inputs]
    assert ids == ["heat-ic", "heat-expr", "heat-d", "heat-length", "heat-n", "heat-tend", "heat-m", "heat-scheme",
                   "heat-bc", "heat-k", "heat-seed", None]
    assert [getattr(block, "elem_id", None) for block in simulate.outputs] == [
        "heat-status", "heat-heatmap", "heat-profile", "heat-time", "heat-error", "heat-mass", None, "heat-summary"]
    assert isinstance(simulate.outputs[6], gr.State)
    out = simulate.fn(*SMALL.values(), "en")
    assert list(out) == simulate.outputs  # {component: value}, in output order
    assert out[simulate.outputs[-1]]["r"] == pytest.approx(0.125)
    kernel = fns["heat_kernel"]
    assert [b.elem_id for b in kernel.inputs[:3]] == ["heat-d", "heat-tend", "heat-length"]
    assert [b.elem_id for b in kernel.outputs] == ["heat-kernel"]
    assert png_size(kernel.fn(0.1, 20.0, 100.0, "en")[kernel.outputs[0]])[0] > 100


def player_value(value: str) -> dict:
    data = json.loads(value)
    (panel,) = data["panels"]
    data["pictures"] = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in panel["frames"]]
    return data


def test_the_player_gets_the_runs_frames_with_their_own_numbers(handlers, tr):
    assert handlers.frames(None, "en") == {"player": gr.skip()}  # no run yet
    result = run(handlers)["state"]
    out = handlers.frames(result, "en")
    assert list(out) == ["player"] and len(out["player"]) <= player.MAX_PLAYER_BYTES
    data = player_value(out["player"])
    # 101 stored frames, every other one played: t = 0, 0.4, ..., 20 (dt = 20 / 400, a frame every 4 steps).
    assert len(data["captions"]) == 51 and data["start"] == 50
    dx = 0.2
    for k, caption in enumerate(data["captions"]):
        i = 2 * k
        u = result.u[i]
        mass = dx * (u.sum() - (u[0] + u[-1]) / 2)  # the trapezoid rule, by hand
        err = np.abs(u - heat.exact_solution(result.u[0], result.x, result.times[i:i + 1], 0.1, 20.0,
                                             "dirichlet")[0]).max()
        assert caption == f"t = {0.4 * k:.4g} time units · total heat ∫u dx = {mass:.4g} · max |u − u_exact| = {err:.2e}"
    # Each picture is the profile figure of its moment (its legend may sit elsewhere).
    for k in (0, 17, 50):
        drawn = figures.plot_profile(result, 2 * k, tr.table("heat.plot.", "en"))
        drawn.canvas.draw()
        full = np.asarray(drawn.canvas.buffer_rgba())[..., :3]
        assert data["pictures"][k].shape == full.shape
        assert (data["pictures"][k] != full).any(axis=2).mean() < 0.03
    assert data["note"] == "Press Play or drag the slider: all 51 frames of this run are already in your browser, " \
                           "so nothing is recomputed."
    assert handlers.frames(result, "en")["player"] is out["player"]  # packed once per run and language


def test_the_player_starts_at_the_last_frame_before_a_blow_up(handlers):
    out = run(handlers, lang="zh-CN", diffusivity=1.0, length=100.0, t_end=60.0, n_steps=100)
    result, summary = out["state"], out["summary"]
    data = player_value(handlers.frames(result, "zh-CN")["player"])
    start = data["captions"][data["start"]]
    assert start.startswith(f"t = {summary['last_finite_time']:.4g}（时间单位）· 总热量")
    after = [c for c in data["captions"] if "没有数值" in c]
    assert after and after[-1] == f"t = 60（时间单位）· 没有数值：FTCS 在 t = {summary['blow_up_time']:.4g} 时发散"
    assert data["note"].startswith("点击“播放”或拖动滑块")


def test_the_player_is_filled_after_each_run_and_the_api_is_unchanged(tr):
    with gr.Blocks() as demo:
        tab.build(tr, AppSettings(), demo)
    fills = [fn for fn in demo.fns.values() if [getattr(b, "elem_id", None) for b in fn.outputs] == ["heat-player"]]
    assert fills and all(fn.api_visibility == "private" and fn.trigger_mode == "always_last" for fn in fills)
    assert all(isinstance(fn.inputs[0], gr.State) for fn in fills)
    names = {fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"}
    assert names == {"heat_simulate", "heat_kernel"}
