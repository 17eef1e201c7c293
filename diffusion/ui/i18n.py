"""Languages: the UI strings of both locales, the hidden ``lang`` input, and the language switch.

How language works:
- Every label goes through ``gr.I18n``, so the browser's language picks English or
  简体中文 on load, and the header button (or Gradio's own Settings panel) switches it.
- Plot text and error messages are made on the server, so each event takes a hidden
  ``lang`` input. In the browser, :data:`LANG_JS` replaces it with the locale that is
  showing right now (read from a hidden element whose text is itself translated).
  API callers pass ``lang`` themselves; it defaults to English.
- The strings are data: ``locales/en.json`` and ``locales/zh-CN.json``, one flat table
  of keys each. A tab's keys start with its name (``sampling.run``); ``param.<name>``
  names a validated parameter in error messages; ``error.<code>`` translates an
  :class:`~diffusion.errors.InputError` code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from diffusion.errors import InputError
from diffusion.figures import cjk_font_available

LANGS = ("en", "zh-CN")
LOCALES_DIR = Path(__file__).resolve().parent / "locales"

# Error codes whose ``name`` field is a parameter name, shown translated ("param.<name>").
PARAMETER_CODES = frozenset({"not_a_number", "not_an_integer", "out_of_range", "bad_choice", "not_text"})

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


def load_locales(folder: Path = LOCALES_DIR) -> dict[str, dict[str, str]]:
    """The string tables of :data:`LANGS`, read from ``<folder>/<lang>.json``."""
    tables = {}
    for lang in LANGS:
        table = json.loads((folder / f"{lang}.json").read_text(encoding="utf-8"))
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise ValueError(f"{lang}.json must be one flat table of strings")
        tables[lang] = table
    return tables


class Translator:
    """All UI strings in both languages, for ``gr.I18n`` and for server-side text."""

    def __init__(self, *tables: Mapping[str, Mapping[str, str]], locales: Path = LOCALES_DIR) -> None:
        """Load the locale files, plus any extra ``{lang: {key: text}}`` tables (keys must be new)."""
        self.strings: dict[str, dict[str, str]] = {lang: {} for lang in LANGS}
        for table in (load_locales(locales), *tables):
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

    def error(self, err: InputError, lang: str | None, scope: str | None = None) -> str:
        """A translated message for an :class:`InputError`, falling back to English.

        A parameter is named by ``<scope>.param.<name>`` when the lesson ``scope`` has its
        own word for it (the 2-D lab's ``n_points`` are training points, the heat
        equation's are grid points), else by ``param.<name>``.
        """
        key = f"error.{err.code}"
        if key not in self.strings["en"]:
            return str(err)
        params = dict(err.params)
        if err.code in PARAMETER_CODES and "name" in params:
            keys = ([f"{scope}.param.{params['name']}"] if scope else []) + [f"param.{params['name']}"]
            name_key = next((k for k in keys if k in self.strings["en"]), None)
            if name_key is not None:
                params["name"] = self.text(name_key, lang)
        try:
            return self.text(key, lang, **params)
        except (KeyError, IndexError, ValueError):
            return str(err)


def normalize_lang(lang: Any) -> str:
    """Map any locale string ("zh", "zh-Hans-CN", "en-GB", junk) to ``en`` or ``zh-CN``."""
    if isinstance(lang, str) and lang.strip().lower().startswith("zh"):
        return "zh-CN"
    return "en"


def lang_input() -> gr.Textbox:
    """The hidden ``lang`` input that every event takes last (see :data:`LANG_JS`)."""
    return gr.Textbox(value="en", visible=False, label="lang", max_length=32)
