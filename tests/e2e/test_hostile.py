"""Hostile input against every endpoint, through the real API of the running app.

Each case ends in either a valid result or a clear message (never an empty error, a
stack trace or the catch-all "something went wrong"), and the server answers a normal
request afterwards. Numbers that JSON cannot carry (NaN, ±inf) and files the server
never received are sent as raw HTTP requests, the way an attacker would.
"""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffusion.models import registry as models
from diffusion.examples import list_examples

pytestmark = pytest.mark.e2e

GENERIC = "Something went wrong"
EXAMPLE = str(next(p for p in list_examples() if p.name == "coffee.png"))
HEAT = ["spike", "exp(-(x-50)**2/20)", 0.1, 100.0, 400, 20.0, 2000, "ftcs", "dirichlet", 1, 0, "en"]
NOISE = [None, "linear", 1000, 300, 0, "en"]
SAMPLE = ["ddim", 5, 0.0, 0, 2, "3", 2.0, "en"]
DENOISE = [None, 25, 0, ["diffusion_one_step", "gaussian_heat"], 0, 4, 0.0, "opponent", 96, 50, 50, 32, "en"]
T2I = ["a red circle", "", 4, 5.0, 0, "ddim", 0, 0, 1, "embedded", None, 0.6, "en"]
T2I_COMPARE = ["a red circle", "a blue square", "", 4, 2.0, 0, "ddim", 0, 0, "embedded", "en"]
T2I_SWEEP = ["a red circle", "", 3, 0, "ddim", 0, 0, "embedded", "en"]
LAB_TRAIN = ["moons", 200, 0, 100, 32, 2, 0.003, "linear", "扩散", "en"]
LAB_SAMPLE = ["0" * 32, "ddim", 20, 0.0, 200, 0, "en"]
AUG_EXPORT = ["07", 2, 1.5, "ddim", 5, 0, "en"]
AUG_EXPERIMENT = [5, 0, 0, "en"]
ANOMALY = [None, "diffusion", "en"]
INK = "0" * 140 + ("0" * 12 + "f" * 4 + "0" * 12) * 18 + "0" * 140  # a "1" painted on the 28×28 grid
HOLE = "f" * 392 + "0" * 392  # the top half, painted
INPAINT = ["heldout", 300, None, "", "top", "", "any", 1.5, 2, 0, 3, 2, "ddpm", "en"]
INPAINT_DRAWN = ["drawing", 300, None, INK, "drawn", HOLE, "any", 1.5, 2, 0, 3, 2, "ddpm", "en"]
SUPERRES = ["heldout", 300, None, "", 4, False, "any", 1.5, 2, 0, 4, 1.0, "ddnm_box", "en"]
SUPERRES_DRAWN = ["drawing", 300, None, INK, 4, False, "any", 1.5, 2, 0, 4, 1.0, "ddnm_box", "en"]
FILE_ENDPOINTS = {"forward_noise": (NOISE, 0), "denoise": (DENOISE, 0), "text_to_image": (T2I, 10),
                  "inpaint": (["upload", *INPAINT[1:]], 2), "super_resolve": (["upload", *SUPERRES[1:]], 2),
                  "anomaly_score": (ANOMALY, 0)}
TRIED = {"cases": 0}


def raw(url: str, api: str, body: str) -> tuple[str, str]:
    """POST a raw JSON body to ``/gradio_api/call/<api>``; return ("complete" | "error" | "http NNN", text)."""
    TRIED["cases"] += 1
    response = httpx.post(f"{url}gradio_api/call/{api}", content=body,
                          headers={"content-type": "application/json"}, timeout=60)
    if response.status_code != 200:
        return f"http {response.status_code}", response.text[:300]
    event_id = response.json()["event_id"]
    text = httpx.get(f"{url}gradio_api/call/{api}/{event_id}", timeout=300).text
    events = [line[7:].strip() for line in text.splitlines() if line.startswith("event:")]
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return events[-1], data[-1] if data else ""


def assert_clear(outcome: tuple[str, str]) -> None:
    """A valid result, an HTTP 4xx, or an error with a message a person can read."""
    kind, text = outcome
    if kind == "complete":
        return
    if kind.startswith("http"):
        assert kind.startswith("http 4"), outcome
        return
    assert kind == "error", outcome
    message = json.loads(text).get("error") if text.startswith("{") else text
    assert message and GENERIC not in message and "Traceback" not in message, outcome


def server_still_answers(url: str) -> None:
    kind, text = raw(url, "heat_simulate", json.dumps({"data": HEAT}))
    assert kind == "complete", text


def with_value(base: list, index: int, value) -> str:
    data = list(base)
    data[index] = value
    return json.dumps({"data": data}, allow_nan=True)  # NaN and Infinity as bare tokens, as a raw client could


def upload(url: str, path: str) -> dict:
    with open(path, "rb") as handle:
        response = httpx.post(f"{url}gradio_api/upload", files={"files": (path.rsplit("/", 1)[-1], handle)},
                              timeout=60)
    return {"path": response.json()[0], "meta": {"_type": "gradio.FileData"}}


BAD_NUMBERS = [float("nan"), float("inf"), -float("inf"), -1, -1e308, 1e308, 10**30, 0, "12abc", True, None,
               [1, 2], {"x": 1}]
NUMERIC = {  # endpoint → (base arguments, indices of its numeric parameters)
    "heat_simulate": (HEAT, [2, 3, 4, 5, 6, 9, 10]),
    "heat_kernel": ([0.1, 20.0, 100.0, "en"], [0, 1, 2]),
    "sample": (SAMPLE, [1, 2, 3, 4, 6]),
    "text_to_image": (T2I, [2, 3, 4, 6, 7, 8, 11]),
    "text_to_image_compare": (T2I_COMPARE, [3, 4, 5, 7, 8]),
    "text_to_image_guidance_sweep": (T2I_SWEEP, [2, 3, 5, 6]),
    "lab2d_train": (LAB_TRAIN, [1, 2, 3, 4, 5, 6]),
    "inpaint": (INPAINT, [1, 7, 8, 9, 10, 11]),
    "super_resolve": (SUPERRES, [1, 4, 5, 7, 8, 9, 10, 11]),
    "augment_export": (AUG_EXPORT, [1, 2, 4, 5]),
    "augment_experiment": (AUG_EXPERIMENT, [0, 1, 2]),
}


@pytest.mark.parametrize("api", sorted(NUMERIC))
def test_bad_numbers_everywhere(app_server, api):
    base, indices = NUMERIC[api]
    if api.startswith("text_to_image") and not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    for index in indices:
        for value in BAD_NUMBERS:
            assert_clear(raw(app_server, api, with_value(base, index, value)))
    server_still_answers(app_server)


@pytest.mark.parametrize("api", sorted(FILE_ENDPOINTS))
def test_bad_numbers_with_a_real_picture(app_server, api):
    base, file_index = FILE_ENDPOINTS[api]
    if api == "text_to_image" and not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    if api == "denoise" and not models.denoiser_available():
        pytest.skip("the denoiser is not installed")
    base = list(base)
    base[file_index] = upload(app_server, EXAMPLE)
    numeric = [i for i, v in enumerate(base) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for index in numeric:
        for value in (float("nan"), float("inf"), -5, 1e12, "x"):
            assert_clear(raw(app_server, api, with_value(base, index, value)))
    server_still_answers(app_server)


STRINGS = ["", " ", "x" * 200_000, "\u202e\u0644\u0627 RTL", "e\u0301\u200d\ud83e\udd16", "\x00\x01\x1b[31m", "\ud800",
           "null", "'; DROP TABLE x; --", "{{7*7}}", "${jndi:ldap://x}", "../../etc/passwd", "/etc/passwd",
           "C:\\Windows\\win.ini", "file:///etc/passwd", "https://example.com/x.png"]
TEXT_PARAMS = {  # endpoint → (base arguments, indices of its text and choice parameters)
    "heat_simulate": (HEAT, [0, 1, 7, 8, 11]),
    "heat_kernel": ([0.1, 20.0, 100.0, "en"], [3]),
    "sample": (SAMPLE, [0, 5, 7]),
    "sample_scrub": (["0" * 32, 1, "en"], [0, 2]),
    "sample_gif": (["0" * 32, "en"], [0, 1]),
    "sample_stop": (["0" * 32], [0]),
    "text_to_image": (T2I, [0, 1, 5, 9, 12]),
    "text_to_image_scrub": (["0" * 32, 1, "en"], [0, 2]),
    "text_to_image_stop": (["0" * 32], [0]),
    "text_to_image_compare": (T2I_COMPARE, [0, 1, 2, 6, 9, 10]),
    "text_to_image_compare_scrub": (["0" * 32 + "," + "1" * 32, 1, "en"], [0, 2]),
    "text_to_image_compare_stop": (["0" * 32], [0]),
    "text_to_image_guidance_sweep": (T2I_SWEEP, [0, 1, 4, 7, 8]),
    "text_to_image_guidance_sweep_stop": (["0" * 32], [0]),
    "text_to_image_attention": (["0" * 32, 0, "en"], [0, 2]),
    "text_to_image_path": (["0" * 32, 0, "en"], [0, 2]),
    "denoise_zoom": (["0" * 32, 50, 50, 32, "en"], [0, 4]),
    "lab2d_train": (LAB_TRAIN, [0, 7, 8, 9]),
    "lab2d_sample": (LAB_SAMPLE, [0, 1, 6]),
    "lab2d_continue": (["0" * 32, 100, "en"], [0, 2]),
    "lab2d_field": (["0" * 32, 100, "en"], [0, 2]),
    "lab2d_stop": (["0" * 32], [0]),
    "inpaint": (INPAINT_DRAWN, [0, 3, 4, 5, 6, 12, 13]),
    "inpaint_scrub": (["0" * 32, 1, "en"], [0, 2]),
    "inpaint_stop": (["0" * 32], [0]),
    "super_resolve": (SUPERRES_DRAWN, [0, 3, 6, 12, 13]),
    "super_resolve_scrub": (["0" * 32, 1, "en"], [0, 2]),
    "super_resolve_stop": (["0" * 32], [0]),
    "augment_export": (AUG_EXPORT, [0, 3, 6]),
    "augment_export_stop": (["0" * 32], [0]),
    "augment_experiment": (AUG_EXPERIMENT, [3]),
    "augment_experiment_stop": (["0" * 32], [0]),
    "anomaly_score": (ANOMALY, [1, 2]),
}


def test_bad_numbers_on_a_trained_2d_model(app_server):
    kind, text = raw(app_server, "lab2d_train", json.dumps({"data": LAB_TRAIN}))
    assert kind == "complete", text
    run_id = json.loads(text)[-1]["run_id"]
    for api, base, indices in (("lab2d_sample", [run_id, *LAB_SAMPLE[1:]], [2, 3, 4, 5]),
                               ("lab2d_field", [run_id, 100, "en"], [1]),
                               ("lab2d_continue", [run_id, 50, "en"], [1])):
        for index in indices:
            for value in BAD_NUMBERS:
                assert_clear(raw(app_server, api, with_value(base, index, value)))
    server_still_answers(app_server)


def test_bad_numbers_on_a_kept_text_to_image_run(app_server):
    if not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    kind, text = raw(app_server, "text_to_image", json.dumps({"data": T2I}))
    assert kind == "complete", text
    run_id = json.loads(text)[6]
    kind, text = raw(app_server, "text_to_image_compare", json.dumps({"data": T2I_COMPARE}))
    assert kind == "complete", text
    run_ids = json.loads(text)[4]
    for api, base, indices in (("text_to_image_attention", [run_id, 0, "en"], [1]),
                               ("text_to_image_path", [run_id, 0, "en"], [1]),
                               ("text_to_image_compare_scrub", [run_ids, 1, "en"], [1])):
        for index in indices:
            for value in BAD_NUMBERS:
                assert_clear(raw(app_server, api, with_value(base, index, value)))
    server_still_answers(app_server)


@pytest.mark.parametrize("api", sorted(TEXT_PARAMS))
def test_strange_strings_everywhere(app_server, api):
    base, indices = TEXT_PARAMS[api]
    if api.startswith("text_to_image") and not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    for index in indices:
        for value in STRINGS:
            assert_clear(raw(app_server, api, with_value(base, index, value)))
        assert_clear(raw(app_server, api, with_value(base, index, 12345)))  # a number where text belongs
    assert_clear(raw(app_server, api, json.dumps({"data": base[:1]})))  # too few values
    assert_clear(raw(app_server, api, json.dumps({"data": base + ["extra"] * 3})))  # too many
    assert_clear(raw(app_server, api, '{"data": [1, 2'))  # not JSON at all
    server_still_answers(app_server)


INJECTIONS = ["__import__('os').system('echo hacked')", "x.__class__.__mro__", "().__class__", "open('/etc/passwd')",
              "exec('1')", "eval('1')", "lambda: 1", "[x for x in (1,)]", "9**9**9**9", "10**10**10", "exp(1e308)",
              "x" + "+x" * 50_000, "(" * 1000 + "x" + ")" * 1000, "sin(x", "x;x", "import os", "globals()",
              "x if x else 1", "𝑥", "ｘ", "", "1/0", "log(-x)", "sqrt(-1-x)", "x[0]", "{'a': 1}", "'abc'",
              "__builtins__", "getattr(x, 'real')", "0x1p3", "1_000", "1e999", "not x", "x @ x"]


@pytest.mark.parametrize("expression", INJECTIONS)
def test_formula_injection_in_the_heat_lesson(app_server, expression):
    data = list(HEAT)
    data[0], data[1] = "custom", expression
    outcome = raw(app_server, "heat_simulate", json.dumps({"data": data}))
    assert_clear(outcome)
    assert "hacked" not in outcome[1]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bad_pictures(folder) -> dict[str, str]:
    """Files a student might upload by mistake, or an attacker on purpose."""
    made = {}
    (folder / "zero.png").write_bytes(b"")
    made["zero bytes"] = folder / "zero.png"
    good = folder / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    (folder / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    made["truncated"] = folder / "truncated.png"
    (folder / "essay.png").write_text("A PDF or an essay, not a picture. %PDF-1.4")
    made["not an image"] = folder / "essay.png"
    (folder / "doc.pdf").write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF")
    made["pdf"] = folder / "doc.pdf"
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "green", "blue")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    made["animated"] = folder / "animated.gif"
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(folder / "sixteen.png")
    made["16-bit"] = folder / "sixteen.png"
    Image.new("CMYK", (40, 40), (0, 120, 200, 10)).save(folder / "cmyk.jpg")
    made["CMYK"] = folder / "cmyk.jpg"
    Image.new("RGB", (1, 1), "white").save(folder / "one.png")
    made["1x1"] = folder / "one.png"
    # A decompression bomb: a valid PNG header for 20000×20000 RGB pixels and a few rows of data.
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    rows = zlib.compress(b"\x00" + b"\x00" * (20000 * 3) * 4)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", rows)
                                      + _png_chunk(b"IEND", b""))
    made["20000x20000 bomb"] = folder / "bomb.png"
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(folder / "transparent.png")
    made["transparent RGBA"] = folder / "transparent.png"
    return {name: str(path) for name, path in made.items()}


@pytest.mark.parametrize("api", sorted(FILE_ENDPOINTS))
def test_bad_pictures_get_clear_messages(client, app_server, api, tmp_path):
    if api == "text_to_image" and not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    if api == "denoise" and not models.denoiser_available():
        pytest.skip("the denoiser is not installed")
    base, file_index = FILE_ENDPOINTS[api]
    for name, path in bad_pictures(tmp_path).items():
        data = list(base)
        data[file_index] = handle_file(path)
        TRIED["cases"] += 1
        try:
            client.predict(*data, api_name=f"/{api}")
        except AppError as error:
            assert str(error) and GENERIC not in str(error), (name, str(error))
    # Paths the server never received: refused, never read.
    for path in ("/etc/passwd", "../../../etc/passwd", "/proc/self/environ", "assets/models/mnist-ddpm/README.md"):
        data = list(base)
        data[file_index] = {"path": path, "meta": {"_type": "gradio.FileData"}}
        kind, text = raw(app_server, api, json.dumps({"data": data}))
        assert kind == "error" and "root:" not in text and "PATH=" not in text, (path, text)
        data[file_index] = path  # a bare string where a file belongs
        assert_clear(raw(app_server, api, json.dumps({"data": data})))
    # A real picture on the server's disk that nobody uploaded: never opened, so never shown noised
    # or denoised (with or without gradio's file marker, or as a bare path).
    secret = Path(tempfile.mkdtemp(prefix="dl-not-uploaded-")) / "secret.png"  # outside every allowed folder
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(secret)
    for value in ({"path": str(secret)}, {"path": str(secret), "meta": {"_type": "gradio.FileData"}}, str(secret)):
        data = list(base)
        data[file_index] = value
        kind, text = raw(app_server, api, json.dumps({"data": data}))
        assert kind != "complete", (value, text)
    server_still_answers(app_server)


def test_no_file_outside_the_upload_cache_is_served(app_server):
    for path in ("/etc/passwd", "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "assets/models/mnist-ddpm/README.md",
                 "app.py"):
        TRIED["cases"] += 1
        response = httpx.get(f"{app_server}gradio_api/file={path}", timeout=30)
        assert response.status_code in (403, 404) and "root:" not in response.text, (path, response.status_code)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(d=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**20, 10**20),
       n=st.integers(-10, 10**7), steps=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**9))
def test_random_heat_numbers(app_server, d, n, steps):
    data = list(HEAT)
    data[2], data[4], data[6] = d, n, steps
    assert_clear(raw(app_server, "heat_simulate", json.dumps({"data": data}, allow_nan=True)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(expression=st.text(alphabet=st.sampled_from(list("x0123456789.+-*/()e_ ,abcdilmnopqrstwy[]'\"")), max_size=60))
def test_random_heat_formulas(app_server, expression):
    data = list(HEAT)
    data[0], data[1] = "custom", expression
    assert_clear(raw(app_server, "heat_simulate", json.dumps({"data": data})))


def test_memory_stays_bounded_and_the_count_is_reported(app_server):
    rss = psutil.Process().memory_info().rss
    for _ in range(3):
        data = list(HEAT)
        data[4], data[6] = 10**9, 10**9  # the largest grid anyone asks for is refused, not allocated
        assert_clear(raw(app_server, "heat_simulate", json.dumps({"data": data})))
    assert psutil.Process().memory_info().rss - rss < 200 * 2**20
    server_still_answers(app_server)
    print(f"\nhostile cases sent in this run: {TRIED['cases']} (plus hypothesis examples)")
