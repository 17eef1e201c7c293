"""Cross-request batching: queued jobs of the same shape run as one loop, one network call per step.

When a worker takes a job that has a batch key (:meth:`JobQueue.submit`'s ``batch_key``),
the :class:`Batcher` also takes every other queued job with the same key (up to
``max_jobs``, from any client, in queue order) and hands the group to the runner
registered for that kind, which runs them together and fills in each job's own result.
Each job keeps its own stream, stop flag and result: only the network calls are shared.

On a GPU this is what lets one card serve a class; on a CPU a bigger batch costs the same
per image, so it gains little there and the app turns it on by default only on CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class Batcher:
    """Groups queued jobs with equal batch keys and runs each group with its kind's runner.

    Args:
        max_jobs: Most jobs run together.
    """

    def __init__(self, max_jobs: int = 32) -> None:
        self.max_jobs = max(1, int(max_jobs))
        self._runners: dict[str, Callable[[list[Any]], list[Any]]] = {}
        self.groups: list[int] = []  # the sizes of the groups run (the last 100)

    def register(self, kind: str, runner: Callable[[list[Any]], list[Any]]) -> None:
        """``runner(payloads)`` runs the jobs' payloads together and returns one result each.

        A payload is what the job was submitted with (``JobQueue.submit``'s ``payload``):
        for sampling, the request with its step callback and stop flag.
        """
        self._runners[kind] = runner

    def companions(self, queue: Any, job: Any) -> list[Any]:
        """Queued jobs that can run with ``job`` (taken off the queue; the caller holds its lock)."""
        if job.kind not in self._runners:
            return []
        found = []
        for other in queue._order():
            if len(found) + 1 >= self.max_jobs:
                break
            if other.batch_key == job.batch_key and other.kind == job.kind:
                found.append(other)
        for other in found:
            queue._take_from_queue(other)
        return found

    def run(self, group: list[Any]) -> None:
        """Run a group; every job's stream ends with its own result (or the group's error)."""
        now = time.perf_counter()
        for job in group:
            job.live.started = now
        try:
            results = self._runners[group[0].kind]([job.payload(job.live) for job in group])
            for job, result in zip(group, results):
                job.live.result = result
        except BaseException as error:  # noqa: BLE001 - handed to every watcher's stream
            for job in group:
                job.live.error = error
        finally:
            for job in group:
                job.live.done.set()
            self.groups = (self.groups + [len(group)])[-100:]
