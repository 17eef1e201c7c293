"""Event-handler plumbing: core errors become translated messages, named outputs become updates.

Handlers live outside the tabs' ``build`` functions, so a test can call them without a
browser or even a Blocks. They return (or yield) plain dicts keyed by output *names*;
:func:`bind` turns those into gradio's ``{component: value}`` form, so a handler never pads
a positional tuple with ``gr.skip()``: a name it leaves out is simply not updated.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import gradio as gr

from diffusion.errors import InputError
from diffusion.ui.i18n import Translator

log = logging.getLogger("diffusion.ui")


def guarded(tr: Translator, scope: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn core errors into translated ``gr.Error`` messages, never stack traces.

    The wrapped handler must take a ``lang`` argument (the last one, or the last but a
    ``gr.Request``, which gradio passes after the inputs). Works for plain functions and
    generators (streaming events). ``scope`` names the lesson whose
    own parameter names come first (see :meth:`~diffusion.ui.i18n.Translator.error`).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        names = list(inspect.signature(fn).parameters)
        at = names.index("lang") if "lang" in names else -1

        def lang_of(args: tuple) -> Any:
            return args[at] if args and -len(args) <= at < len(args) else "en"

        def convert(exc: Exception, lang: Any) -> gr.Error:
            if isinstance(exc, gr.Error):
                return exc
            if isinstance(exc, InputError):
                return gr.Error(tr.error(exc, lang, scope))
            log.exception("unexpected error in %s", fn.__name__)
            return gr.Error(tr.text("error.generic", lang))

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any) -> Any:
                lang = lang_of(args)
                try:
                    yield from fn(*args)
                except Exception as exc:  # noqa: BLE001 - the user sees a message, the log the trace
                    raise convert(exc, lang) from None
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            lang = lang_of(args)
            try:
                return fn(*args)
            except Exception as exc:  # noqa: BLE001
                raise convert(exc, lang) from None
        return wrapper

    return decorate


EXAMPLES_CLIENT = "examples"  # the job queue's name for the example runs every model tab opens with


def client_of(request: Any) -> str:
    """Who asks, for the job queue's fairness: the browser session (each API client has its own)."""
    return str(getattr(request, "session_hash", None) or "anonymous")


def bind(handler: Callable[..., Any], outputs: Mapping[str, gr.components.Component]) -> Callable[..., Any]:
    """``handler`` with its ``{name: value}`` results turned into ``{component: value}`` for gradio.

    Args:
        handler: Returns or yields dicts whose keys are names of ``outputs``; ``{}`` updates
            nothing. Anything else (``None`` for "no outputs", ``gr.skip()``) passes through.
        outputs: The tab's output components by name; give ``list(outputs.values())`` as the
            event's ``outputs``, so the API lists them in this order.

    Raises:
        KeyError: (when called) the handler named an output the event does not have.
    """
    def convert(result: Any) -> Any:
        if not isinstance(result, dict) or "__type__" in result:  # not named outputs (gr.skip() is a dict too)
            return result
        if not result:  # nothing to update
            return gr.skip()
        return {outputs[name]: value for name, value in result.items()}

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def gen_wrapper(*args: Any) -> Any:
            for result in handler(*args):
                yield convert(result)
        return gen_wrapper

    @functools.wraps(handler)
    def wrapper(*args: Any) -> Any:
        return convert(handler(*args))
    return wrapper
