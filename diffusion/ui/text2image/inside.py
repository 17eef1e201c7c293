"""Lesson 6 tab, the sections that look inside a kept run: attention per word and the latent's path.

* **Attention per word** (``/text_to_image_attention``): the cross-attention maps recorded
  during the run (:mod:`diffusion.lessons.text2image.attention`, DAAM), one per word of the
  prompt, over the picture: at one step, or summed over all steps (step 0). A player plays
  them step by step in the browser, with no request per frame.
* **The latent's path** (``/text_to_image_path``): z_t of every step projected by PCA
  (:mod:`diffusion.lessons.text2image.inside`), optionally with other seeds of the same
  prompt, which run as one job of the queue.

Both read the run of the main section (or any run id of the tab's store).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np

from diffusion.errors import InputError, check_range
from diffusion.lessons.text2image import attention as t2i_attention
from diffusion.lessons.text2image.safety import blocked_picture, split_strip
from diffusion.lessons.text2image.inside import MAX_PATHS, PATH_TEXT, path_latents, plot_path, project
from diffusion.ui.handlers import bind, guarded
from diffusion.ui.i18n import LANG_JS, Translator, normalize_lang
from diffusion.ui.player import frame_player
from diffusion.ui.run_player import RunPlayers, draw_frames, kept_run, pack_run
from diffusion.ui.settings import AppSettings
from diffusion.ui.text2image.compare import ManyRunHandlers
from diffusion.ui.text2image.run import PLAYER_FRAMES, PLAYER_SIDE, RUNS
from diffusion.ui.widgets import LATEX, progress_html

MAX_WORDS_PLAYED = 4  # the player shows the maps of the words that attend most locally, each as a panel
ATTENTION_PLAYERS = RunPlayers(capacity=8)
MAX_OTHER_SEEDS = MAX_PATHS - 1


def _shown_picture(run: Any, step: int) -> np.ndarray | None:
    """The picture a map is drawn over: x̂₀ at ``step`` (1-based), or the final picture for step 0."""
    if step == 0:
        return np.asarray(run.images[0]) if run.images else None
    return run.x0_picture(run.frame(step - 1))


def _hidden(run: Any, step: int) -> bool:
    """Whether the content filter blocked the first picture by ``step`` (0-based; -1: the final picture).

    A map over a blocked picture is not shown either: where the words look outlines the picture.
    """
    verdicts = getattr(run, "verdicts", None)
    return bool(verdicts is not None and verdicts.blocked_at(len(run) if step < 0 else step)[0])


def _over(picture: np.ndarray, maps: Any, words: list[str], hidden: bool) -> list[tuple[np.ndarray, str]]:
    """One picture per word: the map over the picture, or the filter's sign where the picture was blocked."""
    if hidden:
        return [(blocked_picture(*picture.shape[:2]), word) for word in words]
    return t2i_attention.overlays(picture, maps, words)


def _first(picture: np.ndarray | None, batch: int) -> np.ndarray | None:
    """The first picture of a strip of ``batch`` pictures (None stays None)."""
    return None if picture is None else split_strip(picture, batch)[0]


def _focused_words(total: Any, keep: int) -> list[int]:
    """The ``keep`` words whose summed map is most concentrated (peak ÷ mean), in prompt order.

    Words such as "a" or "the" spread their attention over the whole picture; the player
    has room for a few panels, so it shows the words that point at a place.
    """
    flat = total.flatten(1).float()
    focus = flat.max(dim=1).values / flat.mean(dim=1).clamp_min(1e-12)
    return sorted(focus.argsort(descending=True)[:keep].tolist())


class InsideHandlers:
    """The sections' handlers, on the tab's run store."""

    def __init__(self, many: ManyRunHandlers) -> None:
        self.many, self.tr = many, many.tr

    def _maps(self, run_id: Any) -> tuple[Any, Any]:
        run = RUNS.get(run_id)
        maps = getattr(run, "attention", None)
        if maps is None:
            raise InputError("t2i_no_attention", "This run recorded no attention maps; run it again with this model.")
        return run, maps

    def attention(self, run_id, step=0, lang="en"):
        """``/text_to_image_attention``: one map per word of the run's prompt at ``step`` (0: all steps)."""
        run, maps = self._maps(run_id)
        step = int(check_range("step", step, 0, len(run), integer=True))
        picture = _first(_shown_picture(run, step), run.request.batch_size)
        if picture is None:
            raise InputError("t2i_no_picture", "This run has no picture to draw the maps over.")
        items = _over(picture, maps.at(step)[0], list(maps.tokens), _hidden(run, step - 1))
        key = "text2image.attention_all" if step == 0 else "text2image.attention_step"
        text = self.tr.text(key, lang, step=step, total=len(run), n=len(maps.tokens))
        return {"attention_status": progress_html(1.0, text), "attention_gallery": items,
                "attention_summary": {"run_id": run_id, "tokens": list(maps.tokens), "step": step,
                                      "steps": len(run), "prompt": run.request.prompt}}

    def attention_player(self, run_id, lang):
        """The player of the first words' maps over x̂₀ at up to :data:`PLAYER_FRAMES` steps (private)."""
        run, lang = kept_run(RUNS, run_id), normalize_lang(lang)
        maps = getattr(run, "attention", None)
        if run is None or maps is None or maps.steps is None or run.x0_picture(run.frame(0)) is None:
            return {"attention_player": ""}
        chosen = _focused_words(maps.at(0)[0], MAX_WORDS_PLAYED)
        words = [maps.tokens[i] for i in chosen]
        batch = run.request.batch_size

        def draw(info: Any) -> list[np.ndarray]:
            picture = _first(run.x0_picture(info), batch)
            drawn = _over(picture, maps.at(info.step + 1)[0][chosen], words, _hidden(run, info.step))
            return [p for p, _ in drawn]
        frames = ATTENTION_PLAYERS.get(run, "frames", lambda: draw_frames(
            run, draw, PLAYER_FRAMES, max_side=PLAYER_SIDE // 2, average=(True,) * len(words)))
        tr = self.tr

        def note(n: int) -> str:
            return tr.text("text2image.attention_player_note", lang, n=n, total=frames.total)
        return {"attention_player": ATTENTION_PLAYERS.get(run, lang, lambda: pack_run(
            frames, words, tr, lang, caption_key="text2image.player_caption", note=note,
            pixelated=max(p.shape[1] for p in frames.pictures[-1]) <= 128))}

    def path(self, run_id, other_seeds=0, lang="en", gr_request: gr.Request = None):
        """``/text_to_image_path``: the run's z_t by step on two principal components, with other seeds."""
        run = RUNS.get(run_id)
        other = int(check_range("other_seeds", other_seeds, 0, MAX_OTHER_SEEDS, integer=True))
        paths, labels = [path_latents(run)], [str(run.request.seed)]
        shared = False
        if other:
            base = replace(run.request, batch_size=1)
            seeds = [(base.seed + k) % 2**31 for k in range(1, other + 1)]
            requests = [replace(base, seed=s) for s in seeds]
            ids = [RUNS.new_id() for _ in requests]
            for i in ids:
                RUNS.reserve(i)
            runs = None
            for update, runs, shared in self.many._run(requests, run.model, lang, gr_request,
                                                       [f"seed {s}" for s in seeds], ids):
                if update.get("status"):
                    yield {"path_status": update["status"]}
            for extra, seed in zip(runs or [], seeds):
                if len(extra):
                    paths.append(path_latents(extra))
                    labels.append(str(seed))
        text = {k: self.tr.text(f"text2image.path_{k}", lang) for k in PATH_TEXT}
        projection = project(paths, labels)
        figure = plot_path(projection, text)
        status = self.tr.text("text2image.path_done", lang, n=len(paths), a=100 * projection.explained[0],
                              b=100 * projection.explained[1])
        yield {"path_status": progress_html(1.0, status), "path_plot": figure,
               "path_summary": {"run_id": run_id, "seeds": [int(x) for x in labels],
                                "explained": [round(v, 4) for v in projection.explained],
                                "steps": [len(p) - 1 for p in paths], "shared": shared}}


def build_attention(tr: Translator, settings: AppSettings, main: dict[str, Any], handlers: InsideHandlers) -> None:
    """The attention section: a step slider (0 = all steps), one map per word, the player."""
    gr.Markdown(tr("text2image.attention_intro"), latex_delimiters=LATEX)
    with gr.Row():
        step = gr.Slider(0, 100, value=0, step=1, label=tr("text2image.attention_step_slider"),
                         elem_id="t2i-attention-step", scale=3)
        show = gr.Button(tr("text2image.attention_show"), variant="primary", elem_id="t2i-attention-run", scale=1)
    status = gr.HTML(elem_id="t2i-attention-status")
    gallery = gr.Gallery(label=tr("text2image.attention_gallery"), columns=6, height="auto", format="png",
                         object_fit="contain", elem_id="t2i-attention-gallery", elem_classes=["dl-pixelated"])
    player = frame_player(tr, "t2i-attention-player", "text2image.player_slider")
    summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-attention-summary")
    outputs = dict(attention_status=status, attention_gallery=gallery, attention_summary=summary)
    attention = bind(guarded(tr)(handlers.attention), outputs)
    event = dict(fn=attention, inputs=[main["run_id"], step, main["lang"]], outputs=list(outputs.values()),
                 js=LANG_JS, concurrency_id="light", show_progress="hidden")
    show.click(api_name="text_to_image_attention", **event).success(
        bind(guarded(tr)(handlers.attention_player), {"attention_player": player}), [main["run_id"], main["lang"]],
        [player], js=LANG_JS, api_visibility="private", concurrency_id="light", show_progress="minimal")
    step.input(api_visibility="private", trigger_mode="always_last", **event)


def build_path(tr: Translator, settings: AppSettings, main: dict[str, Any], handlers: InsideHandlers) -> None:
    """The latent-path section: other seeds, one button, the map."""
    gr.Markdown(tr("text2image.path_intro"), latex_delimiters=LATEX)
    with gr.Row():
        seeds = gr.Slider(0, MAX_OTHER_SEEDS, value=2, step=1, label=tr("text2image.path_seeds"),
                          elem_id="t2i-path-seeds", scale=3)
        draw = gr.Button(tr("text2image.path_run"), variant="primary", elem_id="t2i-path-run", scale=1)
    status = gr.HTML(elem_id="t2i-path-status")
    plot = gr.Plot(label=tr("text2image.path_plot"), elem_id="t2i-path-plot", format="png")
    summary = gr.JSON(label=tr("text2image.summary"), elem_id="t2i-path-summary")
    outputs = dict(path_status=status, path_plot=plot, path_summary=summary)
    draw.click(bind(guarded(tr)(handlers.path), outputs), [main["run_id"], seeds, main["lang"]],
               list(outputs.values()), js=LANG_JS, api_name="text_to_image_path", show_progress="hidden",
               **settings.model_events())
