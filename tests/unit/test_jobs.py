"""The job queue: identical requests computed once, fairness across clients, caps, stop, waits."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import torch

from diffusion.errors import InputError
from diffusion.reverse import StepInfo
from diffusion.serving.cache import ResultCache
from diffusion.serving.jobs import JobQueue, Waiting, request_key

ZERO = torch.zeros(1)


@dataclass
class Result:
    value: int
    stopped: bool = False
    nbytes: int = 100


class Counter:
    """A job target that counts its runs, reports a few steps and may wait for a gate."""

    def __init__(self, steps: int = 3, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.order: list[str] = []
        self.steps, self.gate = steps, gate
        self.lock = threading.Lock()

    def target(self, value: int, name: str = ""):
        def run(callback, stop):
            with self.lock:
                self.calls += 1
                self.order.append(name)
            for i in range(self.steps):
                if self.gate is not None:
                    self.gate.wait(5)
                callback(StepInfo(step=i, total=self.steps, t=0, alpha_bar=1.0, x_t=ZERO, x0_pred=ZERO, eps_pred=ZERO))
                if stop():
                    return Result(value, stopped=True)
            return Result(value)
        return run


def drain(ticket) -> list:
    seen = list(ticket.updates(interval=0.01))
    ticket.close()
    return seen


def test_identical_requests_run_once_and_share_the_result():
    jobs, counter = JobQueue(), Counter()
    first = jobs.submit("k", counter.target(1), key="same", client="a")
    drain(first)
    second = jobs.submit("k", counter.target(1), key="same", client="b")
    drain(second)
    assert counter.calls == 1
    assert second.result is first.result and second.shared and not first.shared


def test_a_request_arriving_while_an_identical_one_runs_follows_it():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(gate=gate)
    first = jobs.submit("k", counter.target(1), key="same", client="a")
    second = jobs.submit("k", counter.target(1), key="same", client="b")
    results = {}
    threads = [threading.Thread(target=lambda t=t, n=n: results.setdefault(n, drain(t)))
               for n, t in (("a", first), ("b", second))]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert counter.calls == 1 and second.shared
    assert any(isinstance(u, StepInfo) for u in results["b"])  # the follower saw the stream
    assert second.result is first.result


def test_different_keys_run_twice():
    jobs, counter = JobQueue(), Counter()
    drain(jobs.submit("k", counter.target(1), key="seed1", client="a"))
    drain(jobs.submit("k", counter.target(2), key="seed2", client="a"))
    assert counter.calls == 2


def test_a_stopped_run_is_not_cached_as_complete():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(gate=gate)
    ticket = jobs.submit("k", counter.target(1), key="same", client="a")
    ticket.stop()  # before its first step ends: it ends after that step
    gate.set()
    drain(ticket)
    assert ticket.result.stopped
    again = jobs.submit("k", counter.target(1), key="same", client="a")
    drain(again)
    assert counter.calls == 2 and not again.shared and not again.result.stopped


def test_one_follower_stopping_does_not_stop_the_others():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(gate=gate)
    first = jobs.submit("k", counter.target(1), key="same", client="a")
    second = jobs.submit("k", counter.target(1), key="same", client="b")
    first.stop()
    gate.set()
    drain(first), drain(second)
    assert not second.result.stopped and counter.calls == 1


def test_a_queued_job_whose_watchers_left_never_runs():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(gate=gate)
    running = jobs.submit("k", counter.target(1, "running"), key="a", client="a")
    while jobs.queued():  # the first one is taken by the worker
        time.sleep(0.01)
    queued = jobs.submit("k", counter.target(2, "queued"), key="b", client="b")
    queued.close()  # the page was closed while it waited
    gate.set()
    drain(running)
    time.sleep(0.1)
    assert counter.order == ["running"] and queued.result is None


def test_shutdown_stops_the_running_job_drops_the_queued_ones_and_refuses_more():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(steps=50, gate=gate)
    running = jobs.submit("k", counter.target(1, "running"), key="a", client="a")
    while jobs.queued():  # the first one is taken by the worker
        time.sleep(0.01)
    queued = jobs.submit("k", counter.target(2, "queued"), key="b", client="b")
    gate.set()
    assert jobs.shutdown(timeout=10)
    assert running.job.live.done.is_set() and running.result.stopped  # it ended after its current step
    assert queued.job.live.done.is_set() and queued.result is None and counter.order == ["running"]
    with pytest.raises(RuntimeError, match="shut down"):
        jobs.submit("k", counter.target(3), key="c", client="c")


def test_a_flooding_client_delays_another_by_about_one_job():
    gate = threading.Event()
    jobs, counter = JobQueue(per_client=3), Counter(steps=1, gate=gate)
    flood = [jobs.submit("k", counter.target(i, f"flood{i}"), client="flood") for i in range(3)]
    with pytest.raises(InputError) as refused:
        jobs.submit("k", counter.target(9), client="flood")
    assert refused.value.code == "too_many_jobs" and refused.value.params["n"] == 3
    other = jobs.submit("k", counter.target(5, "other"), client="student")
    gate.set()
    for ticket in flood + [other]:
        drain(ticket)
    # flood0 was taken first; the other student is next, before the flood's second and third
    assert counter.order.index("other") <= 1


def test_waiting_tells_the_place_and_a_measured_estimate():
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(steps=1, gate=gate)
    running = jobs.submit("k", counter.target(0), client="a", estimate_s=2.0)
    while jobs.queued():
        time.sleep(0.01)
    second = jobs.submit("k", counter.target(1), client="b", estimate_s=2.0)
    third = jobs.submit("k", counter.target(2), client="c", estimate_s=2.0)
    w2, w3 = jobs.waiting(second.job), jobs.waiting(third.job)
    assert (w2.place, w3.place) == (1, 2)
    assert 0 < w2.start_s <= 2.0 < w3.start_s <= 4.0 and w3.finish_s == pytest.approx(w3.start_s + 2.0, abs=0.2)
    first_update = next(third.updates(interval=0.01))
    assert isinstance(first_update, Waiting) and first_update.place == 2
    gate.set()
    for ticket in (running, second, third):
        drain(ticket)
    # the jobs took far less than estimated: later estimates are corrected down
    assert jobs.expected_s(third.job) < 2.0


def test_errors_reach_every_watcher():
    jobs = JobQueue()

    def broken(callback, stop):
        raise RuntimeError("boom")

    ticket = jobs.submit("k", broken, key="x", client="a")
    with pytest.raises(RuntimeError):
        list(ticket.updates(interval=0.01))
    ticket.close()
    assert jobs.cache.get("x") is None


def test_request_key_names_request_kind_and_weights():
    base = request_key("sampling", {"seed": 0, "steps": 20}, "w1")
    assert base == request_key("sampling", {"steps": 20, "seed": 0}, "w1")
    assert base != request_key("sampling", {"seed": 1, "steps": 20}, "w1")
    assert base != request_key("sampling", {"seed": 0, "steps": 20}, "w2")
    assert base != request_key("denoising", {"seed": 0, "steps": 20}, "w1")


def test_result_cache_is_bounded_in_bytes():
    cache = ResultCache(max_bytes=250)
    for i in range(5):
        cache.put(i, Result(i, nbytes=100))
    assert len(cache) == 2 and cache.nbytes <= 250 and cache.get(4) is not None and cache.get(0) is None
    assert not cache.put("huge", Result(0, nbytes=1000))


def test_model_jobs_leave_a_core_to_light_requests():
    from diffusion.serving.cores import CoreShare

    cores = CoreShare(idle_threads=4, busy_threads=1)
    seen = []

    def light_request():
        seen.append(cores.threads())
        yield 1

    marked = cores.marking(light_request)
    assert cores.threads() == 4
    assert list(marked()) == [1] and seen == [1]  # while it ran, a model job would get one thread
    assert cores.threads() == 4 and cores.light_requests == 0
    plain = cores.marking(lambda: cores.threads())
    assert plain() == 1 and cores.threads() == 4
    assert cores.threads(running=2) == 2 and cores.threads(running=8) == 1  # jobs side by side split the cores
    assert cores.threads(cap=1) == 1  # a tiny network gains nothing from more


def test_the_worker_applies_the_thread_policy_before_each_job_and_step():
    calls = []
    jobs, counter = JobQueue(before_job=lambda job, running: calls.append((job.max_threads, running))), Counter(3)
    drain(jobs.submit("k", counter.target(1), client="a", max_threads=1))
    assert calls == [(1, 1)] * (1 + 3)


def test_a_stop_pressed_before_the_run_is_queued_still_reaches_it():
    from diffusion.serving import store as run_store

    runs = run_store.RunStore(10**6)
    gate = threading.Event()
    jobs, counter = JobQueue(), Counter(steps=5, gate=gate)
    runs.reserve("a" * 32)
    assert runs.stop("a" * 32)  # the student pressed Stop as soon as the id was shown
    ticket = jobs.submit("k", counter.target(1), client="s")
    runs.add_live("a" * 32, ticket)
    gate.set()
    drain(ticket)
    assert ticket.result.stopped and counter.calls == 1
    runs.reserve("b" * 32)
    runs.release("b" * 32)
    assert not runs.stop("b" * 32)
    for i in range(run_store.MAX_RESERVED + 10):  # reservations of requests that went away stay bounded
        runs.reserve(f"{i:032x}")
    assert len(runs._live) <= run_store.MAX_RESERVED + 1
