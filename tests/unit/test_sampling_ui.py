"""Lesson 4's UI plumbing: the worker run, stop, the run store, pictures, summary and plot."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image

import app
from diffusion.models import registry as models
from diffusion.errors import InputError
from diffusion.lessons.sampling import SampleRequest, Trajectory, sample
from diffusion.lessons.sampling.figures import SAMPLING_TEXT, plot_std
from diffusion.serving.jobs import Waiting
from diffusion.serving import store as run_store
from diffusion.serving.live import LiveRun
from diffusion.serving.store import RunStore
from diffusion.ui import sampling as tab
from diffusion.ui.i18n import Translator
from diffusion.ui.run_player import RunPlayers, spread_steps
from diffusion.ui.widgets import progress_html
from tests.unit.test_sampling import tiny_unet

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


@pytest.fixture(scope="module")
def config():
    return DDPMScheduler().config


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path, unet, config):
    """The registry's "mnist" model replaced by a tiny random one saved in a temp folder."""
    folder = tmp_path / "mnist-ddpm"
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler.from_config(config).save_pretrained(folder / "scheduler")
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=folder, kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    models.clear_cache()
    yield folder
    models.clear_cache()


def run(unet, config, **changes) -> Trajectory:
    return sample(unet, config, SampleRequest(**{"num_inference_steps": 5, "batch_size": 3, **changes}))


def test_live_run_streams_steps_and_returns_the_result(unet, config):
    request = SampleRequest(num_inference_steps=6, batch_size=2)
    live = LiveRun(lambda cb, stop: sample(unet, config, request, callback=cb, stop=stop))
    seen = [info.step for info in live.steps(interval=0.0)]
    assert live.done.is_set() and isinstance(live.result, Trajectory) and len(live.result) == 6
    assert seen == sorted(set(seen)) and all(0 <= s < 6 for s in seen)


def test_live_run_stop_ends_after_the_current_step(unet, config):
    started = threading.Event()

    def slow(cb, stop):
        def callback(info):
            cb(info)
            started.set()
            time.sleep(0.01)
        return sample(unet, config, SampleRequest(sampler="ddpm", num_inference_steps=1000, batch_size=1),
                      callback=callback, stop=stop)

    live = LiveRun(slow)
    assert started.wait(30)
    live.stop()
    assert live.done.wait(30)
    assert live.result.stopped and 1 <= len(live.result) < 1000


def test_live_run_hands_errors_to_the_streaming_side():
    def broken(cb, stop):
        raise InputError("bad_digit", "no", value="x")

    live = LiveRun(broken)
    with pytest.raises(InputError):
        list(live.steps(interval=0.0))


def test_run_store_keeps_finished_runs_within_its_byte_budget(unet, config):
    first = run(unet, config)
    store = RunStore(max_bytes=first.nbytes * 2 + 1)
    ids = [store.new_id() for _ in range(3)]
    assert len(set(ids)) == 3 and all(run_store._RUN_ID.match(i) for i in ids)
    for run_id in ids:
        store.finish(run_id, run(unet, config))
    with pytest.raises(InputError) as error:
        store.get(ids[0])  # the oldest was dropped to stay within budget
    assert error.value.code == "run_expired"
    assert len(store.get(ids[2])) == 5
    for bad in ("", None):
        with pytest.raises(InputError) as error:
            store.get(bad)
        assert error.value.code == "no_run"
    for bad in ("../../etc/passwd", "x" * 32, 42):
        with pytest.raises(InputError) as error:
            store.get(bad)
        assert error.value.code == "run_expired"
    assert store.stop("0" * 32) is False and store.stop(None) is False


def test_run_store_stop_reaches_a_live_run():
    class Dummy:
        stopped = False

        def stop(self):
            self.stopped = True

    store, dummy = RunStore(max_bytes=2**20), Dummy()
    run_id = store.new_id()
    store.add_live(run_id, dummy)
    assert store.stop(run_id) and dummy.stopped
    store.finish(run_id, None)
    assert store.stop(run_id) is False


def test_pictures_gallery_and_summary(unet, config):
    trajectory = run(unet, config, digit="7")
    x_t, x0, eps = tab.step_pictures(trajectory.frame(2))
    assert x_t.dtype == np.uint8 and x_t.shape == x0.shape == eps.shape == (62, 62)  # 2×2 grid of 28 + pads

    class Tr:
        @staticmethod
        def text(key, lang, **fields):
            return f"{key}:{fields}"

    items = tab.gallery_items(trajectory, Tr, "en")
    assert len(items) == 3 and all(img.shape == (28, 28) and img.dtype == np.uint8 for img, _ in items)
    assert "'digit': 7" in items[0][1]
    summary = tab.run_summary(trajectory, "ab" * 16)
    assert list(summary)[:6] == ["sampler", "steps", "seconds", "digit", "guidance_scale", "seed"]
    assert summary["steps"] == 5 and summary["digit"] == "7" and summary["run_id"] == "ab" * 16


def test_progress_html_escapes_text_and_clamps():
    out = progress_html(1.7, "<script>alert(1)</script>")
    assert "<script>" not in out and "&lt;script&gt;" in out and 'aria-valuenow="100"' in out
    assert 'width: 0.0%' in progress_html(-1, "x")


def test_submit_validates_before_queueing_and_shares_identical_runs(tiny_registry):
    handlers = tab.SamplingHandlers(Translator(), "cpu")
    with pytest.raises(InputError) as error:
        handlers.submit(SampleRequest(num_inference_steps=5000), "a")
    assert error.value.code == "out_of_range" and handlers.jobs.queued() == 0
    ticket = handlers.submit(SampleRequest(num_inference_steps=3, batch_size=1), "a")
    streamed = [s.step for s in ticket.updates() if not isinstance(s, Waiting)]
    ticket.close()
    assert streamed and streamed == sorted(set(streamed))  # even this short run shows a step
    assert len(ticket.result) == 3 and not ticket.shared
    same = handlers.submit(SampleRequest(num_inference_steps=3, batch_size=1), "b")
    other = handlers.submit(SampleRequest(num_inference_steps=3, batch_size=1, seed=1), "b")
    for t in (same, other):
        list(t.updates())
        t.close()
    assert same.shared and same.result is ticket.result  # the same pixels, computed once
    assert not other.shared and handlers.jobs.runs == 2


def test_std_plot_draws_one_line_per_run_with_labels(unet, config):
    ddim = run(unet, config, sampler="ddim")
    ddpm = run(unet, config, sampler="ddpm", num_inference_steps=20)
    fig = plot_std([ddim, ddpm])
    ax = fig.axes[0]
    assert len(ax.lines) == 3  # two runs and the real-digit level
    assert ax.get_xlabel() == SAMPLING_TEXT["std_xlabel"] and ax.get_ylabel() == SAMPLING_TEXT["std_ylabel"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), ddim.x_t_std.numpy(), rtol=1e-6)
    assert ax.get_xlim()[0] > ax.get_xlim()[1]  # time runs from T down to 0


def test_tab_is_switched_off_cleanly_without_its_model(monkeypatch, tmp_path):
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=tmp_path / "nothing", kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    models.clear_cache()
    demo, _ = app.create_app(app.settings_from_args(app.parse_args(["--device", "cpu"])))
    api_names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert "sample" not in api_names and "heat_simulate" in api_names
    notices = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sample-no-model"]
    assert len(notices) == 1


def test_model_events_wait_on_the_one_job_queue(tiny_registry):
    settings = app.settings_from_args(app.parse_args(["--device", "cpu", "--heavy-concurrency", "2"]))
    demo, _ = app.create_app(settings)
    by_name = {d.api_name: d for d in demo.fns.values() if d.api_name}
    for name in ("sample", "sample_compare"):  # every waiting handler runs, to show its place in the queue
        assert by_name[name].concurrency_id == "model" and by_name[name].concurrency_limit == settings.max_queue
    assert settings.jobs.workers == 2  # the models themselves run two at a time
    assert by_name["sample_stop"].queue is False  # a stop must not wait behind the run it stops


def test_the_run_handler_streams_then_answers_every_output(tiny_registry):
    """Called without a browser or Blocks: named outputs, a kept run, and the lesson's t shown."""
    handlers = tab.SamplingHandlers(Translator(), "cpu")
    answers = list(handlers.run("ddim", 4, 0.0, 3, 2, "5", 1.0, "zh-CN"))
    final = answers[-1]
    assert set(final) == {"status", "x_t", "x0", "eps", "gallery", "scrub", "run_id", "summary"}
    assert all(set(a) <= set(final) for a in answers)  # no handler answer names an output the event lacks
    summary = final["summary"]
    assert summary["run_id"] == final["run_id"] and summary["labels"] == [5, 5] and summary["steps"] == 4
    # DDIM's last step goes from x_1 to x_0 (diffusers' timestep 0): the paper's, and every lesson's, t = 1.
    assert summary["last_t"] == 1
    assert "完成" in final["status"]  # the status line speaks the caller's language
    kept = tab.RUNS.get(final["run_id"])
    np.testing.assert_array_equal(final["x_t"], tab.picture(kept.samples))
    replay = handlers.replay(final["run_id"], 4, "en")
    expected = tab.step_pictures(kept.frame(3))
    for name, picture in zip(("x_t", "x0", "eps"), expected):
        np.testing.assert_array_equal(replay[name], picture)
    assert f"t = {int(kept.timesteps[3]) + 1}" in replay["status"]
    with pytest.raises(InputError) as error:
        handlers.replay("", 1, "en")
    assert error.value.code == "no_run"


def _digits(trajectory):
    return tab.to_uint8_grid(trajectory.samples, nrow=4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_batched_run_gives_each_request_the_pixels_it_gets_alone(unet, config, precision):
    from diffusion.lessons.sampling.batched import sample_batched

    requests = [SampleRequest(num_inference_steps=5, seed=s, digit=d, guidance_scale=g, batch_size=b).validated(1000)
                for s, d, g, b in ((0, "random", 1.5, 4), (1, "3", 1.0, 2), (2, "7", 0.0, 1), (0, "random", 3.0, 4))]
    alone = [sample(unet, config, r, precision=precision) for r in requests]
    stopped_after = [None, 2, None, None]
    stops = [None if n is None else (lambda n=n, seen=[]: seen.append(1) or len(seen) >= n) for n in stopped_after]
    together = sample_batched(unet, config, requests, stops=stops, precision=precision)
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b.request == a.request and b.labels.tolist() == a.labels.tolist()
        if stopped_after[i] is None:
            np.testing.assert_array_equal(_digits(a), _digits(b))
            assert len(b) == 5 and not b.stopped
        else:  # stopped: it left the batch after its second step, the others went on
            assert b.stopped and len(b) == 2
    with pytest.raises(ValueError):
        sample_batched(unet, config, [requests[0], SampleRequest(num_inference_steps=3).validated(1000)])


def test_the_job_queue_batches_waiting_sampling_requests(tiny_registry):
    from diffusion.serving.batching import Batcher
    from diffusion.serving.jobs import JobQueue

    jobs = JobQueue()
    jobs.batcher = Batcher()
    handlers = tab.SamplingHandlers(Translator(), "cpu", jobs)
    gate = threading.Event()
    blocker = jobs.submit("other", lambda callback, stop: gate.wait(10), client="x")
    while jobs.queued():
        time.sleep(0.01)
    asked = [SampleRequest(num_inference_steps=4, seed=s, batch_size=2) for s in (0, 1, 2)]
    tickets = [handlers.submit(r, f"student{i}") for i, r in enumerate(asked)]
    gate.set()
    for t in [blocker, *tickets]:
        list(t.updates())
        t.close()
    assert jobs.batcher.groups == [3]  # the three waited together and ran as one loop
    unet, config = models.load_unet_model("mnist", "cpu")
    for request, ticket in zip(asked, tickets):
        alone = sample(unet, config, request.validated(1000), precision=handlers.precision)
        np.testing.assert_array_equal(_digits(ticket.result), _digits(alone))


def _player(value: str) -> dict:
    data = json.loads(value)
    assert set(data) >= {"panels", "captions", "start", "fps", "note", "pixelated"}
    return data


def _png(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as picture:
        return np.asarray(picture)


def test_spread_steps_keeps_the_first_and_last_and_caps_the_count():
    assert spread_steps(0, 60) == [] and spread_steps(1, 60) == [0] and spread_steps(25, 60) == list(range(25))
    picks = spread_steps(1000, 60)
    assert len(picks) == 60 and picks[0] == 0 and picks[-1] == 999 and picks == sorted(set(picks))
    gaps = np.diff(picks)
    assert gaps.min() >= 16 and gaps.max() <= 17  # evenly spaced: 999 / 59 = 16.9
    assert spread_steps(6, 4) == [0, 2, 3, 5]


def test_the_player_of_a_finished_run_holds_its_steps_as_the_slider_shows_them(tiny_registry, monkeypatch):
    handlers = tab.SamplingHandlers(Translator(), "cpu")
    final = list(handlers.run("ddim", 5, 0.0, 3, 2, "5", 1.0, "en"))[-1]
    kept = tab.RUNS.get(final["run_id"])
    monkeypatch.setattr(tab, "PLAYERS", RunPlayers())
    monkeypatch.setattr(tab, "PLAYER_FRAMES", 3)  # fewer frames than steps: first, middle and last
    data = _player(handlers.player(final["run_id"], "en")["player"])
    assert data["captions"] == [
        f"Step {i + 1} / 5 · t = {int(kept.timesteps[i]) + 1} · ᾱ_t = {float(kept.alpha_bar[i]):.3g}" for i in (0, 2, 4)]
    assert data["start"] == 2 and data["pixelated"] is True
    assert "3 of the run's 5 steps" in data["note"]
    assert [p["title"] for p in data["panels"]] == [Translator().text("sampling.x_t", "en"),
                                                    Translator().text("sampling.x0", "en")]
    for k, panel in enumerate(data["panels"]):  # the very pictures the server's step slider shows
        for url, i in zip(panel["frames"], (0, 2, 4), strict=True):
            np.testing.assert_array_equal(_png(url), tab.step_pictures(kept.frame(i))[k])
    monkeypatch.setattr(tab, "PLAYER_FRAMES", 60)
    monkeypatch.setattr(tab, "PLAYERS", RunPlayers())
    zh = _player(handlers.player(final["run_id"], "zh-CN")["player"])
    assert len(zh["captions"]) == 5 and zh["captions"][0].startswith("第 1 / 5 步 · t = ")
    assert "全部 5 步" in zh["note"]


def test_the_player_is_empty_without_a_kept_run_and_made_once_per_run(tiny_registry, monkeypatch):
    handlers = tab.SamplingHandlers(Translator(), "cpu")
    assert handlers.player("", "en") == {"player": ""}
    assert handlers.player("0" * 32, "en") == {"player": ""}  # expired (or never kept): no error
    assert handlers.player("../etc", "en") == {"player": ""}
    unet, config = models.load_unet_model("mnist", "cpu")
    unrecorded = tab.RUNS.add(sample(unet, config, SampleRequest(num_inference_steps=2, batch_size=1), record=False))
    assert handlers.player(unrecorded, "en") == {"player": ""}  # kept for its numbers, but it has no frames
    monkeypatch.setattr(tab, "PLAYERS", RunPlayers())
    first = list(handlers.run("ddim", 3, 0.0, 4, 1, "2", 1.0, "en"))[-1]["run_id"]
    second = list(handlers.run("ddim", 3, 0.0, 4, 1, "2", 1.0, "en"))[-1]["run_id"]
    assert first != second and tab.RUNS.get(first) is tab.RUNS.get(second)  # one shared run, two ids
    assert handlers.player(first, "en")["player"] is handlers.player(second, "en")["player"]


def test_the_player_follows_each_run_without_changing_the_api(tiny_registry):
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    demo, _ = app.create_app(settings)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    player, run_id = by_id["sample-player"], by_id["sample-run-id"]
    fns = list(demo.fns.values())
    sample_fn = next(d for d in fns if d.api_name == "sample")
    assert [getattr(o, "elem_id", None) for o in sample_fn.outputs] == [
        "sample-status", "sample-xt", "sample-x0", "sample-eps", "sample-gallery", "sample-scrub", "sample-run-id",
        "sample-summary"]
    fills = [d for d in fns if player in d.outputs and run_id in d.inputs]
    assert all(d.api_visibility == "private" and d.trigger_only_on_success for d in fills)
    # Chained after the run and after the example the tab opens with, once each has succeeded.
    parents = [demo.fns[d.trigger_after] for d in fills]
    assert sample_fn in parents and sorted(event for p in parents for _, event in p.targets) == ["click", "load"]


def test_the_note_counts_the_steps_that_fit_under_the_byte_cap():
    from diffusion.ui.player import pack_frames

    noise = list(np.random.default_rng(0).integers(0, 256, (20, 64, 64), dtype=np.uint8))
    value = _player(pack_frames([("x_t", noise)], [f"step {i + 1}" for i in range(20)], max_bytes=60_000,
                                note=lambda n: f"{n} of 20"))
    kept = len(value["captions"])
    assert 2 <= kept < 20 and value["note"] == f"{kept} of 20"
    assert value["captions"][0] == "step 1" and value["captions"][-1] == "step 20"
