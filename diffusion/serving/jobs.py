"""Model jobs for a whole class: one fair queue, and identical requests computed once.

A model tab's handler does not run its model itself: it submits a job here and streams
the job's progress (:meth:`Ticket.updates`). That is what lets thirty students press the
same button at once:

- **Fair across clients.** Jobs wait per client (a browser session). The workers take
  the clients' next jobs in turn (round-robin), so a client that submits forty jobs
  delays another client by about one job. Each client may have :attr:`JobQueue.per_client`
  jobs waiting or running; one more is refused with a message the tab translates.
- **Identical requests run once.** A job may have a key: the validated request plus a
  digest of the model weights (:func:`request_key`). A finished, complete result is kept
  in a cache bounded in bytes, and a request with the same key gets it at once. A request
  that arrives while an identical job waits or runs follows that job instead of starting
  its own. A stopped run is not kept as complete, and a stopping job is not followed.
- **Waiting is visible.** While its job waits, a handler gets :class:`Waiting` records:
  the place in the queue and an estimated wait, from the job's own estimate corrected by
  how long jobs of its kind really took.
- **Stop.** Followers share a job, so it stops once every one of its watchers has
  pressed Stop or gone; a queued job whose watchers have all gone never runs.

Batching jobs of the same shape into one network call is :mod:`diffusion.serving.batching`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from diffusion.errors import InputError
from diffusion.reverse import StepCallback, StepInfo, StopFlag
from diffusion.serving.cache import ResultCache
from diffusion.serving.live import FRAME_INTERVAL_S, LiveRun

QUEUED, RUNNING, DONE = "queued", "running", "done"
log = logging.getLogger("diffusion.serving.jobs")
WAITING_INTERVAL_S = 1.0  # how often a waiting handler hears its place, at the latest
RATE_MEMORY = 0.3  # weight of the newest measurement in the running correction of estimates


@dataclass(frozen=True)
class Waiting:
    """A queued job's place (1: it starts next) and the estimated seconds until it starts and ends."""

    place: int
    start_s: float
    finish_s: float


def request_key(kind: str, request: Any, weights: str = "") -> str:
    """A stable key for a validated request: its fields as sorted JSON, the kind and a weights digest."""
    fields = request if isinstance(request, dict) else vars(request)
    text = json.dumps({"kind": kind, "weights": weights, "request": fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Job:
    """One model run in the queue; :class:`Ticket` is a request's view of it."""

    def __init__(self, kind: str, key: Hashable | None, client: str, live: LiveRun, estimate_s: float,
                 complete: Callable[[Any], bool]) -> None:
        self.kind, self.key, self.client, self.live = kind, key, client, live
        self.estimate_s, self.complete = estimate_s, complete
        self.state = QUEUED
        self.watchers = 0  # tickets not closed
        self.active = 0  # tickets neither stopped nor closed
        self.began: float | None = None
        self.batch_key: Hashable | None = None  # see diffusion.serving.batching
        self.payload: Callable[[LiveRun], Any] | None = None
        self.max_threads: int | None = None


class Ticket:
    """One request's view of a job: its own, a job it follows, or a cached result.

    Attributes:
        shared: The result was (or is being) computed for another request.
    """

    def __init__(self, queue: JobQueue, job: Job, shared: bool) -> None:
        self._queue, self.job, self.shared = queue, job, shared
        self._stopped = self._closed = False

    def updates(self, interval: float = FRAME_INTERVAL_S, heartbeat: bool = False,
                ) -> Iterator[Waiting | StepInfo | None]:
        """:class:`Waiting` while the job waits, then its steps as :meth:`LiveRun.steps` (or :meth:`LiveRun.wait`)."""
        last: Waiting | None = None
        told = 0.0
        while True:
            waiting = self._queue.waiting(self.job)
            if waiting is None:
                break
            now = time.monotonic()
            if waiting != last and (waiting.place != getattr(last, "place", None) or now - told >= interval):
                last, told = waiting, now
                yield waiting
            self._queue.wait_for_change(min(interval, WAITING_INTERVAL_S))
        live = self.job.live
        yield from (live.wait(interval) if heartbeat else live.steps(interval))

    @property
    def result(self) -> Any:
        """The job's result (after :meth:`updates` ended); None for a job that never ran."""
        return self.job.live.result

    def stop(self) -> None:
        """This request wants the run to end; it does once no other watcher still wants it."""
        if not self._stopped and not self._closed:
            self._stopped = True
            self._queue._drop_active(self.job)

    def close(self) -> None:
        """The request is over (finished, cancelled, page closed). Call it in a ``finally``."""
        if not self._closed:
            self._closed = True
            self._queue._leave(self.job, was_active=not self._stopped)


class _Closed(Exception):
    """The queue was shut down: its workers end."""


class JobQueue:
    """The model jobs of one server: ``workers`` threads take them fairly from every client.

    Args:
        workers: Jobs that run at once.
        per_client: Jobs one client may have waiting or running.
        cache_bytes: Bytes of complete results kept for identical requests.
        before_job: ``before_job(job, running)`` is called in the worker thread before each job
            and after each of its steps, with the number of jobs running, e.g. to choose how
            many CPU threads the job gets (:meth:`diffusion.serving.cores.CoreShare.apply`).
    """

    def __init__(self, workers: int = 1, per_client: int = 3, cache_bytes: int = 256 * 2**20,
                 before_job: Callable[[], None] | None = None) -> None:
        self.workers, self.per_client = max(1, int(workers)), max(1, int(per_client))
        self.cache = ResultCache(cache_bytes)
        self.before_job = before_job
        self._cond = threading.Condition(threading.RLock())
        self._clients: OrderedDict[str, deque[Job]] = OrderedDict()
        self._owned: dict[str, int] = {}
        self._served: dict[str, int] = {}  # client → when it was last served (a counter)
        self._tick = 0
        self._inflight: dict[Hashable, Job] = {}
        self._running: list[Job] = []
        self._correction: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self.batcher: Any = None  # a diffusion.serving.batching.Batcher, when batching is on
        self.runs = 0  # jobs that ran (a test counts them)
        self._closed = False

    # -- submitting ---------------------------------------------------------------------------
    def submit(self, kind: str, target: Callable[[StepCallback, StopFlag], Any], *, key: Hashable | None = None,
               client: str = "", estimate_s: float = 1.0, complete: Callable[[Any], bool] | None = None,
               batch_key: Hashable | None = None, payload: Callable[[LiveRun], Any] | None = None,
               capped: bool = True, max_threads: int | None = None) -> Ticket:
        """Queue ``target(callback, stop)`` (the run contract), or join an identical job.

        Args:
            kind: The kind of job ("sampling", …): its estimates are corrected together.
            target: The run, as :class:`~diffusion.serving.live.LiveRun` takes it.
            key: Identical requests have equal keys (:func:`request_key`); None: never shared.
            client: Who asks (a session id); fairness and the cap are per client.
            estimate_s: The expected seconds of this job on this server.
            complete: Whether a result may be kept for others (default: not ``result.stopped``).
            batch_key: Jobs with equal batch keys may run together (see :attr:`batcher`).
            payload: For a batchable job, ``payload(live)`` gives the batch runner what it needs
                to run this job as part of a group (the request, ``live``'s callback and stop flag).
            capped: Count it against the client's :attr:`per_client` (False: the server's own
                jobs, such as the examples every tab opens with).
            max_threads: The most CPU threads this job gains from (a tiny network: 1).

        Raises:
            InputError: ``too_many_jobs``: this client has :attr:`per_client` jobs already.
            RuntimeError: The queue was shut down (:meth:`shutdown`).
        """
        if self._closed:
            raise RuntimeError("the job queue is shut down")
        complete = complete or (lambda result: not getattr(result, "stopped", False))
        if key is not None:
            cached = self.cache.get(key)
            if cached is not None:
                live = LiveRun(lambda callback, stop: cached, start=False)
                live.run()
                job = Job(kind, key, client, live, 0.0, complete)
                job.state, job.watchers, job.active = DONE, 1, 1
                return Ticket(self, job, shared=True)
        with self._cond:
            job = self._inflight.get(key) if key is not None else None
            if job is None and key is not None and self.cache.get(key) is not None:
                return self.submit(kind, target, key=key, client=client, estimate_s=estimate_s, complete=complete,
                                   batch_key=batch_key, payload=payload, capped=capped,
                                   max_threads=max_threads)  # it finished a moment ago (the lock is re-entrant)
            if job is not None:
                job.watchers += 1
                job.active += 1
                return Ticket(self, job, shared=True)
            if capped and self._owned.get(client, 0) >= self.per_client:
                raise InputError("too_many_jobs", "You already have {n} runs waiting; wait for one to finish.",
                                 n=self.per_client)
            live = LiveRun(target, name=f"job-{kind}", start=False)
            job = Job(kind, key, client, live, estimate_s, complete)
            job.max_threads = max_threads
            if self.before_job is not None:
                live.callbacks.append(lambda info, job=job: self._before(job))
            if payload is not None:
                job.batch_key, job.payload = batch_key, payload
            job.watchers = job.active = 1
            if key is not None:
                self._inflight[key] = job
            self._owned[client] = self._owned.get(client, 0) + 1
            self._clients.setdefault(client, deque()).append(job)
            self._start_workers()
            self._cond.notify_all()
        return Ticket(self, job, shared=False)

    def _start_workers(self) -> None:
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, daemon=True, name=f"job-worker-{len(self._threads)}")
            self._threads.append(thread)
            thread.start()

    # -- waiting ------------------------------------------------------------------------------
    def expected_s(self, job: Job) -> float:
        return job.estimate_s * self._correction.get(job.kind, 1.0)

    def waiting(self, job: Job) -> Waiting | None:
        """The job's place and estimated waits, or None once it runs (or ended)."""
        with self._cond:
            if job.state != QUEUED:
                return None
            order = self._order()
            ahead = order[:order.index(job)] if job in order else []
            busy = [max(0.0, self.expected_s(j) - (time.monotonic() - (j.began or time.monotonic())))
                    for j in self._running]
            start = (sum(busy) + sum(self.expected_s(j) for j in ahead)) / self.workers
            return Waiting(place=len(ahead) + 1, start_s=round(start, 1),
                           finish_s=round(start + self.expected_s(job), 1))

    def wait_for_change(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    def _order(self) -> list[Job]:
        """The queued jobs in the order the workers will take them (see :meth:`_take`)."""
        queues = {client: deque(jobs) for client, jobs in self._clients.items()}
        served = dict(self._served)
        order, tick = [], self._tick
        while queues:
            client = min(queues, key=lambda c: served.get(c, -1))
            order.append(queues[client].popleft())
            tick += 1
            served[client] = tick
            if not queues[client]:
                del queues[client]
        return order

    def queued(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._clients.values())

    # -- stopping and leaving -----------------------------------------------------------------
    def _drop_active(self, job: Job) -> None:
        with self._cond:
            job.active -= 1
            if job.active <= 0:
                job.live.stop()
                if job.key is not None and self._inflight.get(job.key) is job:
                    del self._inflight[job.key]  # a stopping run is not followed
                self._cond.notify_all()

    def _leave(self, job: Job, was_active: bool) -> None:
        if was_active:
            self._drop_active(job)
        with self._cond:
            job.watchers -= 1
            if job.watchers <= 0 and job.state == QUEUED:  # nobody waits for it: it never runs
                self._clients[job.client].remove(job)
                if not self._clients[job.client]:
                    del self._clients[job.client]
                self._finished(job)
                job.live.done.set()

    def shutdown(self, timeout: float = 10.0) -> bool:
        """Start no more jobs, stop the running ones and wait up to ``timeout`` s for them; True if they ended.

        At exit, a job still inside torch in a daemon thread takes the process down with
        ``terminate called without an active exception`` (exit 134). Queued jobs end
        unrun, as stopped ones.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            queued = [job for jobs in self._clients.values() for job in jobs]
            self._clients.clear()
            running = list(self._running)
            for job in queued + running:
                job.live.stop()
            for job in queued:
                self._finished(job)
                job.live.done.set()
            self._cond.notify_all()
        return all(job.live.done.wait(max(0.0, deadline - time.monotonic())) for job in running)

    # -- working ------------------------------------------------------------------------------
    def _take(self) -> Job:
        """The next job: the first waiting one of the client served least recently (the caller holds the lock).

        A client never served comes first, and a client just served goes behind every
        other waiting client: round-robin, in which a newcomer need not wait for a turn of
        a client that has many jobs queued.
        """
        while not self._clients:
            if self._closed:
                raise _Closed
            self._cond.wait()
        client = min(self._clients, key=lambda c: self._served.get(c, -1))  # ties: the earliest to queue
        jobs = self._clients[client]
        job = jobs.popleft()
        if not jobs:
            del self._clients[client]
        self._tick += 1
        self._served[client] = self._tick
        if len(self._served) > 4096:  # bounded: forget the clients served longest ago
            for old in sorted(self._served, key=self._served.get)[:2048]:
                del self._served[old]
        return job

    def _work(self) -> None:
        while True:
            with self._cond:
                try:
                    job = self._take()
                except _Closed:
                    return
                group = [job] + (self.batcher.companions(self, job) if self.batcher and job.batch_key is not None else [])
                for j in group:
                    j.state, j.began = RUNNING, time.monotonic()
                    self._running.append(j)
                self._cond.notify_all()
            self._before(job)
            if len(group) > 1:
                self.batcher.run(group)
            else:
                job.live.run()
            with self._cond:
                for j in group:
                    self._running.remove(j)
                    self.runs += 1
                    self._learn(j)
                    if j.key is not None and j.live.error is None and j.live.result is not None \
                            and not j.live.stop_event.is_set() and j.complete(j.live.result):
                        self.cache.put(j.key, j.live.result)
                    self._finished(j)
                self._cond.notify_all()

    def _before(self, job: Job) -> None:
        """The ``before_job`` hook; a failing hook must not stop the worker (the queue would stall)."""
        if self.before_job is None:
            return
        try:
            self.before_job(job, len(self._running))
        except Exception:  # noqa: BLE001
            log.exception("the job queue's before_job hook failed")

    def _take_from_queue(self, job: Job) -> None:
        """Remove a queued ``job`` to run it with another (the caller holds the lock)."""
        jobs = self._clients[job.client]
        jobs.remove(job)
        if not jobs:
            del self._clients[job.client]

    def _learn(self, job: Job) -> None:
        if job.began is None or job.estimate_s <= 0 or job.live.stop_event.is_set():
            return
        ratio = (time.monotonic() - job.began) / job.estimate_s
        old = self._correction.get(job.kind)
        self._correction[job.kind] = ratio if old is None else (1 - RATE_MEMORY) * old + RATE_MEMORY * ratio

    def _finished(self, job: Job) -> None:
        job.state = DONE
        if job.key is not None and self._inflight.get(job.key) is job:
            del self._inflight[job.key]
        left = self._owned.get(job.client, 1) - 1
        if left > 0:
            self._owned[job.client] = left
        else:
            self._owned.pop(job.client, None)
