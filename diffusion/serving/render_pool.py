"""Draw figures in worker processes, off the web server's interpreter lock.

Matplotlib holds Python's interpreter lock while it draws, so in one server process
every figure of every student is drawn one at a time, however many cores the
machine has: on a 2-core CPU two threads drawing heat figures side by side took as
long as one thread drawing them in turn. A classroom
then waits on the lock while a core sits idle. :class:`RenderPool` keeps a few
small worker processes (``python -m diffusion.serving.render_pool``, each with only
numpy and matplotlib, no torch, no web server) that draw in parallel.

The protocol is one JSON object per line on the worker's stdin and stdout; no
pickle crosses the pipe. A request names a task from :data:`TASKS` and carries
only validated numbers and plot text; the reply carries PNG pictures as data URLs.
When a worker is missing, crashes or takes longer than the timeout, the pool
returns ``None`` and the caller draws in its own process, so a broken pool costs
speed, never an answer.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from diffusion.lessons import heat
from diffusion.lessons.heat import figures as heat_plots
from diffusion.lessons.noising import figures as noising_plots

log = logging.getLogger(__name__)
MAX_REPLY_BYTES = 32 * 2**20  # four plot pictures are a few hundred kB


def default_render_workers(cores: int | None = None) -> int:
    """One drawing process per core, at most 4; none on a single core, where they could not run side by side."""
    cores = cores or os.cpu_count() or 1
    return 0 if cores < 2 else min(4, cores)


def data_url(png: bytes) -> str:
    """PNG bytes as the data URL that gradio's Plot component shows."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_url(figure: Figure) -> str:
    """``figure`` as a PNG data URL, as gradio's Plot component sends a matplotlib figure.

    zlib level 1 instead of 6: faster to encode, for files a little larger.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", pil_kwargs={"compress_level": 1})
    return data_url(buffer.getvalue())


def heat_figures(result: heat.HeatResult, frame: int, text: dict[str, str]) -> list[Figure]:
    """The four figures of one heat-equation run: heat map, profile at ``frame``, error, mass."""
    return [heat_plots.plot_heatmap(result, text), heat_plots.plot_profile(result, frame, text),
            heat_plots.plot_error(result, text), heat_plots.plot_mass(result, text)]


def _heat_task(request: dict[str, Any]) -> list[str]:
    # The run is repeated here rather than sent: its frames are megabytes of JSON, its
    # simulation milliseconds (and deterministic, so the pictures match the server's run).
    result = heat.simulate(heat.HeatParams(**request["params"]).validated())
    text = {str(k): str(v) for k, v in dict(request.get("text") or {}).items()}
    return [png_data_url(f) for f in heat_figures(result, int(request["frame"]), text)]


def histogram_picture(histogram: dict[str, Any], t: int, text: dict[str, str]) -> list[str]:
    """Lesson 2's pixel histogram (from :func:`noising_plots.histogram_data`) as a PNG data URL.

    The schedule figure is not drawn here: it needs torch to build the schedules, and
    the server redraws only its t marker anyway.
    """
    return [png_data_url(noising_plots.draw_histogram(histogram, t, text))]


def _histogram_task(request: dict[str, Any]) -> list[str]:
    histogram = request["histogram"]
    for key in ("edges", "noisy", "clean"):
        if not (isinstance(histogram[key], list) and len(histogram[key]) <= 1000):
            raise ValueError(f"histogram {key} must be a list of at most 1000 numbers")
    text = {str(k): str(v) for k, v in dict(request.get("text") or {}).items()}
    return histogram_picture(histogram, int(request["t"]), text)


TASKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {"heat": _heat_task, "histogram": _histogram_task}


def heat_request(params: heat.HeatParams, frame: int, text: dict[str, str]) -> dict[str, Any]:
    """The JSON request that draws :func:`heat_figures` in a worker."""
    return {"task": "heat", "params": asdict(params), "frame": int(frame), "text": dict(text)}


def histogram_request(histogram: dict[str, Any], t: int, text: dict[str, str]) -> dict[str, Any]:
    """The JSON request that draws :func:`histogram_picture` in a worker."""
    return {"task": "histogram", "histogram": histogram, "t": int(t), "text": dict(text)}


def serve(lines: Any = None, out: Any = None) -> None:
    """The worker's loop: read a request per line, answer a line; stop at end of input."""
    lines = sys.stdin if lines is None else lines
    out = sys.stdout if out is None else out
    for line in lines:
        try:
            request = json.loads(line)
            reply = {"ok": True, "pictures": TASKS[request["task"]](request)}
        except Exception as error:  # noqa: BLE001 - reported to the pool, which draws in-process instead
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Worker:
    def __init__(self) -> None:
        root = Path(__file__).resolve().parents[2]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "diffusion.serving.render_pool"], cwd=root, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)

    def ask(self, request: dict[str, Any], timeout: float) -> list[str] | None:
        """The worker's pictures; None (and the worker ended) on a crash, a hang or a garbled reply."""
        # A watchdog ends a worker that hangs; readline then returns "" and the caller moves on.
        watchdog = threading.Timer(timeout, self.process.kill)
        watchdog.start()
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline(MAX_REPLY_BYTES)
            reply = json.loads(line) if line.endswith("\n") else None
        except (OSError, ValueError):
            reply = None
        finally:
            watchdog.cancel()
        if not isinstance(reply, dict):
            self.end()  # dead, hung or out of step with its pipe: never reuse it
            return None
        if not reply.get("ok"):
            log.warning("render worker refused a task: %s", reply.get("error"))
            return None
        return [str(p) for p in reply["pictures"]]

    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self) -> None:
        self.process.kill()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.warning("render worker %s did not end", self.process.pid)

    def close(self) -> None:
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class RenderPool:
    """``workers`` drawing processes, started on first use; ``workers=0`` means draw in-process.

    :meth:`run` blocks until a worker is free, so at most ``workers`` figures are drawn at
    once and the rest wait their turn, first come first served.
    """

    def __init__(self, workers: int, timeout: float = 60.0) -> None:
        self.workers = max(0, int(workers))
        self.timeout = timeout
        self._idle: queue.Queue[_Worker | None] = queue.Queue()
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the workers now (otherwise the first request does). Their imports run in the
        new processes, so this returns at once; the first drawing waits for them."""
        with self._lock:
            if self._started:
                return
            self._started = True
            for _ in range(self.workers):
                self._idle.put(self._spawn())

    def _spawn(self) -> _Worker | None:
        try:
            return _Worker()
        except OSError as error:
            log.warning("could not start a render worker (%s); drawing in-process", error)
            return None

    def run(self, request: dict[str, Any], wait: bool = True) -> list[str] | None:
        """The task's pictures, or None when the caller should draw them itself.

        With ``wait=False`` it returns None at once when every worker is busy: a figure
        that takes tens of milliseconds is drawn sooner in the caller's process than
        after the heat-equation runs queued ahead of it.
        """
        if self.workers == 0:
            return None
        self.start()
        if wait:
            worker = self._idle.get()
        else:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                return None
        try:
            if worker is None or not worker.alive():
                worker = self._spawn()
                if worker is None:
                    return None
            pictures = worker.ask(request, self.timeout)
            if pictures is None and not worker.alive():
                worker.close()
                worker = self._spawn()  # replaced for the next request; this one is drawn in-process
            return pictures
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop every worker (the pool starts afresh if used again)."""
        with self._lock:
            while not self._idle.empty():
                worker = self._idle.get_nowait()
                if worker is not None:
                    worker.close()
            self._started = False


if __name__ == "__main__":
    serve()
