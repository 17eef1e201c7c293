"""Shared fixtures: one real app server per test session, on a free loopback port."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """Launch the real app (as `python app.py` builds it, drawing processes included) and yield its URL."""
    import app
    from diffusion import images

    args = app.parse_args(["--host", "127.0.0.1", "--device", "cpu"])
    settings = app.settings_from_args(args)
    app.guard_uploads()
    # The server runs in this process, whose unit tests hand the lessons files in pytest's own
    # temp folder: that folder is allowed too (a file elsewhere is still refused: test_hostile).
    images.restrict_uploads([*images._UPLOAD_ROOTS, tmp_path_factory.getbasetemp()])
    demo, tr = app.create_app(settings)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs(settings, tr))
    app.start_examples(settings)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        settings.jobs.shutdown()
        demo.close()
        settings.render_pool.close()


@pytest.fixture
def spaces(monkeypatch):
    """The ``spaces`` test double (``tests/zerogpu``), switched on and decorating the app's GPU stream.

    As on a ZeroGPU Space at start-up: every :func:`diffusion.serving.gpu.execute` then runs in
    a forked worker. Torch runs one thread here too, as in the double's workers, so the same
    sums come in the same order and a test can compare the bits.
    """
    import importlib
    import sys
    from pathlib import Path

    import torch

    from diffusion.serving import gpu

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "zerogpu"))
    sys.modules.pop("spaces", None)
    double = importlib.import_module("spaces")
    monkeypatch.setattr(gpu, "_gpu_stream", double.GPU(duration=gpu.duration_s)(gpu._stream))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield double
    torch.set_num_threads(threads)
    double.reset()
    sys.modules.pop("spaces", None)


@pytest.fixture(scope="session")
def client(app_server):
    """A gradio_client connected to the running app, as a user's script would be."""
    from gradio_client import Client

    return Client(app_server, verbose=False)
