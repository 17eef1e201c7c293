"""The UI layer: translations are complete, errors are translated, the app is composed right."""

from __future__ import annotations

import ast
import os
import string
from pathlib import Path

import gradio as gr
import pytest

import app
from diffusion.errors import InputError
from diffusion.serving import gpu
from diffusion.serving.cache import LRUCache, PictureFiles
from diffusion.ui import handlers, i18n, patches

CORE = Path(__file__).resolve().parents[2] / "diffusion"
# Command-line tools report errors in English only; everything else can reach the UI.
# The command-line tools report their errors in English on the terminal; the UI never shows them.
CLI_ONLY_PACKAGES = {"ui", "train", "bench", "evaluate"}
CLI_ONLY = {"digits.py"}


@pytest.fixture(scope="module")
def built():
    settings = app.settings_from_args(app.parse_args(["--device", "cpu"]))
    return app.create_app(settings)


def _fields(template: str) -> set[str] | None:
    """Format fields of a template; None for plain text such as LaTeX with braces."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError:
        return None


def _core_calls(func_name: str) -> list[tuple[str, ast.Call]]:
    """Every call to ``func_name`` in the core library, with the file it is in."""
    calls = []
    for path in CORE.rglob("*.py"):
        if CLI_ONLY_PACKAGES & set(path.relative_to(CORE).parts) or path.name in CLI_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name == func_name:
                    calls.append((path.name, node))
    return calls


def test_both_languages_have_the_same_keys_and_fields(built):
    _, tr = built
    assert set(tr.strings["en"]) == set(tr.strings["zh-CN"])
    for key, english in tr.strings["en"].items():
        assert _fields(english) == _fields(tr.strings["zh-CN"][key]), key
        assert tr.strings["zh-CN"][key].strip(), key


def test_every_core_error_code_has_a_translation(built):
    _, tr = built
    codes = set()
    for _, call in _core_calls("InputError"):
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            codes.add(first.value)
    codes.add("model_unavailable")  # raised through ModelUnavailable's own __init__
    assert len(codes) >= 10  # sanity: the scan found the core's errors
    missing = sorted(c for c in codes if f"error.{c}" not in tr.strings["en"])
    assert missing == []


def test_every_validated_parameter_name_is_translated(built):
    _, tr = built
    names = set()
    for _, call in _core_calls("check_range") + _core_calls("check_choice"):
        first = call.args[0] if call.args else None
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            names.add(first.value)
    assert names, "no validated parameters found"
    missing = sorted(n for n in names if f"param.{n}" not in tr.strings["en"])
    assert missing == []


def test_plot_text_is_translated_for_every_key(built):
    from diffusion.lessons.heat.figures import HEAT_TEXT
    from diffusion.lessons.noising.figures import NOISING_TEXT
    from diffusion.lessons.sampling.figures import SAMPLING_TEXT

    _, tr = built
    for prefix, defaults in (("heat.plot.", HEAT_TEXT), ("noising.plot.", NOISING_TEXT),
                             ("sampling.plot.", SAMPLING_TEXT)):
        for key, english in defaults.items():
            assert tr.strings["en"][prefix + key] == english
            assert _fields(tr.strings["zh-CN"][prefix + key]) == _fields(english)


@pytest.mark.parametrize("raw, expected", [
    ("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-Hans-CN", "zh-CN"), ("ZH-tw", "zh-CN"),
    ("en", "en"), ("en-GB", "en"), ("fr", "en"), ("", "en"), (None, "en"), (42, "en"), ("x" * 1000, "en"),
])
def test_normalize_lang(raw, expected):
    assert i18n.normalize_lang(raw) == expected


def test_guarded_translates_input_errors(built):
    _, tr = built

    @handlers.guarded(tr)
    def handler(value, lang):
        raise InputError("out_of_range", "{name} must be between {lo} and {hi} (got {value}).",
                         name="n_points", lo=8, hi=4001, value=value)

    with pytest.raises(gr.Error) as info:
        handler(3, "zh-CN")
    assert "网格点数 N" in info.value.message and "8" in info.value.message
    with pytest.raises(gr.Error) as info:
        handler(3, "en")
    assert info.value.message.startswith("Grid points N must be between 8 and 4001")


def test_guarded_hides_unexpected_errors_and_handles_generators(built):
    _, tr = built

    @handlers.guarded(tr)
    def broken(lang):
        raise RuntimeError("secret internal detail /etc/passwd")

    @handlers.guarded(tr)
    def stream(lang):
        yield 1
        raise ZeroDivisionError("internal")

    with pytest.raises(gr.Error) as info:
        broken("en")
    assert "secret" not in info.value.message and "server is still running" in info.value.message
    gen = stream("zh-CN")
    assert next(gen) == 1
    with pytest.raises(gr.Error) as info:
        next(gen)
    assert "服务器仍在正常运行" in info.value.message


def test_app_has_seven_tabs_in_lesson_order_and_named_endpoints(built):
    from diffusion.ui import applications

    demo, tr = built
    all_tabs = [b for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    tabs = [t for t in all_tabs if not str(t.id).startswith(("applications-", "t2i-"))]
    assert [t.id for t in tabs] == ["heat", "noising", "lab2d", "sampling", "denoising", "text2image", "applications"]
    for lang in ("en", "zh-CN"):  # each tab's label starts with its place in the course
        assert [tr.text(f"{t.id}.tab", lang).split(" · ")[0] for t in tabs] == ["1", "2", "3", "4", "5", "6", "7"]
    sections = [t.id for t in all_tabs if str(t.id).startswith("applications-")]
    assert sections == [f"applications-{name}" for name, _ in applications.SECTIONS]
    assert {"applications-augment", "applications-inpaint", "applications-superres"} <= set(sections)
    from diffusion.ui import text2image

    assert [t.id for t in all_tabs if str(t.id).startswith("t2i-")] == [f"t2i-{n}" for n in text2image.SECTIONS]
    api_names = {d.api_name for d in demo.fns.values() if d.api_name}
    assert {"heat_simulate", "forward_noise", "forward_noise_gif", "sample", "sample_stop", "sample_scrub",
            "sample_gif", "sample_compare", "augment_export", "augment_experiment", "inpaint", "inpaint_stop",
            "inpaint_scrub", "super_resolve", "super_resolve_stop", "super_resolve_scrub", "text_to_image_compare",
            "text_to_image_guidance_sweep", "text_to_image_attention", "text_to_image_path"} <= api_names


def test_queue_is_bounded(built):
    demo, _ = built
    assert demo._queue.max_size == 64


def test_cli_flags(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.device, args.lang) == ("127.0.0.1", 7860, "auto", "auto")
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert app.parse_args([]).host == "0.0.0.0"
    with pytest.raises(SystemExit):
        app.parse_args(["--heavy-concurrency", "-1"])
    auto = app.settings_from_args(app.parse_args(["--device", "cpu"]))  # 0: one model job per core on a CPU
    assert auto.heavy_concurrency == min(4, os.cpu_count() or 1) == auto.jobs.workers
    with pytest.raises(SystemExit):
        app.parse_args(["--device", "tpu"])


def test_gpu_task_is_a_no_op_without_spaces(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_spaces(name, *args, **kwargs):
        if name == "spaces":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spaces)

    def work(x):
        return x + 1

    assert gpu.gpu_task(30)(work) is work


def test_pyplot_is_imported_once_at_start_up_not_by_racing_request_threads():
    """gradio's Plot imports pyplot lazily; two first requests at once used to race on it."""
    import subprocess
    import sys

    code = ("import sys, app; "
            "assert 'matplotlib.pyplot' in sys.modules, 'pyplot is left for request threads to import'")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]



def test_the_lru_cache_makes_each_value_once_even_under_a_stampede():
    import threading
    import time

    cache = LRUCache(capacity=2)
    calls = []

    def make(key):
        calls.append(key)
        time.sleep(0.2)  # long enough for every thread to arrive while the first is making it
        return key * 10

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_make(3, lambda: make(3))))
               for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == [30] * 8 and calls == [3] and (cache.hits, cache.misses) == (7, 1)
    cache.get_or_make(4, lambda: make(4))
    cache.get_or_make(5, lambda: make(5))  # capacity 2: 3 is the least recently used and goes
    cache.get_or_make(3, lambda: make(3))
    assert calls == [3, 4, 5, 3]

    def broken():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_make(9, broken)
    assert cache.get_or_make(9, lambda: 90) == 90  # a failure is not cached, nor does it block the key


def test_a_cached_output_picture_is_never_rewritten_in_place(tmp_path):
    """A picture produced again must not truncate the file another student is downloading."""
    import numpy as np
    from gradio import processing_utils

    patches.publish_cached_images_atomically()

    picture = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    first = processing_utils.save_img_array_to_cache(picture, str(tmp_path), format="png")
    with open(first, "ab") as handle:  # a marker: a rewrite would remove it
        handle.write(b"MARK")
    second = processing_utils.save_img_array_to_cache(picture, str(tmp_path), format="png")
    assert second == first
    assert open(second, "rb").read().endswith(b"MARK")
    # A new picture is written whole, under its own name, and no temporary file is left behind.
    other = processing_utils.save_img_array_to_cache(picture[::-1], str(tmp_path), format="png")
    assert other != first and Path(other).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]


def test_output_pictures_are_encoded_once_and_stay_lossless(tmp_path, monkeypatch):
    """A streaming handler sends the same picture with every update: it is encoded the first time only."""
    import numpy as np
    from gradio import processing_utils
    from PIL import Image

    patches.publish_cached_images_atomically()
    saves = []
    original = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, *a, **k: saves.append(1) or original(self, *a, **k))
    picture = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    first = processing_utils.save_img_array_to_cache(picture, str(tmp_path), format="png")
    again = processing_utils.save_img_array_to_cache(picture.copy(), str(tmp_path), format="png")
    assert again == first and len(saves) == 1
    np.testing.assert_array_equal(np.asarray(Image.open(first)), picture)
    changed = picture.copy()
    changed[0, 0, 0] ^= 1  # one bit: another picture, another file
    assert processing_utils.save_img_array_to_cache(changed, str(tmp_path), format="png") != first
    assert len(saves) == 2
    Path(first).unlink()  # gradio's cache clean-up removed it: it is written again
    assert Path(processing_utils.save_img_array_to_cache(picture, str(tmp_path), format="png")).exists()
    assert len(saves) == 3


def test_picture_files_encode_each_picture_once_and_delete_what_they_drop():
    import numpy as np
    from PIL import Image

    store = PictureFiles(capacity=2)
    rng = np.random.default_rng(0)
    pictures = {k: rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for k in "abc"}
    made = []

    def make(key):
        made.append(key)
        return pictures[key]

    a = store.path("a", lambda: make("a"))
    assert store.path("a", lambda: make("a")) == a and made == ["a"]  # kept, not encoded again
    assert np.array_equal(np.asarray(Image.open(a)), pictures["a"])  # lossless
    b = store.path("b", lambda: make("b"))
    store.path("a", lambda: make("a"))  # a is now the most recently used
    c = store.path("c", lambda: make("c"))  # capacity 2: b goes, with its file
    assert not Path(b).exists() and Path(a).exists() and Path(c).exists()
    assert made == ["a", "b", "c"]
    Path(a).unlink()  # a file removed behind the store's back is made again
    again = store.path("a", lambda: make("a"))
    assert made == ["a", "b", "c", "a"] and np.array_equal(np.asarray(Image.open(again)), pictures["a"])
    # Even the whole folder removed by a temp-folder cleaner is made again.
    import shutil

    shutil.rmtree(Path(a).parent)
    assert np.array_equal(np.asarray(Image.open(store.path("a", lambda: pictures["a"]))), pictures["a"])
    # The name a download gets starts with the one given, made safe for a file name.
    named = store.path("d", lambda: pictures["a"], name="x_t cosine/../t=250")
    assert Path(named).name.startswith("x_t_cosine_.._t_250_") and Path(named).parent == Path(again).parent


def test_the_english_plot_text_in_the_locale_file_is_each_figure_module_s_own():
    """Figures carry English defaults for notebooks; the UI's English must not drift from them."""
    from diffusion.lessons.denoising.figures import DENOISE_TEXT
    from diffusion.lessons.heat.figures import HEAT_TEXT
    from diffusion.lessons.noising.figures import NOISING_TEXT
    from diffusion.lessons.sampling.figures import SAMPLING_TEXT

    english = i18n.load_locales()["en"]
    for prefix, defaults in (("heat.plot.", HEAT_TEXT), ("noising.plot.", NOISING_TEXT),
                             ("sampling.plot.", SAMPLING_TEXT), ("denoising.plot.", DENOISE_TEXT)):
        shown = {k[len(prefix):]: v for k, v in english.items() if k.startswith(prefix)}
        assert {k: shown.get(k) for k in defaults} == defaults, prefix


def test_bind_turns_named_outputs_into_component_updates():
    import gradio as gr

    first, second = gr.Textbox(), gr.Number()
    outputs = {"text": first, "number": second}

    def handler(x):
        return {"number": x} if x else {}

    def streaming(x):
        yield {"text": "started"}
        yield {"text": "done", "number": x}

    bound = handlers.bind(handler, outputs)
    assert bound(3) == {second: 3}
    assert bound(0) == gr.skip()  # an empty answer updates nothing
    assert list(handlers.bind(streaming, outputs)(5)) == [{first: "started"}, {first: "done", second: 5}]
    assert handlers.bind(lambda: gr.skip(), outputs)() == gr.skip()
    with pytest.raises(KeyError):
        handlers.bind(lambda: {"missing": 1}, outputs)()
