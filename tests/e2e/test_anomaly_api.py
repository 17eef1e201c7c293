"""End-to-end: lesson 7's anomaly detection through gradio_client on the real app with the shipped models.

``/anomaly_score`` with each bundled example and both scores (checked against the core run
in this process), the summary's keys, and a bad file that gets a clear message while the
server keeps serving.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from diffusion.lessons.applications.anomaly import score_picture
from diffusion.lessons.applications.outliers import EXAMPLES, example_paths, examples
from diffusion.models import registry as models

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not (models.available("mnist") and models.available(models.AUTOENCODER)),
    reason="the digit model or the digit autoencoder is not installed")]

OUT = ("picture", "reconstruction", "error_map", "histogram", "verdict", "summary")
KEYS = {"method", "score", "threshold", "is_anomaly", "percentile", "false_alarm_rate", "verdict", "best_class"}


@pytest.fixture(scope="module")
def pictures():
    return examples()


@pytest.mark.parametrize("method", ["diffusion", "autoencoder"])
def test_every_example_is_scored_like_the_core(client, pictures, method):
    for name in EXAMPLES:
        final = dict(zip(OUT, client.predict(handle_file(str(example_paths()[name])), method, "en",
                                             api_name="/anomaly_score")))
        summary = final["summary"]
        assert set(summary) >= {"score", "threshold", "is_anomaly", "percentile", "method"}
        assert set(summary) == KEYS
        expected = score_picture(pictures[name], method=method)
        assert summary == expected.summary(), name
        assert summary["is_anomaly"] == (summary["score"] > summary["threshold"])
        with Image.open(final["picture"]) as png:
            seen = np.asarray(png.convert("L"))
        np.testing.assert_array_equal(seen[::8, ::8], expected.picture)
        assert ("Anomalous" if expected.is_anomaly else "Normal") in final["verdict"]


def test_the_verdict_comes_in_chinese(client):
    final = client.predict(handle_file(str(example_paths()["noise"])), "autoencoder", "zh-CN",
                           api_name="/anomaly_score")
    assert "异常" in final[4] and final[-1]["verdict"] == "anomalous"


def test_a_bad_file_gets_a_clear_message_and_the_server_keeps_serving(client, tmp_path):
    bad = tmp_path / "digit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(AppError, match="could not be read as an image"):
        client.predict(handle_file(str(bad)), "diffusion", "en", api_name="/anomaly_score")
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 0).save(blank)
    with pytest.raises(AppError, match="空白"):
        client.predict(handle_file(str(blank)), "diffusion", "zh-CN", api_name="/anomaly_score")
    with pytest.raises(AppError, match="Score must be one of"):
        client.predict(handle_file(str(example_paths()["digit_3"])), "likelihood", "en", api_name="/anomaly_score")
    final = client.predict(handle_file(str(example_paths()["digit_7"])), "diffusion", "en", api_name="/anomaly_score")
    assert final[-1]["verdict"] == "normal" and final[-1]["best_class"] == 7
