"""End-to-end: lesson 7's data augmentation through gradio_client on the real app with the shipped digit model.

The export (a zip read back with ``zipfile``, ``csv`` and Pillow), the experiment's summary
and table, stop, and translated validation errors. Runs are small so the suite stays fast
on a 2-core CPU.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.lessons.applications.augment import ExportRequest, export_filename
from diffusion.models import registry as models

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not models.available("mnist"), reason="the digit model is not installed")]

EXPORT_OUT = ("status", "file", "gallery", "run_id", "summary")
EXPERIMENT_OUT = ("status", "table", "plot", "run_id", "summary")


def read_zip(path) -> tuple[list[dict], list[np.ndarray]]:
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        rows = list(csv.DictReader(io.StringIO(archive.read("labels.csv").decode("utf-8"))))
        assert sorted(archive.namelist()) == sorted(["labels.csv"] + [r["file"] for r in rows])
        pictures = []
        for row in rows:
            with Image.open(io.BytesIO(archive.read(row["file"]))) as png:
                assert png.format == "PNG" and png.mode == "L" and png.size == (28, 28)
                pictures.append(np.asarray(png))
    return rows, pictures


def test_the_export_downloads_a_labelled_zip_and_a_summary(client):
    args = ("7 3", 3, 1.5, "ddim", 5, 1)
    final = dict(zip(EXPORT_OUT, client.predict(*args, "en", api_name="/augment_export")))
    path = Path(final["file"])
    assert path.name == export_filename(ExportRequest(*args).validated(1000)) == "digits-37-x3-ddim5-s1.5-seed1.zip"
    rows, pictures = read_zip(path)
    assert [(r["file"], int(r["label"])) for r in rows] == [(f"{i:05d}_{d}.png", d)
                                                          for i, d in enumerate([3, 3, 3, 7, 7, 7])]
    assert all(p.max() > 100 for p in pictures)  # white digits on black, as in MNIST
    summary = final["summary"]
    json.dumps(summary, allow_nan=False)
    assert summary["count"] == 6 and isinstance(summary["seconds"], float) and summary["digits"] == "37"
    assert (summary["per_class"], summary["sampler"], summary["num_inference_steps"]) == (3, "ddim", 5)
    assert not summary["stopped"] and summary["file"] == path.name
    assert len(final["gallery"]) == 6 and final["gallery"][0]["caption"] == "digit 3 · 00000_3.png"
    again = dict(zip(EXPORT_OUT, client.predict(*args, "en", api_name="/augment_export")))
    assert read_zip(again["file"])[0] == rows  # the same settings give the same digits


def test_the_experiment_reports_both_accuracies_and_the_gain(client):
    final = dict(zip(EXPERIMENT_OUT, client.predict(5, 2, 4, "zh-CN", api_name="/augment_experiment")))
    summary = final["summary"]
    json.dumps(summary, allow_nan=False)
    real, synthetic = summary["accuracy_real_only"], summary["accuracy_with_synthetic"]
    assert 0.1 < real <= 1 and 0.1 < synthetic <= 1 and isinstance(summary["seconds"], float)
    assert (summary["k_real"], summary["n_synthetic"], summary["seed"]) == (5, 2, 4)
    assert summary["heldout_digits"] == 1000 and len(summary["real_indices"]) == 50 and not summary["stopped"]
    for curve in summary["curves"].values():
        assert len(curve["steps"]) == 10 and curve["steps"][-1] == summary["classifier_steps"]
    assert summary["curves"]["real_only"]["heldout_accuracy"][-1] == real
    assert f"{100 * real:.1f} %" in final["table"] and f"{100 * synthetic:.1f} %" in final["table"]
    assert f"**{100 * (synthetic - real):+.1f} 个百分点**" in final["table"]
    assert final["plot"] is not None and "完成" in final["status"]


def test_stop_ends_an_export_and_keeps_the_finished_classes(client):
    job = client.submit("0123456789", 100, 1.5, "ddim", 20, 7, "en", api_name="/augment_export")
    run_id = next(out[3] for out in job if out[3])  # the first answer names the run
    client.predict(run_id, api_name="/augment_export_stop")
    final = dict(zip(EXPORT_OUT, job.result()))
    summary = final["summary"]
    assert summary["stopped"] and summary["count"] < 1000 and summary["count"] % 100 == 0
    if summary["count"]:
        rows, _ = read_zip(final["file"])
        assert len(rows) == summary["count"] and "Stopped" in final["status"]
    else:
        assert final["file"] is None and "nothing to download" in final["status"]


@pytest.mark.parametrize("api, args, english, chinese", [
    ("/augment_export", ("0123456789", 0, 1.5, "ddim", 20, 0), "Digits per class must be between 1 and 100",
     "每类数字数 必须在 1 到 100 之间"),
    ("/augment_export", ("abc", 10, 1.5, "ddim", 20, 0), "Classes must be distinct digits 0–9", "类别必须是互不重复的数字"),
    ("/augment_export", ("01", 10, 1.5, "ddim", 20, -3), "Random seed must be between", "随机种子 必须在"),
    ("/augment_experiment", (0, 10, 0), "Real digits per class (k) must be between 1 and 100",
     "每类真实数字数（k） 必须在 1 到 100 之间"),
    ("/augment_experiment", (5, 51, 0), "Generated digits per class (n) must be between 0 and 50",
     "每类生成数字数（n） 必须在 0 到 50 之间"),
])
def test_bad_input_is_refused_in_the_caller_s_language(client, api, args, english, chinese):
    for lang, expected in (("en", english), ("zh-CN", chinese)):
        with pytest.raises(AppError) as error:
            client.predict(*args, lang, api_name=api)
        assert expected in str(error.value)
