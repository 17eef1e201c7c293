"""``python -m diffusion.bench load``: a whole classroom on one server.

Starts the real app (``python app.py``) in a child process on loopback, then N
simulated students (threads, each with its own ``gradio_client.Client``) use it for
a bounded time with a realistic mix: mostly the heat equation and forward noising,
some sampling and denoising, a few text-to-image runs, and some double clicks
(the same request sent twice at once). Every request must complete without a
server error.

The students arrive one after another within ``--arrive-within`` seconds (default
20) and then think 3–12 s between clicks. Each fetches the files of every answer, as
a browser showing them would.

Reported per endpoint: completed and failed requests, p50 and p95 latency (from
submit until the last output and its files have arrived), the p95 of requests made
while the class was still arriving and after, and queue wait (from submit until the
server starts the job); plus the peak resident memory of the server and its drawing
processes, and how busy the cores were. The light endpoints (heat, noising) run in
their own concurrency group, so their p95 stays interactive while model jobs queue
one at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diffusion.bench.load_mix import actions, example_picture

ROOT = Path(__file__).resolve().parents[2]
LIGHT = ("heat_simulate", "forward_noise")
# "Thirty students at the same minute": they open the page over 20 seconds, not in one instant.
ARRIVE_WITHIN_S = 20.0


@dataclass
class Stats:
    """What the students saw, per endpoint."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # monotonic, per latency
    queue: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failed: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, seconds: float, waited: float | None, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latency[name].append(seconds)
                self.started[name].append(time.monotonic() - seconds)
                if waited is not None:
                    self.queue[name].append(waited)
            else:
                self.failed[name].append(error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    """``python app.py`` on 127.0.0.1:port, offline; returns once it answers HTTP."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                "--log-level", "WARNING", *extra], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import urllib.request

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited: {process.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read(100)
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the app did not start within 180 s")


def fetch_files(http: Any, answer: Any) -> int:
    """Download every file an answer points to, as the browser showing it would; returns the bytes.

    gradio_client's own downloads open a new HTTP client, with a new TLS context, for
    every file: CPU the simulated students take from the server they are measuring
    (the report's "cores busy" line shows how much they use). One kept-alive client per
    student does what a browser does. A file cut short raises, as it did with
    gradio_client's downloads.
    """
    if isinstance(answer, dict):
        if isinstance(answer.get("url"), str) and "path" in answer:
            response = http.get(answer["url"])
            response.raise_for_status()
            return len(response.content)
        return sum(fetch_files(http, value) for value in answer.values())
    if isinstance(answer, (list, tuple)):
        return sum(fetch_files(http, value) for value in answer)
    return 0


@contextlib.contextmanager
def connect(url: str) -> Iterator[tuple[Any, Any]]:
    """A student's two connections: the gradio client (files not downloaded) and one HTTP
    client for the files; both closed afterwards (the gradio client's heartbeat thread too)."""
    import httpx
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False)
    try:
        with httpx.Client(timeout=120) as http:
            yield client, http
    finally:
        client.close()


def _one_request(client: Any, http: Any, name: str, kwargs: dict[str, Any], stats: Stats) -> Any:
    """Send one request, wait for it and fetch its files; returns the answer (None if it failed)."""
    from gradio_client.utils import Status

    start = time.perf_counter()
    waited = None
    try:
        job = client.submit(**kwargs, api_name=f"/{name}")
        while not job.done():
            code = job.status().code
            if waited is None and code in (Status.PROCESSING, Status.ITERATING, Status.PROGRESS, Status.FINISHED):
                waited = time.perf_counter() - start
            time.sleep(0.05)
        answer = job.result()
        fetch_files(http, answer)
        stats.add(name, time.perf_counter() - start, waited, None)
        return answer
    except Exception as error:  # noqa: BLE001 - every failure is counted and shown
        stats.add(name, time.perf_counter() - start, None, f"{type(error).__name__}: {str(error)[:120]}")
        return None


def student(url: str, seed: int, deadline: float, stats: Stats, mix: dict[str, tuple[float, dict]],
            think: tuple[float, float] = (3.0, 12.0), new_noising_seed: bool = False) -> None:
    """One student: think, click, sometimes double-click, until the bell."""
    rng = random.Random(seed)
    names, weights = list(mix), [w for w, _ in mix.values()]
    with connect(url) as (client, http):
        while time.monotonic() < deadline:
            name = rng.choices(names, weights)[0]
            kwargs = dict(mix[name][1], **({"seed": rng.randrange(1000)} if "seed" in mix[name][1] else {}))
            # Students move the sliders: every request differs, so no answer comes from a cache by luck.
            if name == "heat_simulate":
                kwargs["diffusivity"] = round(rng.uniform(0.02, 0.12), 3)
            elif name == "forward_noise":
                # Lesson 2 is about dragging t: each student keeps the seed in the box (their own,
                # so 30 students still build 30 noise chains) unless --noising-new-seed says otherwise.
                kwargs["t"] = rng.randrange(1001)
                kwargs["seed"] = rng.randrange(1000) if new_noising_seed else seed % 1000
            if rng.random() < 0.1:  # a double click: the same request twice at once
                twin = threading.Thread(target=_one_request, args=(client, http, name, kwargs, stats))
                twin.start()
                _one_request(client, http, name, kwargs, stats)
                twin.join()
            else:
                answer = _one_request(client, http, name, kwargs, stats)
                if name == "text_to_image" and answer is not None and rng.random() < 0.5:
                    # Looking inside the picture just made: its attention per word, or its latent's path.
                    run_id = answer[6]
                    inside = rng.choice((("text_to_image_attention", dict(run_id=run_id, step=0, lang="en")),
                                         ("text_to_image_path", dict(run_id=run_id, other_seeds=1, lang="en"))))
                    _one_request(client, http, *inside, stats)
            time.sleep(rng.uniform(*think))  # looking at the result, moving a slider


def run_load(students: int, seconds: float, url: str | None = None, extra: list[str] | None = None,
             think: tuple[float, float] = (3.0, 12.0), new_noising_seed: bool = False,
             arrive_within: float = ARRIVE_WITHIN_S, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Run the classroom; returns the figures (also used by the test suite's small version).

    ``only`` keeps just those endpoints of the mix (their shares renormalised), e.g. to load
    one lesson's new endpoints.

    Students arrive one after another, evenly spread over ``arrive_within`` seconds;
    latencies are reported for all requests, and split into those that started while
    the class was arriving and those that started after.
    """
    import psutil

    process = None
    if url is None:
        port = _free_port()
        process = start_server(port, extra or [])
        url = f"http://127.0.0.1:{port}/"
    peak = [0]
    done = threading.Event()
    server = psutil.Process(process.pid) if process is not None else None
    me = psutil.Process()

    def watch() -> None:
        if server is None:
            return
        while not done.is_set():
            try:  # the server and its drawing processes together
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in _family(server)))
            except psutil.Error:
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stats = Stats()
    mix = actions(example_picture())
    health = mix["heat_simulate"][1]  # the request that shows the server still answers afterwards
    if only:
        unknown = set(only) - set(mix)
        if unknown:
            raise ValueError(f"not in the mix: {sorted(unknown)}")
        mix = {name: mix[name] for name in only}
    cpu_before = (_cpu_seconds(server), _cpu_seconds(me, family=False))
    start = time.monotonic()
    deadline = start + seconds
    threads = [threading.Thread(target=student, args=(url, i, deadline, stats, mix, think, new_noising_seed))
               for i in range(students)]
    arrive_within = max(0.0, min(float(arrive_within), seconds / 2))
    for i, thread in enumerate(threads):
        thread.start()
        time.sleep(arrive_within / max(students, 1))
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    # Where the machine's time went: if the server is near "cores" it is short of CPU, not of threads.
    cpu = {"cores": psutil.cpu_count(), "server": _share(_cpu_seconds(server), cpu_before[0], wall),
           "students": _share(_cpu_seconds(me, family=False), cpu_before[1], wall)}
    # The server still answers a fresh request after the rush.
    after = Stats()
    with connect(url) as (client, http):
        _one_request(client, http, "heat_simulate", health, after)
    done.set()
    if process is not None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    report: dict[str, Any] = {"students": students, "seconds": round(wall, 1), "think_s": list(think),
                              "arrive_within_s": arrive_within,
                              "noising_new_seed_every_click": new_noising_seed,
                              "endpoints": {},
                              "peak_rss_mb": round(peak[0] / 2**20, 1) if peak[0] else None,
                              "healthy_after": not after.failed, "cpu_cores_busy": cpu}
    settled = start + arrive_within  # the last student is in
    followed = sorted((set(stats.latency) | set(stats.failed)) - set(mix))  # looks inside a picture just made
    for name in [*mix, *followed]:
        lat, queue = stats.latency.get(name, []), stats.queue.get(name, [])
        arriving = [x for x, t0 in zip(lat, stats.started.get(name, [])) if t0 < settled]
        after = [x for x, t0 in zip(lat, stats.started.get(name, [])) if t0 >= settled]
        report["endpoints"][name] = {
            "completed": len(lat), "failed": len(stats.failed.get(name, [])),
            "errors": sorted(set(stats.failed.get(name, [])))[:3],
            "p50_s": _pct(lat, 50), "p95_s": _pct(lat, 95),
            "queue_p50_s": _pct(queue, 50), "queue_p95_s": _pct(queue, 95),
            "arriving_p95_s": _pct(arriving, 95), "after_p95_s": _pct(after, 95)}
    total = sum(e["completed"] for e in report["endpoints"].values())
    failed = sum(e["failed"] for e in report["endpoints"].values())
    report.update(completed=total, failed=failed,
                  light_p95_s=max(((report["endpoints"][n]["p95_s"] or 0.0) for n in LIGHT if n in mix), default=None),
                  light_after_p95_s=max(((report["endpoints"][n]["after_p95_s"] or 0.0) for n in LIGHT if n in mix),
                                        default=None))
    return report


def _cpu_seconds(process: Any, family: bool = True) -> float | None:
    """User + system CPU seconds of ``process``, with its live children if ``family`` (None: nothing to watch)."""
    if process is None:
        return None
    total = 0.0
    for member in (_family(process) if family else [process]):
        try:
            times = member.cpu_times()
        except Exception:  # noqa: BLE001 - a process may have gone
            continue
        total += times.user + times.system
    return total


def _family(process: Any) -> list[Any]:
    """``process`` and its live child processes (the app's drawing workers)."""
    try:
        return [process, *process.children(recursive=True)]
    except Exception:  # noqa: BLE001 - gone
        return [process]


def _share(now: float | None, before: float | None, wall: float) -> float | None:
    """CPU seconds per wall second between two readings: 1.0 = one core busy all the time."""
    return None if now is None or before is None else round((now - before) / wall, 2)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def print_report(report: dict[str, Any]) -> None:
    print(f"{report['students']} students for {report['seconds']} s: {report['completed']} requests completed, "
          f"{report['failed']} failed; peak RSS of the server and its drawing processes {report['peak_rss_mb']} MB; "
          f"answers afterwards: {'yes' if report['healthy_after'] else 'NO'}")
    print(f"The students arrived one after another within {report['arrive_within_s']:g} s.")
    print("| endpoint | completed | failed | p50 s | p95 s | p95 s while arriving | p95 s after | "
          "queue p50 s | queue p95 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in report["endpoints"].items():
        print(f"| {name} | {e['completed']} | {e['failed']} | {e['p50_s']} | {e['p95_s']} | "
              f"{e['arriving_p95_s']} | {e['after_p95_s']} | {e['queue_p50_s']} | {e['queue_p95_s']} |")
        for error in e["errors"]:
            print(f"|   error | {error} |")
    print(f"light endpoints' p95: {report['light_p95_s']} s overall, {report['light_after_p95_s']} s once "
          "everyone had arrived")
    cpu = report["cpu_cores_busy"]
    print(f"cores busy on average (of {cpu['cores']}): server {cpu['server']}, simulated students {cpu['students']}")


def run(args: argparse.Namespace) -> int:
    """Run the classroom against this machine only, print the table; exit 1 on any failure."""
    from urllib.parse import urlparse

    if args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        print("error: --url must point at this machine (127.0.0.1 or localhost): a load test is not for "
              "other people's servers", file=sys.stderr)
        return 2
    report = run_load(args.students, args.seconds, args.url, think=(args.think_min, args.think_max),
                      new_noising_seed=args.noising_new_seed, arrive_within=args.arrive_within,
                      only=tuple(args.only) if args.only else None)
    print_report(report)
    if args.out:
        import json

        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0 if report["failed"] == 0 and report["healthy_after"] else 1


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``load`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser("load", help="N simulated students on one server (loopback only)",
                                   description=__doc__.split("\n\n")[1])
    parser.add_argument("--students", type=int, default=30, help="default 30")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they keep clicking (default 60)")
    parser.add_argument("--arrive-within", type=float, default=ARRIVE_WITHIN_S,
                        help=f"the students arrive one after another within this many seconds (default "
                             f"{ARRIVE_WITHIN_S:g}; 3 is a class that clicks at the same moment)")
    parser.add_argument("--think-min", type=float, default=3.0, help="shortest pause between clicks, s (default 3)")
    parser.add_argument("--think-max", type=float, default=12.0, help="longest pause between clicks, s (default 12)")
    parser.add_argument("--noising-new-seed", action="store_true",
                        help="every noising request with a new seed, so each one builds a new noise chain "
                             "(the worst case; default: each student keeps one seed and drags t)")
    parser.add_argument("--url", help="an app that is already running on this machine (default: start one)")
    parser.add_argument("--only", nargs="+", metavar="ENDPOINT",
                        help="keep only these endpoints of the mix (e.g. text_to_image text_to_image_compare)")
    parser.add_argument("--out", help="write the JSON report here")
    parser.set_defaults(func=run)
