"""Lesson 7's anomaly-detection section without a browser: the handlers, uploads, drawings and errors.

References are independent of the handlers: each verdict is :func:`score_picture` run
directly on the example's pixels; pictures are read back with Pillow.
"""

from __future__ import annotations

import io

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from diffusion.lessons.applications.anomaly import score_picture
from diffusion.lessons.applications.outliers import EXAMPLES, example_paths, examples
from diffusion.models import registry as models
from diffusion.serving.jobs import JobQueue
from diffusion.ui.applications import anomaly as section
from diffusion.ui.i18n import Translator

pytestmark = pytest.mark.skipif(not (models.available("mnist") and models.available(models.AUTOENCODER)),
                                reason="the digit model or the digit autoencoder is not installed")
KEYS = {"method", "score", "threshold", "is_anomaly", "percentile", "false_alarm_rate", "verdict", "best_class"}


@pytest.fixture(scope="module")
def tr():
    return Translator()


@pytest.fixture(scope="module")
def handlers(tr):
    return section.AnomalyHandlers(tr, "cpu", JobQueue())


@pytest.fixture(scope="module")
def pictures():
    return examples()


@pytest.mark.parametrize("method", ["diffusion", "autoencoder"])
@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_gets_the_cores_verdict(handlers, pictures, name, method):
    out = handlers.score(str(example_paths()[name]), method, "en")
    expected = score_picture(pictures[name], method=method)
    assert set(out["summary"]) == KEYS
    assert out["summary"] == expected.summary()
    word = "Anomalous" if expected.is_anomaly else "Normal"
    assert out["verdict"].startswith(f"**{word}:")
    assert f"{expected.percentile:.1f} %" in out["verdict"]
    assert out["picture"].shape == (224, 224) and out["reconstruction"].shape == (224, 224)
    assert out["error_map"].shape == (224, 224, 3)
    np.testing.assert_array_equal(out["picture"][::8, ::8], expected.picture)


def test_the_chinese_verdict_is_translated(handlers):
    out = handlers.score(str(example_paths()["noise"]), "diffusion", "zh-CN")
    assert out["verdict"].startswith("**异常") and "真实数字" in out["verdict"]


def sketch_png() -> bytes:
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 0))  # a transparent canvas with a black stroke, like the browser's
    ImageDraw.Draw(image).line([(140, 40), (140, 240)], fill=(0, 0, 0, 255), width=18)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_drawn_sketch_is_read(handlers, tmp_path):
    png = sketch_png()
    picture = section.read_drawing({"composite": png})
    assert picture.shape == (256, 256, 3) and picture[0, 0].tolist() == [255, 255, 255]  # flattened on white
    assert picture[128, 128].tolist() == [0, 0, 0]  # the stroke, scaled to the long side of 256
    out = handlers.score_drawing({"composite": png, "layers": [], "background": None}, "diffusion", "en")
    assert out["summary"] == score_picture(picture, method="diffusion").summary()
    seen = out["picture"][::8, ::8]
    assert seen.max() > 200 and seen[0, 0] == 0  # white ink on black, as the model sees digits
    path = tmp_path / "drawing.png"
    path.write_bytes(png)
    assert handlers.score_drawing({"composite": str(path)}, "autoencoder", "en")["summary"] == \
        score_picture(picture, method="autoencoder").summary()


def test_the_drawing_input_passes_the_composite_unopened(tmp_path):
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    path = tmp_path / "x.png"
    path.write_bytes(b"not a picture")
    canvas = section.DrawingInput()
    assert canvas.get_block_name() == "imageeditor"
    assert canvas.preprocess(EditorData(composite=FileData(path=str(path)))) == {"composite": str(path)}
    assert canvas.preprocess(None) is None


def test_an_uploaded_file_is_scored(handlers, tmp_path):
    path = tmp_path / "seven.jpg"
    Image.open(example_paths()["digit_7"]).convert("RGB").resize((112, 112)).save(path, quality=95)
    out = handlers.score(str(path), "autoencoder", "en")
    expected = score_picture(np.asarray(Image.open(path).convert("RGB")), method="autoencoder")
    assert out["summary"]["verdict"] == expected.verdict
    assert out["summary"]["score"] == pytest.approx(expected.score, abs=1e-6)


@pytest.mark.parametrize("lang, words", [("en", {
    "missing": "upload an image", "unreadable": "could not be read", "small": "too small", "blank": "blank",
    "method": "Score must be one of"}), ("zh-CN", {
    "missing": "请上传", "unreadable": "无法", "small": "太小", "blank": "空白", "method": "打分方法"})])
def test_bad_files_are_refused_in_the_students_language(tr, handlers, tmp_path, lang, words):
    score = section.guarded(tr, section.SCOPE)(handlers.score)
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (4, 4), 0).save(tiny)
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 255).save(blank)
    cases = {"missing": (None, "diffusion"), "unreadable": (str(text), "diffusion"),
             "small": (str(tiny), "diffusion"), "blank": (str(blank), "autoencoder"),
             "method": (str(example_paths()["digit_3"]), "pixels")}
    for case, (image, method) in cases.items():
        with pytest.raises(gr.Error) as caught:
            score(image, method, lang)
        assert words[case] in str(caught.value.message), (case, caught.value.message)
    with pytest.raises(gr.Error) as caught:
        section.guarded(tr, section.SCOPE)(handlers.score)(str(tmp_path / "nowhere.png"), "diffusion", lang)
    assert words["unreadable"] in caught.value.message
    drawing = section.guarded(tr, section.SCOPE)(handlers.score_drawing)
    with pytest.raises(gr.Error) as caught:
        drawing({"composite": b"\x89PNG garbage"}, "diffusion", lang)
    assert words["unreadable"] in caught.value.message
    with pytest.raises(gr.Error) as caught:
        drawing({"composite": None}, "diffusion", lang)
    assert words["missing"] in caught.value.message


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_histogram_has_labelled_axes(tr, pictures, lang):
    result = score_picture(pictures["cjk"], method="diffusion")
    text = tr.table(section.P + "plot.", lang)
    figure = section.histogram_figure(result, text)
    axes = figure.axes[0]
    assert axes.get_xlabel() == text["x_diffusion"] and axes.get_ylabel() == text["y"]
    assert sum(p.get_height() for p in axes.patches) == len(result.reference) == 1000
    lines = {round(float(line.get_xdata()[0]), 6) for line in axes.get_lines()}
    assert lines == {round(result.threshold, 6), round(result.score, 6)}
    labels = [t.get_text() for t in axes.get_legend().get_texts()]
    assert any(f"{100 * result.false_alarm_rate:g}" in label for label in labels)


def test_the_opening_example_is_scored_and_says_so(tr, handlers, pictures):
    out = handlers.example("en")
    assert out["summary"] == score_picture(pictures[section.START_EXAMPLE], method="diffusion").summary()
    assert tr.text("example.shown", "en") in out["verdict"]


def test_the_measured_table_matches_the_model_card():
    card = (section.__file__.rsplit("/diffusion/", 1)[0] + "/assets/models/digit-autoencoder/README.md")
    text = open(card, encoding="utf-8").read()
    for name, count, diffusion, autoencoder, error_only in section.MEASURED:
        assert f"| {name} | {count} | {diffusion:.3f} | {autoencoder:.3f} | {error_only:.3f} |" in text
