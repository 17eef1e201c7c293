"""Diffusion Lab: an interactive web app that teaches how diffusion models work.

Run ``python app.py --help`` for the options. The app serves six lesson tabs, each
built by one module in ``diffusion/ui/``; the computations live in ``diffusion/``.
"""

from __future__ import annotations

# ZeroGPU Spaces need `spaces` imported before torch; elsewhere it is simply absent.
try:
    import spaces  # noqa: F401
except ImportError:
    spaces = None

import argparse
import atexit
import logging
import os
import sys
import threading
from pathlib import Path

import gradio as gr
import torch

import diffusion
from diffusion import images
from diffusion.devices import DEVICE_CHOICES, describe_device, resolve_device, server_threads
from diffusion.examples import EXAMPLES_DIR
from diffusion.serving.cores import CoreShare
from diffusion.serving.render_pool import RenderPool, default_render_workers
from diffusion.ui import applications, denoising, heat, lab2d, noising, sampling, text2image
from diffusion.ui.i18n import FORCE_LANG_JS, SWITCH_LANG_JS, Translator
from diffusion.ui.patches import publish_cached_images_atomically
from diffusion.ui.settings import AppSettings

TABS = (heat, noising, lab2d, sampling, denoising, text2image, applications)  # the lesson order
ROOT = Path(__file__).resolve().parent

CSS = """
#dl-locale { display: none !important; }
.dl-notice { border-left: 4px solid #f59e0b; padding: 0.4em 0.8em; background: rgba(245, 158, 11, 0.08); }
.dl-warning { border-left: 4px solid #dc2626; padding: 0.4em 0.8em; background: rgba(220, 38, 38, 0.08); }
#dl-header h1 { margin-bottom: 0; }
#dl-lang-btn { max-width: 8em; }
.dl-progress { height: 0.7em; border-radius: 0.35em; background: rgba(128, 128, 128, 0.25); overflow: hidden; }
.dl-progress-bar { height: 100%; background: #f97316; transition: width 0.1s linear; }
.dl-progress-text { margin-top: 0.3em; font-variant-numeric: tabular-nums; }
/* Digits are 28x28 pixels: let the browser scale them up without blurring. */
.dl-pixelated img { image-rendering: pixelated; }
.dl-pixelated .image-frame img { width: 100%; height: 100%; object-fit: contain; }
#sample-gallery img { object-fit: contain !important; }
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags. Host and port also follow GRADIO_SERVER_NAME/PORT (as on Spaces)."""
    p = argparse.ArgumentParser(description="Diffusion Lab: learn how diffusion models work.")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on; 0.0.0.0 serves a classroom network (default: %(default)s)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   help="port to listen on (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="also create a temporary public gradio.live link")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where models run: auto picks cuda, then mps, then cpu (default: %(default)s)")
    p.add_argument("--lang", choices=("auto", "en", "zh-CN"), default="auto",
                   help="UI language; auto follows each browser (default: %(default)s)")
    p.add_argument("--heavy-concurrency", type=int, default=0, metavar="N",
                   help="model jobs (sampling, denoising, text to image, 2-D training) that run at once; "
                        "0 = one per core (at most 4) on a CPU, where they share the cores, one on a GPU, "
                        "where waiting samples are batched instead (default: %(default)s)")
    p.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                   help="run waiting sampling requests of the same shape as one batch; auto: on CUDA only, "
                        "where it pays (default: %(default)s)")
    p.add_argument("--max-jobs-per-client", type=int, default=3, metavar="N",
                   help="model runs one browser session may have waiting or running (default: %(default)s)")
    p.add_argument("--light-concurrency", type=int, default=8, metavar="N",
                   help="light CPU jobs (heat equation, noising) run at once (default: %(default)s)")
    p.add_argument("--render-workers", type=int, default=-1, metavar="N",
                   help="processes that draw the light lessons' figures in parallel; 0 = draw in the server "
                        "process (default: one per core, at most 4; none on a 1-core machine)")
    p.add_argument("--torch-threads", type=int, default=0, metavar="N",
                   help="CPU threads per model job; 0 = every core while no heat or noising request runs, "
                        "half of them while one does (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="requests waiting in the queue before new ones are turned away (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=int, default=10, metavar="MB",
                   help="largest upload accepted (default: %(default)s)")
    p.add_argument("--t2i-model", action="append", default=[], metavar="ID_OR_FOLDER",
                   help="text-to-image model to offer (a diffusers model id or folder); repeat for more, "
                        "the first is the default (default: the embedded model)")
    p.add_argument("--allow-any-model", action="store_true",
                   help="let users type any Hugging Face model id (off: only the listed models)")
    p.add_argument("--no-safety-checker", dest="safety_checker", action="store_false",
                   help="run real text-to-image models without their content filter (on by default: every "
                        "picture they show is checked by the Stable Diffusion safety checker)")
    p.add_argument("--offline", action="store_true", default=os.environ.get("HF_HUB_OFFLINE") == "1",
                   help="never download models (also set by HF_HUB_OFFLINE=1)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    if args.heavy_concurrency < 0:
        p.error("--heavy-concurrency must be 0 (automatic) or more")
    for name in ("light_concurrency", "max_queue", "max_upload_mb", "max_jobs_per_client"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.torch_threads < 0:
        p.error("--torch-threads must be 0 (automatic) or more")
    if args.render_workers < -1:
        p.error("--render-workers must be 0 (none) or more")
    return args


def settings_from_args(args: argparse.Namespace) -> AppSettings:
    """Resolve the device and collect the settings the tabs need."""
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return AppSettings(
        device=str(device), device_label=describe_device(device),
        light_concurrency=args.light_concurrency,
        heavy_concurrency=args.heavy_concurrency or (1 if device.type != "cpu" else min(4, os.cpu_count() or 1)),
        max_queue=args.max_queue, max_upload_mb=args.max_upload_mb, lang=args.lang,
        t2i_models=tuple(args.t2i_model), allow_any_model=args.allow_any_model, offline=args.offline,
        safety_checker=args.safety_checker,
        zero_gpu=bool(os.environ.get("SPACES_ZERO_GPU")),
        batching=args.batching == "on" or (args.batching == "auto" and device.type == "cuda"),
        cores=CoreShare(idle_threads=args.torch_threads or None, busy_threads=args.torch_threads or None),
        max_jobs_per_client=args.max_jobs_per_client,
        render_pool=RenderPool(default_render_workers() if args.render_workers == -1 else args.render_workers),
    )


def create_app(settings: AppSettings) -> tuple[gr.Blocks, Translator]:
    """Compose the Blocks from the tab modules, with the queue configured."""
    # A class asks for the same pictures at once: gradio must not rewrite a cached picture
    # while another student downloads it (see the function's docstring).
    publish_cached_images_atomically()
    tr = Translator()
    tr.fill("app.footer", device=settings.device_label, torch=torch.__version__.split("+")[0],
            version=diffusion.__version__)
    # Streamed frames and exports land in gradio's cache: drop files older than an hour.
    with gr.Blocks(title="Diffusion Lab · 扩散实验室", delete_cache=(1800, 3600)) as demo:
        gr.HTML(tr("locale_code"), elem_id="dl-locale")
        with gr.Row(elem_id="dl-header", equal_height=False):
            with gr.Column(scale=6):
                gr.Markdown("# " + "Diffusion Lab · 扩散实验室")
                gr.Markdown(tr("app.tagline"))
            with gr.Column(scale=1, min_width=120):
                switch = gr.Button(tr("app.switch_lang"), size="sm", elem_id="dl-lang-btn")
        switch.click(None, js=SWITCH_LANG_JS)
        if settings.lang != "auto":  # registered first, so it runs before the tabs' load events
            demo.load(None, js=FORCE_LANG_JS % settings.lang)
        with gr.Tabs():
            for tab in TABS:
                name = tab.__name__.rsplit(".", 1)[-1]
                with gr.Tab(tr(f"{name}.tab"), id=name, elem_id=f"tab-{name}"):
                    tab.build(tr, settings, demo)
        gr.Markdown(tr("app.footer"), elem_id="dl-footer")
    # While a heat or noising request runs, model jobs leave it a core (diffusion.serving.cores).
    for block_fn in demo.fns.values():
        if block_fn.concurrency_id == "light" and block_fn.fn is not None:
            block_fn.fn = settings.cores.marking(block_fn.fn)
    demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.light_concurrency)
    return demo, tr


def launch_kwargs(settings: AppSettings, tr: Translator) -> dict:
    """Arguments for ``demo.launch`` shared by ``main`` and the tests."""
    return dict(
        i18n=tr.i18n, css=CSS, show_error=True,
        max_file_size=f"{settings.max_upload_mb}mb",
        allowed_paths=[], footer_links=["api", "gradio", "settings"],
        # A waiting model request holds a thread while it shows its place in the queue.
        max_threads=settings.max_queue + 2 * settings.light_concurrency + 8,
    )


def guard_uploads() -> None:
    """Open uploads only from gradio's upload folder and our examples (never a path a visitor names)."""
    from gradio.utils import get_upload_folder

    images.restrict_uploads([get_upload_folder(), EXAMPLES_DIR])


def start_examples(settings: AppSettings) -> threading.Thread:
    """Compute the example runs the model tabs open with, one after another, in the background.

    Called once the server answers, so start-up is not slower; they run as ordinary jobs of
    the job queue, and a page opened before they are ready follows them instead of waiting
    for its own.
    """
    def work() -> None:
        for make in settings.examples:
            try:
                make()
            except Exception:  # noqa: BLE001 - a tab whose example fails still works; the log says why
                logging.getLogger("diffusion").exception("an example run failed")

    thread = threading.Thread(target=work, daemon=True, name="examples")
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    """Parse flags, build the app and serve it until interrupted."""
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.torch_threads or server_threads())
    settings = settings_from_args(args)
    guard_uploads()
    settings.render_pool.start()  # the workers start up while the app is built
    atexit.register(settings.render_pool.close)
    atexit.register(settings.jobs.shutdown)  # registered later, so it runs first: no job left inside torch
    demo, tr = create_app(settings)
    logging.getLogger("diffusion").info("device: %s", settings.device_label)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True,
                **launch_kwargs(settings, tr))
    start_examples(settings)
    demo.block_thread()


if __name__ == "__main__":
    sys.exit(main())
