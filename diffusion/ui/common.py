"""Shared UI plumbing: translations, the language input, error handling, settings.

How language works:
- Every label goes through ``gr.I18n``, so the browser's language picks English or
  简体中文 on load, and the header button (or Gradio's own Settings panel) switches it.
- Plot text and error messages are made on the server, so each event takes a hidden
  ``lang`` input. In the browser, :data:`LANG_JS` replaces it with the locale that is
  showing right now (read from a hidden element whose text is itself translated).
  API callers pass ``lang`` themselves; it defaults to English.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from diffusion.errors import InputError
from diffusion.serving.render_pool import RenderPool
from diffusion.figures import cjk_font_available

log = logging.getLogger("diffusion.ui")

LANGS = ("en", "zh-CN")

# Error codes whose ``name`` field is a parameter name, shown translated ("param.<name>").
PARAMETER_CODES = frozenset({"not_a_number", "not_an_integer", "out_of_range", "bad_choice", "not_text"})

LATEX = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
]

# Runs in the browser before each event: the last input is the hidden ``lang`` box.
LANG_JS = """(...args) => {
  const el = document.querySelector('#dl-locale');
  // The marker's text is translated, so it shows the locale on screen; the data
  // attribute covers the moment between a switch and the marker's update.
  const code = document.body.dataset.dlLang || (el ? el.innerText.trim() : 'en');
  return [...args.slice(0, -1), code];
}"""

# Switch Gradio's own locale store (the same one its Settings panel uses).
SWITCH_LANG_JS = """async () => {
  const el = document.querySelector('#dl-locale');
  const now = document.body.dataset.dlLang || (el ? el.innerText.trim() : 'en');
  const next = now.startsWith('zh') ? 'en' : 'zh-CN';
  document.body.dataset.dlLang = next;
  const urls = performance.getEntriesByType('resource').map((e) => e.name)
    .filter((n) => /\\/assets\\/core-[^/]*\\.js$/.test(n));
  for (const u of urls) {
    const m = await import(u);
    if (m.changeLocale) { m.changeLocale(next); setTimeout(() => delete document.body.dataset.dlLang, 1000); return; }
  }
  alert('Use Settings (footer) to change the language. / 请在页脚的“设置”中切换语言。');
}"""

# Force a language on load when the server was started with --lang en|zh-CN.
FORCE_LANG_JS = """async () => {
  const want = '%s';
  document.body.dataset.dlLang = want;  // before any await: later load events read it
  const urls = performance.getEntriesByType('resource').map((e) => e.name)
    .filter((n) => /\\/assets\\/core-[^/]*\\.js$/.test(n));
  for (const u of urls) {
    const m = await import(u);
    if (m.changeLocale) { m.changeLocale(want); setTimeout(() => delete document.body.dataset.dlLang, 1000); return; }
  }
}"""

COMMON_STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "locale_code": "en",
        "app.title": "Diffusion Lab",
        "app.tagline": "Where the word *diffusion* comes from, and how diffusion models turn noise into images.",
        "app.switch_lang": "中文",
        "app.footer": "Running on **{device}** · PyTorch {torch} · Diffusion Lab {version}",
        "error.generic": "Something went wrong while computing this. Please try other settings; the server is still running.",
        "error.not_a_number": "{name} must be a number.",
        "error.not_an_integer": "{name} must be a whole number.",
        "error.out_of_range": "{name} must be between {lo} and {hi} (got {value}).",
        "error.bad_choice": "{name} must be one of: {choices} (got {value}).",
        "error.busy": "The server is busy. Please try again in a moment.",
        "unavailable": "**Not available yet.** This lesson's model and tools are still being built; the other tabs work.",
    },
    "zh-CN": {
        "locale_code": "zh-CN",
        "app.title": "扩散实验室",
        "app.tagline": "“扩散”一词从何而来，以及扩散模型如何把噪声变成图像。",
        "app.switch_lang": "English",
        "app.footer": "运行设备：**{device}** · PyTorch {torch} · 扩散实验室 {version}",
        "error.generic": "计算时出了点问题。请换一组参数再试；服务器仍在正常运行。",
        "error.not_a_number": "{name} 必须是一个数。",
        "error.not_an_integer": "{name} 必须是整数。",
        "error.out_of_range": "{name} 必须在 {lo} 到 {hi} 之间（当前为 {value}）。",
        "error.bad_choice": "{name} 必须是以下之一：{choices}（当前为 {value}）。",
        "error.busy": "服务器正忙，请稍后再试。",
        "unavailable": "**暂不可用。** 本课的模型和工具仍在开发中；其他标签页可以正常使用。",
    },
}


@dataclass(frozen=True)
class AppSettings:
    """Server settings chosen on the command line, shared by every tab."""

    device: str = "cpu"
    device_label: str = "CPU"
    light_concurrency: int = 8
    heavy_concurrency: int = 1
    max_queue: int = 64
    max_upload_mb: int = 10
    lang: str = "auto"
    t2i_models: tuple[str, ...] = ()  # text-to-image models the operator offers (ids or folders), first = default
    allow_any_model: bool = False     # let users type any hub id (a public Space should not)
    offline: bool = False             # never reach the Hugging Face Hub
    zero_gpu: bool = False            # running on a ZeroGPU Space
    # Processes that draw figures beside the server (none by default: tests and notebooks draw in-process).
    render_pool: RenderPool = field(default_factory=lambda: RenderPool(0), compare=False, repr=False)


class Translator:
    """All UI strings in both languages, for ``gr.I18n`` and for server-side text."""

    def __init__(self, *tables: Mapping[str, Mapping[str, str]]) -> None:
        self.strings: dict[str, dict[str, str]] = {lang: {} for lang in LANGS}
        for table in (COMMON_STRINGS, *tables):
            for lang in LANGS:
                duplicate = set(self.strings[lang]) & set(table[lang])
                if duplicate:
                    raise ValueError(f"duplicate UI string keys: {sorted(duplicate)}")
                self.strings[lang].update(table[lang])
        missing = set(self.strings["en"]) ^ set(self.strings["zh-CN"])
        if missing:
            raise ValueError(f"UI strings missing in one language: {sorted(missing)}")
        self._i18n: gr.I18n | None = None

    @property
    def i18n(self) -> gr.I18n:
        """The ``gr.I18n`` table given to ``launch``; built on first use."""
        if self._i18n is None:
            self._i18n = gr.I18n(**self.strings)
        return self._i18n

    def fill(self, key: str, **fields: Any) -> None:
        """Fill ``{fields}`` of ``key`` in every language, before the UI is built."""
        if self._i18n is not None:
            raise RuntimeError("fill() must run before the first label is made")
        for lang in LANGS:
            self.strings[lang][key] = self.strings[lang][key].format(**fields)

    def __call__(self, key: str) -> Any:
        """A translatable label for a component (resolved in the browser)."""
        if key not in self.strings["en"]:
            raise KeyError(key)
        return self.i18n(key)

    def text(self, key: str, lang: str | None, **fields: Any) -> str:
        """The string for ``key`` in ``lang``, formatted with ``fields`` (server side)."""
        table = self.strings[normalize_lang(lang)]
        template = table.get(key, self.strings["en"][key])
        return template.format(**fields) if fields else template

    def table(self, prefix: str, lang: str | None) -> dict[str, str]:
        """All strings under ``prefix`` with the prefix removed, e.g. plot text."""
        lang = normalize_lang(lang)
        if lang != "en" and not cjk_font_available():
            lang = "en"  # no CJK font on this server: English plot text beats empty boxes
        return {k[len(prefix):]: v for k, v in self.strings[lang].items() if k.startswith(prefix)}

    def error(self, err: InputError, lang: str | None) -> str:
        """A translated message for an :class:`InputError`, falling back to English."""
        key = f"error.{err.code}"
        if key not in self.strings["en"]:
            return str(err)
        params = dict(err.params)
        if err.code in PARAMETER_CODES and "name" in params:
            name_key = f"param.{params['name']}"
            if name_key in self.strings["en"]:
                params["name"] = self.text(name_key, lang)
        try:
            return self.text(key, lang, **params)
        except (KeyError, IndexError, ValueError):
            return str(err)


class LRUCache:
    """A small thread-safe LRU, bounded in count, that makes each missing value once.

    When many requests miss the same key at once (a class opening the page together),
    the first one computes the value and the others wait for it instead of all
    computing it side by side. If making fails, the next waiter tries itself.
    """

    def __init__(self, capacity: int, on_evict: Callable[[Any], None] | None = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict  # called with each value pushed out (e.g. to delete its file)
        self._items: OrderedDict = OrderedDict()
        self._making: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
                pending = self._making.get(key)
                if pending is None:
                    pending = self._making[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # someone else is making it: use theirs (or try again if they failed)
        try:
            value = make()
            evicted = []
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.capacity:
                    evicted.append(self._items.popitem(last=False)[1])
            if self.on_evict is not None:
                for old in evicted:
                    self.on_evict(old)
            return value
        finally:
            with self._lock:
                del self._making[key]
            pending.set()

    def forget(self, key: Hashable) -> None:
        """Drop ``key`` (no ``on_evict``): its value is known to be gone."""
        with self._lock:
            self._items.pop(key, None)


def normalize_lang(lang: Any) -> str:
    """Map any locale string ("zh", "zh-Hans-CN", "en-GB", junk) to ``en`` or ``zh-CN``."""
    if isinstance(lang, str) and lang.strip().lower().startswith("zh"):
        return "zh-CN"
    return "en"


def lang_input() -> gr.Textbox:
    """The hidden ``lang`` input that every event takes last (see :data:`LANG_JS`)."""
    return gr.Textbox(value="en", visible=False, label="lang", max_length=32)


def guarded(tr: Translator) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn core errors into translated ``gr.Error`` messages, never stack traces.

    The wrapped handler must take ``lang`` as its last positional argument. Works for
    plain functions and generators (streaming events).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        def convert(exc: Exception, lang: Any) -> gr.Error:
            if isinstance(exc, gr.Error):
                return exc
            if isinstance(exc, InputError):
                return gr.Error(tr.error(exc, lang))
            log.exception("unexpected error in %s", fn.__name__)
            return gr.Error(tr.text("error.generic", lang))

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any) -> Any:
                lang = args[-1] if args else "en"
                try:
                    yield from fn(*args)
                except Exception as exc:  # noqa: BLE001 - the user sees a message, the log the trace
                    raise convert(exc, lang) from None
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            lang = args[-1] if args else "en"
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001
                raise convert(exc, lang) from None
        return wrapper

    return decorate


def unavailable_tab(tr: Translator, prefix: str) -> None:
    """Body of a lesson tab whose model has not landed: explanation plus a plain notice."""
    gr.Markdown(tr(f"{prefix}.intro"), latex_delimiters=LATEX)
    gr.Markdown(tr("unavailable"), elem_classes=["dl-notice"])


class ImageInput(gr.Image):
    """``gr.Image`` that passes an upload's cached file path to the core unopened.

    Gradio's own preprocessing opens the file with Pillow and fails with an
    untranslated, generic error on non-images. Here the core's loader does all the
    checks (size before decoding, truncation, modes) and reports them in the user's
    language. Only files gradio has already moved into its upload cache arrive here;
    inline ``data:`` URLs are not accepted and are reported as unreadable images.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        return str(payload.path) if payload.path else "(inline data is not accepted)"


def gpu_task(duration: int = 60) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@spaces.GPU(duration=...)`` on a ZeroGPU Space; a no-op decorator elsewhere.

    Model endpoints wrap their GPU work with it, so the same code runs on a laptop,
    a school server and ZeroGPU hardware.
    """
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


def plot_picture(url: str) -> Any:
    """A PNG data URL (from :mod:`diffusion.serving.render_pool`) as the value of a ``gr.Plot``."""
    from gradio.components.plot import PlotData

    return PlotData(type="matplotlib", plot=url)


class PictureFiles:
    """Output pictures as PNG files, each encoded once and kept while it is likely to come back.

    gradio encodes every numpy output picture to PNG at zlib level 6 on every request,
    about 7–18 ms for a 256×256 picture. Lesson 2 sends ten pictures per slider move,
    and eight of them (the noise ε and the strip along t) do not depend on t at all.
    Here a picture is made and encoded (level 1: a few per cent larger, 2–4× faster) the
    first time its key is seen, and later requests get the same file; gradio then only
    hashes and copies it. The key must name everything the pixels depend on.

    At most ``capacity`` files are kept; the least recently used is deleted first. The
    folder is private to this process and removed at exit.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._files = LRUCache(capacity, on_evict=lambda name: Path(name).unlink(missing_ok=True))
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def _dir(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="dl-pictures-"))
                import atexit
                import shutil

                atexit.register(shutil.rmtree, self._folder, True)
            elif not self._folder.is_dir():  # removed by a temp-folder cleaner: make it again
                self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return self._folder

    def path(self, key: Hashable, make: Callable[[], Any], name: str = "picture") -> str:
        """The PNG file for ``key``; ``make()`` returns its uint8 ``(H, W, 3)`` array when it is not kept.

        ``name`` starts the file name, which is what a student who downloads the picture sees.
        """
        prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] + "_"
        file = self._files.get_or_make(key, lambda: self._write(make(), prefix))
        if not os.path.exists(file):  # deleted behind our back (a temp-folder cleaner): make it again
            self._files.forget(key)
            file = self._files.get_or_make(key, lambda: self._write(make(), prefix))
        return file

    def _write(self, array: Any, prefix: str) -> str:
        from PIL import Image

        handle, staging = tempfile.mkstemp(dir=self._dir(), prefix=prefix, suffix=".png")
        try:
            with os.fdopen(handle, "wb") as out:
                Image.fromarray(array).save(out, format="png", compress_level=1)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return staging


def publish_cached_images_atomically() -> None:
    """Make gradio write output pictures to its file cache without a moment of a half-written file.

    gradio stores each output picture under a name made from its content's hash, and
    rewrites that file every time the same picture is produced again (``write_bytes``
    truncates it first). In a classroom the same pictures come back all the time: the
    t = 0 frame of the noising strip for the example image, or a double click's twin
    request. A student still downloading the file then gets it cut short: the load
    benchmark saw "peer closed connection without sending complete message body
    (received 0 bytes, expected 84661)". Here an existing file is kept as it is, and a
    new one is written under a temporary name and renamed into place, as gradio
    already does for files it copies (``save_file_to_cache``). Idempotent.
    """
    from gradio import processing_utils

    if getattr(processing_utils.save_pil_to_cache, "_diffusion_lab_atomic", False):
        return

    def save_pil_to_cache(img: Any, cache_dir: str, name: str = "image", format: str = "webp") -> str:
        data = processing_utils.encode_pil_to_bytes(img, format)
        folder = Path(cache_dir) / processing_utils.hash_bytes(data)
        folder.mkdir(exist_ok=True, parents=True)
        target = (folder / f"{name}.{format}").resolve()
        if target.exists():
            os.utime(target)  # gradio's delete_cache ages files by time: this one is in use again
            return str(target)
        handle, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return str(target)

    save_pil_to_cache._diffusion_lab_atomic = True  # type: ignore[attr-defined]
    processing_utils.save_pil_to_cache = save_pil_to_cache


publish_cached_images_atomically()


def progress_html(fraction: float, text: str) -> str:
    """A progress bar with a line of text under it (the text is escaped)."""
    percent = max(0.0, min(100.0, 100.0 * fraction))
    return (f'<div class="dl-progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{percent:.0f}"><div class="dl-progress-bar" style="width: {percent:.1f}%"></div></div>'
            f'<div class="dl-progress-text">{html.escape(text)}</div>')


def model_device(settings: AppSettings) -> str:
    """Where the digit model runs.

    On a ZeroGPU Space, CUDA only exists inside ``@spaces.GPU`` calls, which run in
    another process; this lesson's stop flag and run cache need one process, and the
    model is small, so it stays on the CPU there. Elsewhere it follows ``--device``.
    """
    return "cpu" if os.environ.get("SPACES_ZERO_GPU") else settings.device
