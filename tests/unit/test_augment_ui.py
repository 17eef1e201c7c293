"""Lesson 7's data-augmentation section without a browser: the handlers, their zip files, stop and errors.

References are independent of the handlers: zips are read back with ``zipfile``, ``csv``
and Pillow; the digits and accuracies are the core's own functions run directly in this
process; a ZeroGPU-like process boundary (the ``spaces`` test double) must give the same
results as the calls made here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffusion.errors import InputError
from diffusion.lessons.applications import augment_calls as calls
from diffusion.lessons.applications.augment import (
    ExperimentRequest, ExportRequest, export_filename, generate_dataset, run_experiment,
)
from diffusion.lessons.applications.augment_figures import TEXT
from diffusion.lessons.applications.classifier import TrainSettings, model_split
from diffusion.models import registry as models
from diffusion.serving import gpu
from diffusion.serving.jobs import JobQueue
from diffusion.ui.applications import augment as section
from diffusion.ui.applications import augment_handlers as tab
from diffusion.ui.i18n import Translator, load_locales
from tests.unit.test_sampling import tiny_unet

FAST = TrainSettings(steps=4, batch_size=8, rounds=2)
SMALL = ("73", 3, 1.5, "ddim", 4, 5)  # digits, per class, guidance, sampler, steps, seed


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same sums in the same order in every thread and process
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tr():
    return Translator()


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path):
    """The registry's "mnist" model replaced by a tiny random one saved in a temp folder."""
    folder = tmp_path / "mnist-ddpm"
    tiny_unet().save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler().save_pretrained(folder / "scheduler")
    spec = models.MODELS["mnist"]
    monkeypatch.setitem(models.MODELS, "mnist", models.ModelSpec(
        path=folder, kind=spec.kind, title=spec.title, image_size=spec.image_size,
        in_channels=spec.in_channels, num_class_embeds=spec.num_class_embeds))
    models.clear_cache()
    yield folder
    models.clear_cache()


@pytest.fixture
def handlers(tr, tiny_registry, tmp_path):
    return tab.AugmentHandlers(tr, "cpu", JobQueue(), train=FAST, zips=tab.ZipFiles(4))




def core_export(handlers, *fields) -> object:
    unet, config = models.load_unet_model("mnist", "cpu")
    digits, per_class, guidance, sampler, steps, seed = fields
    request = ExportRequest(digits, per_class, guidance, sampler, steps, seed)
    return generate_dataset(unet, config, request, precision=handlers.precision)


def read_zip(path) -> tuple[list[dict], np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode("utf-8"))))
        assert sorted(archive.namelist()) == sorted(["labels.csv"] + [r["file"] for r in rows])
        images = [np.asarray(Image.open(io.BytesIO(archive.read(r["file"])))) for r in rows]
    return rows, np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)


# --- export -------------------------------------------------------------------------------------

def test_the_export_serves_a_zip_of_exactly_the_core_s_digits(tr, handlers):
    answers = list(tab.translated(tr, handlers.export)(*SMALL, "en"))
    final = answers[-1]
    assert set(final) == {"status", "file", "gallery", "run_id", "summary"}
    assert all(set(a) <= set(final) for a in answers)  # no answer names an output the event lacks
    expected = core_export(handlers, *SMALL)
    file = Path(final["file"])
    assert file.name == export_filename(ExportRequest(*SMALL).validated(1000)) == "digits-37-x3-ddim4-s1.5-seed5.zip"
    assert file.parent.parent == handlers.zips.folder()  # written by the server, in its own folder
    rows, images = read_zip(file)
    assert [r["file"] for r in rows] == [f"{i:05d}_{d}.png" for i, d in enumerate([3, 3, 3, 7, 7, 7])]
    np.testing.assert_array_equal([int(r["label"]) for r in rows], expected.labels)
    np.testing.assert_array_equal(images, expected.images)
    summary = final["summary"]
    assert summary["count"] == 6 and isinstance(summary["seconds"], float) and summary["digits"] == "37"
    assert summary["stopped"] is False and summary["file"] == file.name and summary["digits_kept"] == "37"
    json.dumps(summary)  # JSON-safe
    assert [caption for _, caption in final["gallery"]] == [f"digit {r['label']} · {r['file']}" for r in rows]
    assert "6 digits generated" in final["status"] and file.name in final["status"]


def test_the_preview_shows_the_first_digits_of_each_class(tr, handlers):
    final = list(tab.translated(tr, handlers.export)("50", 5, 0.0, "ddim", 2, 1, "zh-CN"))[-1]
    captions = [caption for _, caption in final["gallery"]]
    assert captions == [f"数字 {d} · {i:05d}_{d}.png" for i, d in [(0, 0), (1, 0), (2, 0), (5, 5), (6, 5), (7, 5)]]
    rows, images = read_zip(final["file"])
    np.testing.assert_array_equal(np.stack([image for image, _ in final["gallery"]]), images[[0, 1, 2, 5, 6, 7]])
    assert "已生成 10 个数字" in final["status"]


def test_an_identical_export_is_computed_once(tr, handlers):
    first = list(tab.translated(tr, handlers.export)(*SMALL, "en"))[-1]
    again = list(tab.translated(tr, handlers.export)(*SMALL, "en"))[-1]
    assert handlers.jobs.runs == 1 and again["summary"]["shared"] and not first["summary"]["shared"]
    assert again["file"] == first["file"]


def test_the_progress_line_counts_digits_done(tr, handlers):
    asked = ExportRequest(*SMALL).validated(1000)  # the handler shows the validated request: digits "37"
    update = calls.Update(step=5, progress=calls.Progress("generate", 5, 8), elapsed=0.1)
    status = handlers._export_progress(asked, update, "en")["status"]
    assert "Generating digit 7 (class 2 of 2), step 1 of 4 · 3 of 6 digits done" in status
    assert 'aria-valuenow="62"' in status


def test_zip_files_are_bounded_and_written_again_when_deleted(tr, handlers):
    store = tab.ZipFiles(2)
    sets = [core_export(handlers, str(d), 1, 1.0, "ddim", 2, 0) for d in range(3)]
    paths = [store.path(i, s, export_filename(s.request)) for i, s in enumerate(sets)]
    assert not Path(paths[0]).exists() and not Path(paths[0]).parent.exists()  # the oldest was dropped
    assert all(Path(p).exists() for p in paths[1:])
    Path(paths[2]).unlink()
    again = store.path(2, sets[2], export_filename(sets[2].request))
    np.testing.assert_array_equal(read_zip(again)[1], sets[2].images)


def test_export_call_streams_each_finished_class_and_stops_as_the_core_does(handlers):
    request = ExportRequest("0123", 2, 1.5, "ddim", 3, 4).validated(1000)
    seen = []
    stopped = calls.export_call(request=request, device="cpu", precision=handlers.precision, callback=seen.append,
                                stop=lambda: any(u.images is not None for u in seen))
    full = core_export(handlers, "0123", 2, 1.5, "ddim", 3, 4)
    assert stopped.stopped and stopped.labels.tolist() == [0, 0]  # class 1 was being sampled: dropped
    np.testing.assert_array_equal(stopped.images, full.images[:2])
    assert [u.step for u in seen] == list(range(1, len(seen) + 1))
    assert [u.progress.done for u in seen] == [1, 2, 3, 3, 4] and {u.progress.total for u in seen} == {12}
    complete = calls.export_call(request=request, device="cpu", precision=handlers.precision)
    np.testing.assert_array_equal(complete.images, full.images)
    np.testing.assert_array_equal(complete.labels, full.labels)
    assert not complete.stopped


# --- experiment ---------------------------------------------------------------------------------

def test_the_experiment_shows_the_core_s_accuracies_side_by_side(tr, handlers):
    answers = list(tab.translated(tr, handlers.experiment)(5, 2, 3, "zh-CN"))
    final = answers[-1]
    assert set(final) == {"status", "table", "plot", "run_id", "summary"}
    assert all(set(a) <= set(final) for a in answers)
    unet, config = models.load_unet_model("mnist", "cpu")
    core = run_experiment(unet, config, ExperimentRequest(5, 2, 3), settings=FAST, precision=handlers.precision)
    summary = final["summary"]
    assert summary["accuracy_real_only"] == round(core.accuracy_real_only, 4)
    assert summary["accuracy_with_synthetic"] == round(core.accuracy_with_synthetic, 4)
    assert summary["curves"] == {"real_only": core.real_only.to_dict(), "with_synthetic": core.with_synthetic.to_dict()}
    assert isinstance(summary["seconds"], float) and summary["guidance_scale"] == 1.0
    assert summary["heldout_digits"] == 1000
    table = final["table"]
    gain = 100 * (core.accuracy_with_synthetic - core.accuracy_real_only)
    assert f"**{gain:+.1f} 个百分点**" in table  # the gain shown is the difference of the two accuracies
    assert f"| {100 * core.accuracy_real_only:.1f} % | {100 * core.accuracy_with_synthetic:.1f} % |" in table
    assert "| 50 (5) | 70 (5 + 2) |" in table and "k = 5 时 5 个种子的结果" in table
    assert "+10.4 ± 2.1 个百分点（有帮助）；每类 50 个生成数字时" in table  # the measured rows, in Chinese
    assert "完成" in final["status"] and final["plot"] is not None


def test_the_experiment_without_generated_digits_trains_one_classifier(tr, handlers):
    summary = list(tab.translated(tr, handlers.experiment)(7, 0, 1, "en"))[-1]["summary"]
    assert summary["accuracy_real_only"] == summary["accuracy_with_synthetic"] and summary["gain"] == 0
    assert len(summary["real_indices"]) == 70


def test_stop_before_the_run_starts_still_reaches_it(tr, handlers):
    stream = tab.translated(tr, handlers.export)("0123456789", 50, 1.5, "ddim", 50, 0, "en")
    first = next(stream)
    tab.AugmentHandlers.stop(first["run_id"])  # pressed while the run is being queued
    final = list(stream)[-1]
    assert final["summary"]["stopped"] and final["summary"]["count"] == 0 and final["file"] is None
    assert "nothing to download" in final["status"] and final["gallery"] == []
    stream = tab.translated(tr, handlers.experiment)(5, 20, 0, "zh-CN")
    tab.AugmentHandlers.stop(next(stream)["run_id"])
    final = list(stream)[-1]
    summary = final["summary"]
    assert summary["stopped"] and summary["accuracy_real_only"] is None and summary["gain"] is None
    assert "还没有训练任何分类器" in final["status"] and "| – | – |" in final["table"]


def test_a_client_has_at_most_its_share_of_jobs(tr, tiny_registry):
    jobs = JobQueue(per_client=1)
    handlers = tab.AugmentHandlers(tr, "cpu", jobs, train=FAST)
    gate = threading.Event()
    blocker = jobs.submit("other", lambda callback, stop: gate.wait(30), client="a")
    try:
        with pytest.raises(InputError) as error:
            handlers.submit_export(ExportRequest(*SMALL), "a")
        assert error.value.code == "too_many_jobs"
        with pytest.raises(InputError):
            handlers.submit_experiment(ExperimentRequest(), "a")
    finally:
        gate.set()
        list(blocker.updates())
        blocker.close()


# --- errors ---------------------------------------------------------------------------------------

EXPORT_ERRORS = [  # (arguments, English message start, Chinese message start)
    (("11", 3, 1.5, "ddim", 4, 0), "Classes must be distinct digits 0–9, e.g. 0123456789 (got 11).", "类别必须是互不重复的数字"),
    (("0123456789", 101, 1.5, "ddim", 4, 0), "Digits per class must be between 1 and 100 (got 101).",
     "每类数字数 必须在 1 到 100 之间（当前为 101）"),
    (("01", 2, float("nan"), "ddim", 4, 0), "Guidance scale must be a number.", "引导强度 必须是一个数"),
    (("01", 2, 1.5, "heun", 4, 0), "Sampler must be one of: ddpm, ddim, euler_ancestral, dpm_solver (got heun).",
     "采样器 必须是以下之一"),
    (("01", 2, 1.5, "ddim", 4, "12abc"), "Random seed must be a number.", "随机种子 必须是一个数"),
    (("0123456789", 100, 1.5, "ddim", 1000, 0), "1000 digits with 1000 steps are too much work for one export",
     "1000 个数字、每个 1000 步"),
]
EXPERIMENT_ERRORS = [
    ((0, 10, 0), "Real digits per class (k) must be between 1 and 100 (got 0).", "每类真实数字数（k） 必须在 1 到 100 之间"),
    ((5.5, 10, 0), "Real digits per class (k) must be a whole number.", "每类真实数字数（k） 必须是整数"),
    ((5, 51, 0), "Generated digits per class (n) must be between 0 and 50 (got 51).", "每类生成数字数（n） 必须在 0 到 50 之间"),
    ((5, [1, 2], 0), "Generated digits per class (n) must be a number.", "每类生成数字数（n） 必须是一个数"),
    ((5, 10, -1), "Random seed must be between 0 and 4294967295 (got -1).", "随机种子 必须在 0 到 4294967295 之间"),
]


@pytest.mark.parametrize("args, english, chinese", EXPORT_ERRORS + EXPERIMENT_ERRORS)
def test_bad_input_gets_a_message_in_the_caller_s_language_and_queues_nothing(tr, handlers, args, english, chinese):
    handler = handlers.export if len(args) == 6 else handlers.experiment
    for lang, expected in (("en", english), ("zh-CN", chinese)):
        with pytest.raises(gr.Error) as error:
            list(tab.translated(tr, handler)(*args, lang))
        assert error.value.message.startswith(expected), error.value.message
    assert handlers.jobs.runs == 0 and handlers.jobs.queued() == 0


# --- across a ZeroGPU-like process boundary -------------------------------------------------------

def test_export_and_experiment_through_a_gpu_process_equal_the_calls_made_here(handlers, spaces):
    export = {"request": ExportRequest("0123", 2, 1.5, "ddim", 3, 4).validated(1000), "device": "cpu",
              "precision": handlers.precision}
    remote = gpu.execute(gpu.GpuWork(calls.export_call, export, gpu_s=calls.gpu_seconds(export["request"]),
                                     partial=calls.rebuilt_export), None, lambda: False)
    local = calls.export_call(**export)
    np.testing.assert_array_equal(remote.images, local.images)
    np.testing.assert_array_equal(remote.labels, local.labels)
    assert not remote.stopped and spaces.calls[-1]["pid"] != os.getpid()
    seen = []
    stopped = gpu.execute(gpu.GpuWork(calls.export_call, export, partial=calls.rebuilt_export), seen.append,
                          lambda: len([u for u in seen if u.images is not None]) >= 2)
    assert spaces.calls[-1]["stopped"] and stopped.stopped  # rebuilt here from the two classes streamed
    np.testing.assert_array_equal(stopped.images, local.images[:4])
    np.testing.assert_array_equal(stopped.labels, [0, 0, 1, 1])

    request = ExperimentRequest(5, 2, 3)
    kwargs = {"request": request.validated(), "device": "cpu", "precision": handlers.precision, "settings": FAST}
    work = gpu.GpuWork(calls.experiment_call, kwargs, gpu_s=calls.gpu_seconds(request, FAST),
                       partial=calls.rebuilt_experiment)
    remote, local = gpu.execute(work, None, lambda: False), calls.experiment_call(**kwargs)
    timeless = lambda summary: {k: v for k, v in summary.items() if "seconds" not in k}  # noqa: E731
    assert timeless(remote.summary()) == timeless(local.summary()) and not remote.stopped
    seen, local_seen = [], []
    in_training = lambda records: lambda: any(u.progress.phase == "train" for u in records)  # noqa: E731
    remote = gpu.execute(work, seen.append, in_training(seen))
    local = calls.experiment_call(**kwargs, callback=local_seen.append, stop=in_training(local_seen))
    assert remote.stopped and local.stopped and len(remote.real_only.steps) == 1
    assert remote.real_only.to_dict() == local.real_only.to_dict()
    assert remote.with_synthetic.to_dict() == local.with_synthetic.to_dict()
    np.testing.assert_array_equal(remote.real_indices, local.real_indices)


def test_gpu_durations_follow_the_work_within_bounds():
    small, big = ExportRequest("0", 1, 1.0, "ddim", 5), ExportRequest("0123456789", 100, 1.5, "ddim", 50)
    assert 0 < calls.gpu_seconds(small) < calls.gpu_seconds(big)
    assert gpu.duration_s(gpu.GpuWork(calls.export_call, gpu_s=calls.gpu_seconds(big))) <= gpu.MAX_DURATION_S
    cap = ExperimentRequest(50, 50, 0)
    assert calls.gpu_seconds(ExperimentRequest(5, 0)) < calls.gpu_seconds(cap)
    assert calls.cpu_seconds(cap) < 40  # the tab's cap stays a short run


# --- text -----------------------------------------------------------------------------------------

def test_both_languages_show_the_same_measured_numbers(tr):
    english, chinese = tab.measured_markdown(tr, "en"), tab.measured_markdown(tr, "zh-CN")

    def table(text: str) -> list[str]:  # the rows under the header
        return [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]

    def numbers(lines: list[str]) -> list[list[str]]:
        return [re.findall(r"[-+]?\d+\.?\d*", line) for line in lines]

    assert numbers(table(english)) == numbers(table(chinese)) and len(table(english)) == len(tab.MEASURED)
    for (k, n, mean, std, gain, gain_std, verdict), line in zip(tab.MEASURED, table(chinese)):
        assert line.startswith(f"| {k} | {n} | {mean:.1f} ± {std:.1f} |")
        assert tr.text(f"applications.augment.verdict.{verdict}", "zh-CN") in line
        base = next(r for r in tab.MEASURED if r[0] == k and r[1] == 0)
        if gain is not None:  # a paired mean difference is the difference of the means (to rounding)
            assert abs(gain - (mean - base[2])) <= 0.1 + 1e-9, (k, n)
            assert verdict == ("helps" if gain - 2.776 * gain_std / 5 ** 0.5 > 0 else "none"), (k, n)
    spread = [r[5] for r in tab.MEASURED if r[5] is not None]
    assert f"{min(spread):.1f} to {max(spread):.1f} points" in tr.text("applications.augment.table.one_seed", "en")
    assert f"{min(spread):.1f} 到 {max(spread):.1f} 个百分点" in tr.text("applications.augment.table.one_seed", "zh-CN")


def test_the_section_s_strings_exist_in_both_languages_and_the_plot_text_is_the_figure_s_own(tr):
    tables = load_locales()
    mine = {k for k in tables["en"] if k.startswith("applications.augment.")}
    assert mine == {k for k in tables["zh-CN"] if k.startswith("applications.augment.")} and len(mine) > 50
    assert {k[len("applications.augment.plot."):]: v for k, v in tables["en"].items()
            if k.startswith("applications.augment.plot.")} == TEXT


def test_the_explanation_shows_the_numbers_the_code_uses(tr):
    settings, experiment = TrainSettings(), ExperimentRequest()
    for lang in ("en", "zh-CN"):
        intro = tr.text("applications.augment.intro", lang)
        assert f"m = 0, \\dots, {settings.steps - 1}$$" in intro and f"\\frac{{1}}{{{settings.batch_size}}}" in intro
        assert f" {settings.batch_size} " in intro and settings.learning_rate == 1e-3 and "10^{-3}" in intro
        assert f"s = {experiment.guidance_scale:g}$" in intro
        assert f"{experiment.export_request().num_inference_steps}" in intro and "DDIM" in intro
        assert f"\\sum_{{i=1}}^{{{len(model_split().heldout_idx)}}}" in intro
        snippet = tr.text("applications.augment.export_intro", lang)
        assert export_filename(section.EXPORT.validated(1000)) in snippet


def test_the_section_is_laid_out_with_its_stable_endpoints(tr, tiny_registry):
    from diffusion.ui.settings import AppSettings

    settings = AppSettings()
    with gr.Blocks() as demo:
        section.build_augment(tr, settings, demo)
    by_name = {d.api_name: d for d in demo.fns.values() if d.api_name}
    ids = lambda blocks: [getattr(b, "elem_id", None) for b in blocks]  # noqa: E731
    assert ids(by_name["augment_export"].inputs) == ["augment-digits", "augment-per-class", "augment-guidance",
                                                      "augment-sampler", "augment-steps", "augment-export-seed", None]
    assert ids(by_name["augment_export"].outputs) == ["augment-export-status", "augment-file", "augment-gallery",
                                                       "augment-export-id", "augment-export-summary"]
    assert ids(by_name["augment_experiment"].inputs) == ["augment-k", "augment-n", "augment-seed", None]
    assert ids(by_name["augment_experiment"].outputs) == ["augment-status", "augment-table", "augment-plot",
                                                           "augment-run-id", "augment-summary"]
    for name in ("augment_export", "augment_experiment"):
        assert by_name[name].concurrency_id == "model"  # waits on the one job queue
    assert by_name["augment_export_stop"].queue is False and by_name["augment_experiment_stop"].queue is False
    assert len(settings.examples) == 1  # the opening experiment, computed once at start-up
    radio = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "augment-k")
    assert radio.preprocess(7) == 7  # the core, not gradio's English-only check, judges the value
