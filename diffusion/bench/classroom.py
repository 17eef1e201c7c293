"""``python -m diffusion.bench classroom``: a whole class presses the same button.

N students, each with their own ``gradio_client.Client``, press one tab's main button
with its default settings at seeded uniform random times within S seconds, on a server
on this machine only; before them one student presses it alone, so the cost of serving
a class shows beside that of serving one person.

``--seeds own``: student i sets the seed box to F+i-1 (F = ``--first-seed``); ``--seeds
same``: everyone keeps the default seed, so the server may compute the answer once. The
student alone uses seed F+N, which nobody in the class uses, so the class is never
answered from that run's cache (heat hides its seed box: it gets that seed through the
API, the class sends none). ``--with-light K``: K more clients keep moving a slider on
heat and noising during the burst. ``--flood M``: one client submits M sampling requests
at once (seeds F+N+2, ...), another student the default request (seed F+N+1) 1 s later.
A request still unanswered at the global deadline is cancelled and counted as failed.

Times from the click (just before ``client.submit``), over the answered requests: *first
response*, the first message the server streams about the job (its place in the queue,
its start or an output: what a browser first shows); *first output*, the first message
with outputs; *answer*, the last output and its files downloaded. Also the failures and
their first messages, the cores busy (the machine's from ``/proc/stat``, niced share
apart; the server's; this bench's: the students, and the server when it runs in-process)
and the peak resident memory of the server and its drawing processes (None: not found).
A noising or denoising click uploads the example (a browser names the server's copy).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from diffusion import cli
from diffusion.bench.load import _cpu_seconds, _family, _free_port, _pct, _share, connect, fetch_files, start_server


# Tab → (its main button's API name, the seed box a student sees, a seed the default settings hide and ignore).
TABS = {"heat": ("/heat_simulate", None, "seed"), "noising": ("/forward_noise", "seed", None),
        "sampling": ("/sample", "seed", None), "denoising": ("/denoise", "seed", None),
        "text2image": ("/text_to_image", "seed", None), "lab2d": ("/lab2d_train", "seed", None)}
# The light clients move one slider each time, the other settings stay at their defaults.
LIGHT = {"/heat_simulate": lambda rng: {"diffusivity": round(rng.uniform(0.02, 0.12), 3)},
         "/forward_noise": lambda rng: {"t": rng.randrange(1001)}}
LIGHT_TARGET_P95_S = 1.0
LIGHT_MAX_REQUESTS = 500  # per light client: bounded even if a burst never ends


@dataclass
class Click:
    """What one student saw: seconds from the click, or the error that ended the request."""

    first: float | None = None  # the first message about the job
    first_kind: str | None = None  # "queue", "started" or "output"
    output: float | None = None  # the first message with outputs
    answer: float | None = None  # the last output and its files
    error: str | None = None


def press(client: Any, http: Any, api_name: str, kwargs: dict[str, Any], deadline: float) -> Click:
    """Submit one request and wait for its answer until ``deadline`` (monotonic); never raises."""
    click, seen, job = datetime.now(), Click(), None
    try:
        job = client.submit(**kwargs, api_name=api_name)
        fetch_files(http, job.result(timeout=max(0.0, deadline - time.monotonic())))
        seen.answer = (datetime.now() - click).total_seconds()
    except concurrent.futures.TimeoutError:
        seen.error = "no answer within the deadline"
        job.cancel()
    except Exception as error:  # noqa: BLE001 - every failure is counted and shown
        seen.error = f"{type(error).__name__}: {str(error)[:160]}"
    if job is not None:
        _read_messages(job, click, seen)
    return seen


def _read_messages(job: Any, click: datetime, seen: Click) -> None:
    """Fill ``first`` and ``output`` from the arrival times gradio_client stamps on each message's
    status update (it queues the message's output update, unstamped, just before)."""
    from gradio_client.utils import Status

    updates = getattr(job.communicator, "updates", None)
    carries_output = False
    while updates is not None:
        try:
            update = updates.get_nowait()
        except asyncio.QueueEmpty:
            break
        if update.type == "output":
            carries_output = carries_output or not getattr(update, "final", False)
            continue
        if update.time is None or update.code == Status.LOG:
            continue
        at = (update.time - click).total_seconds()
        answered = update.code == Status.FINISHED and update.success is not False
        if seen.first is None:
            seen.first = at
            seen.first_kind = ("output" if carries_output or answered else
                               "queue" if update.code == Status.IN_QUEUE else "started")
        if seen.output is None and (carries_output or answered):
            seen.output = at
        carries_output = False


def figures(clicks: list[Click]) -> dict[str, Any]:
    """Count, failures and p50 / p95 / max of each time, over the answered requests."""
    ok = [c for c in clicks if c.error is None]
    errors = [c.error for c in clicks if c.error is not None]

    def spread(values: list[float]) -> dict[str, float | None]:
        return {"p50": _pct(values, 50), "p95": _pct(values, 95), "max": round(max(values), 3) if values else None}

    return {"requests": len(clicks), "failed": len(errors), "errors": list(dict.fromkeys(errors))[:3],
            "first_response_s": spread([c.first for c in ok if c.first is not None]),
            "first_output_s": spread([c.output for c in ok if c.output is not None]),
            "answer_s": spread([c.answer for c in ok]),
            "first_message_was": dict(Counter(c.first_kind for c in ok if c.first_kind))}


def proc_stat() -> tuple[int, int, int] | None:
    """(busy, niced, all) jiffies of all cores since boot, from ``/proc/stat`` (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    values += [0] * (8 - len(values))  # user nice system idle iowait irq softirq steal
    return sum(values) - values[3] - values[4], values[1], sum(values)


class Monitor:
    """Peak RSS of the server's process tree (sampled every 0.2 s) and CPU use, per phase."""

    def __init__(self, server: Any) -> None:
        import psutil

        self.server, self.me, self.peak, self.stop = server, psutil.Process(), 0, threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while self.server is not None and not self.stop.wait(0.2):
            with contextlib.suppress(Exception):  # a drawing process may end between listing and reading it
                self.peak = max(self.peak, sum(p.memory_info().rss for p in _family(self.server)))

    def begin(self) -> None:
        self.peak, self.t0, self.stat = 0, time.monotonic(), proc_stat()
        self.cpu = (_cpu_seconds(self.server), _cpu_seconds(self.me, family=False))

    def end(self) -> dict[str, Any]:
        """Cores busy on average since :meth:`begin` (1.0 = one core all the time) and the peak RSS."""
        wall, stat = time.monotonic() - self.t0, proc_stat()
        machine, niced = ([round((now - then) * (os.cpu_count() or 1) / max(1, stat[2] - self.stat[2]), 2)
                           for now, then in zip(stat[:2], self.stat[:2])] if stat and self.stat else (None, None))
        return {"wall_s": round(wall, 1), "peak_rss_mb": round(self.peak / 2**20, 1) if self.peak else None,
                "cores_busy": {"cores": os.cpu_count(), "machine": machine, "niced": niced,
                               "server": _share(_cpu_seconds(self.server), self.cpu[0], wall),
                               "bench": _share(_cpu_seconds(self.me, family=False), self.cpu[1], wall)}}


def _server_process(url: str) -> Any:
    """The process listening on ``url``'s port, unless it is this one (then nothing to tell apart)."""
    import psutil

    port = urlparse(url).port
    with contextlib.suppress(Exception):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid not in (None, os.getpid()):
                return psutil.Process(conn.pid)
    return None


def _light(conn: tuple, seed: int, stop: threading.Event, deadline: float, seen: dict[str, list[Click]]) -> None:
    """One student dragging sliders on heat and noising, a request every 0.3–1 s, until ``stop``."""
    rng = random.Random(seed)
    for i in range(LIGHT_MAX_REQUESTS):
        if stop.is_set() or time.monotonic() >= deadline:
            return
        api_name = list(LIGHT)[i % len(LIGHT)]
        seen[api_name].append(press(*conn, api_name, LIGHT[api_name](rng), deadline))
        stop.wait(rng.uniform(0.3, 1.0))


def burst(conns: list[tuple[Any, Any]], api_name: str, kwargs: list[dict[str, Any]], offsets: list[float],
          deadline: float, light: list[tuple[Any, Any]], monitor: Monitor) -> dict[str, Any]:
    """Each student presses at their offset (s after the start); light clients run until all are answered."""
    clicks: list[Click] = [Click(error="not started") for _ in offsets]
    light_seen: dict[str, list[Click]] = {name: [] for name in LIGHT}  # made before the threads append
    stop = threading.Event()
    monitor.begin()
    t0 = time.monotonic()

    def student(i: int) -> None:
        time.sleep(max(0.0, t0 + offsets[i] - time.monotonic()))
        clicks[i] = press(*conns[i], api_name, kwargs[i], deadline)

    helpers = [threading.Thread(target=_light, args=(c, 1000 + j, stop, deadline, light_seen))
               for j, c in enumerate(light)]
    students = [threading.Thread(target=student, args=(i,)) for i in range(len(offsets))]
    for thread in helpers + students:
        thread.start()
    for thread in students:
        thread.join()
    stop.set()
    for thread in helpers:
        thread.join()
    return {"class": figures(clicks), **monitor.end(),
            **({"light": {name: figures(light_seen[name]) for name in LIGHT}} if light else {})}


def flood(url: str, student: tuple[Any, Any], m: int, seed: int, deadline: float) -> dict[str, Any]:
    """One client submits ``m`` sampling requests at once (seeds seed+1, ...); ``student`` presses 1 s later."""
    from gradio_client import Client

    client = Client(url, verbose=False, download_files=False, max_workers=m + 4)
    try:
        jobs = [client.submit(seed=seed + 1 + i, api_name="/sample") for i in range(m)]
        time.sleep(1.0)
        seen = press(*student, "/sample", {"seed": seed}, deadline)
        ended = [job.status().success for job in jobs if job.done()]  # a refusal counts here, not as a failure
        refusals = [f"{type(e).__name__}: {str(e)[:160]}" for j in jobs if j.done() and (e := j.future.exception(0))]
        for job in jobs:
            if not job.done():
                job.cancel()
    finally:
        client.close()
    return {"requests": m, "answered_before_the_student": ended.count(True), "refused": ended.count(False),
            "cancelled": m - len(ended), "refusals": list(dict.fromkeys(refusals))[:3], "student": figures([seen])}


@contextlib.contextmanager
def server(url: str | None, app_args: list[str]) -> Any:
    """``url``, or a fresh ``python app.py`` on a free loopback port; yields (url, server process or None)."""
    if url is not None:
        yield url, _server_process(url)
        return
    import psutil

    port = _free_port()
    process = start_server(port, app_args)
    threading.Thread(target=process.stderr.read, daemon=True).start()  # a full pipe would stall the server
    try:
        yield f"http://127.0.0.1:{port}/", psutil.Process(process.pid)
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        process.kill()


def run_classroom(tabs: list[str], students: int = 30, within: float = 10.0, seeds: str = "own",
                  with_light: int = 0, flood_m: int = 0, deadline_s: float = 600.0, url: str | None = None,
                  first_seed: int = 1, arrival_seed: int = 0, app_args: list[str] | None = None) -> dict[str, Any]:
    """Run the alone press, the burst (and the flood) for each tab; returns the figures as a dict."""
    arrivals = random.Random(arrival_seed)
    offsets = sorted(arrivals.uniform(0.0, within) for _ in range(students))
    report: dict[str, Any] = {"students": students, "within_s": within, "seeds": seeds, "first_seed": first_seed,
                              "arrival_seed": arrival_seed, "with_light": with_light, "deadline_s": deadline_s,
                              "light_target_p95_s": LIGHT_TARGET_P95_S, "tabs": {}, "flood": None}
    with server(url, app_args or []) as (url, process), contextlib.ExitStack() as stack:
        report["server_watched"] = process is not None
        monitor = Monitor(process)
        stack.callback(monitor.stop.set)
        conns = [stack.enter_context(connect(url)) for _ in range(students + 1 + with_light)]
        alone, pupils, light = conns[0], conns[1:students + 1], conns[students + 1:]
        api = alone[0].view_api(print_info=False, return_format="dict")["named_endpoints"]
        deadline = time.monotonic() + deadline_s
        for name in tabs:
            api_name, seed, hidden = TABS[name]
            params = {p["parameter_name"] for p in api.get(api_name, {}).get("parameters", [])}
            entry: dict[str, Any] = {"api_name": api_name, "seed_parameter": seed if seed in params else None}
            report["tabs"][name] = entry
            skip = (f"the app has no endpoint {api_name}" if api_name not in api else
                    "the global deadline had passed" if time.monotonic() >= deadline else None)
            if skip:
                entry["skipped"] = skip
                continue
            alone_kwargs = {seed or hidden: first_seed + students} if (seed or hidden) in params else {}
            if entry["seed_parameter"] is None:
                entry["note"] = "no seed a student can set on the default settings: --seeds changes nothing"
            own = seeds == "own" and entry["seed_parameter"] is not None
            kwargs = [{seed: first_seed + i} if own else {} for i in range(students)]
            monitor.begin()
            entry["alone"] = {**figures([press(*alone, api_name, alone_kwargs, deadline)]), **monitor.end()}
            entry["burst"] = burst(pupils, api_name, kwargs, offsets, deadline, light, monitor)
        if flood_m:
            report["flood"] = flood(url, alone, flood_m, first_seed + students + 1, deadline)
    groups = [f for e in report["tabs"].values() if "burst" in e
              for f in (e["alone"], e["burst"]["class"], *e["burst"].get("light", {}).values())]
    report["failed"] = sum(f["failed"] for f in groups) + (report["flood"]["student"]["failed"] if flood_m else 0)
    report["skipped"] = [name for name, entry in report["tabs"].items() if "skipped" in entry]
    p95s = [f["answer_s"]["p95"] for e in report["tabs"].values() for f in e.get("burst", {}).get("light", {}).values()]
    report["light_p95_met"] = all(p < LIGHT_TARGET_P95_S for p in p95s if p is not None) if p95s else None
    return report


def _cell(spread: dict[str, float | None]) -> str:
    return " / ".join("–" if v is None else f"{v:.2f}" for v in (spread["p50"], spread["p95"], spread["max"]))


def _row(who: str, f: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(f["first_message_was"].items())) or "–"
    return (f"| {who} | {f['requests']} | {f['failed']} | {_cell(f['first_response_s'])} | "
            f"{_cell(f['first_output_s'])} | {_cell(f['answer_s'])} | {kinds} |")


def print_report(report: dict[str, Any]) -> None:
    """The figures as Markdown tables, one per tab (times in seconds: p50 / p95 / max)."""
    light = f", {report['with_light']} light clients on heat and noising" if report["with_light"] else ""
    print(f"{report['students']} students pressing within {report['within_s']:g} s, seeds {report['seeds']}{light}; "
          f"deadline {report['deadline_s']:g} s")
    for name, entry in report["tabs"].items():
        print(f"\n## {name} ({entry['api_name']})" + (f": skipped, {entry['skipped']}" if "skipped" in entry else ""))
        if "skipped" in entry:
            continue
        if "note" in entry:
            print(f"note: {entry['note']}")
        print("| who | requests | failed | first response s | first output s | answer s | first message was |\n"
              "|---|---|---|---|---|---|---|")
        rows = {"one student alone": entry["alone"], "the class": entry["burst"]["class"],
                **{f"light {api_name}": f for api_name, f in entry["burst"].get("light", {}).items()}}
        print("\n".join(_row(who, f) for who, f in rows.items()))
        print("".join(f"  error ({who}): {error}\n" for who, f in rows.items() for error in f["errors"]), end="")
        for who, phase in (("alone", entry["alone"]), ("burst", entry["burst"])):
            cpu = phase["cores_busy"]
            print(f"{who}: {phase['wall_s']} s; cores busy (of {cpu['cores']}): machine {cpu['machine']} "
                  f"(niced {cpu['niced']}), server {cpu['server']}, this bench {cpu['bench']}; "
                  f"peak RSS of the server and its drawing processes (MB) {phase['peak_rss_mb']}")
    if report["light_p95_met"] is not None:
        print(f"\nlight p95 under {report['light_target_p95_s']:g} s during the bursts: "
              f"{'yes' if report['light_p95_met'] else 'NO'}")
    if report["flood"]:
        f, student = report["flood"], report["flood"]["student"]
        print(f"\nflood: one client sent {f['requests']} sampling requests at once; another student's default "
              f"request 1 s later: answer in {student['answer_s']['max']} s, {student['failed']} failed "
              f"{student['errors']}; of the flood, {f['answered_before_the_student']} answered before it, "
              f"{f['refused']} refused {f['refusals']}, {f['cancelled']} cancelled after it")
    skipped = f"; skipped: {', '.join(report['skipped'])}" if report["skipped"] else ""
    print(f"\nfailures: {report['failed']}{skipped}")


def run(args: argparse.Namespace) -> int:
    """Run the classroom against this machine only, print the tables; exit 1 on any failure or skip."""
    off_machine = args.url and urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1")
    if off_machine or max(args.students, args.with_light, args.flood) > 200:
        print("error: --url must point at this machine (127.0.0.1 or localhost), and at most 200 students, "
              "light clients or flood requests each", file=sys.stderr)
        return 2
    chosen = args.tab or ["sampling"]
    tabs = list(TABS) if "all" in chosen else list(dict.fromkeys(chosen))
    report = run_classroom(tabs, args.students, args.within, args.seeds, args.with_light, args.flood, args.deadline,
                           args.url, args.first_seed, args.arrival_seed, args.app_arg)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0 if report["failed"] == 0 and not report["skipped"] else 1


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 86400.0:
        raise argparse.ArgumentTypeError(f"must be 0 to 86400 seconds, got {text}")
    return value


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``classroom`` with ``python -m diffusion.bench``."""
    parser = subparsers.add_parser("classroom", help="a whole class presses one tab's button (loopback only)",
                                   description=__doc__.split("\n\n")[1])
    parser.add_argument("--tab", action="append", choices=[*TABS, "all"],
                        help="the tab whose main button the class presses; repeat for several (default sampling)")
    parser.add_argument("--students", type=cli.positive_int, default=30, help="default 30")
    parser.add_argument("--within", type=_seconds, default=10.0, help="they press within these seconds (default 10)")
    parser.add_argument("--seeds", choices=("own", "same"), default="own",
                        help="own: student i on seed F+i-1; same: everyone on the default seed (default own)")
    parser.add_argument("--with-light", type=cli.non_negative_int, default=0, metavar="K",
                        help="K more clients move sliders on heat and noising during each burst (default 0)")
    parser.add_argument("--flood", type=cli.non_negative_int, default=0, metavar="M",
                        help="at the end, one client submits M sampling requests at once (default 0: no flood)")
    parser.add_argument("--deadline", type=_seconds, default=600.0, help="every request ends by then, s (default 600)")
    parser.add_argument("--first-seed", type=cli.non_negative_int, default=1, metavar="F",
                        help="the first student's seed (default 1); change it on a server that kept earlier answers")
    parser.add_argument("--arrival-seed", type=int, default=0, help="seeds the arrival times (default 0)")
    parser.add_argument("--url", help="an app already running on this machine (default: start one)")
    parser.add_argument("--app-arg", action="append", default=[], metavar="FLAG",
                        help="pass FLAG to the app started here, e.g. --app-arg=--heavy-concurrency=2 (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write the figures here")
    parser.set_defaults(func=run)
