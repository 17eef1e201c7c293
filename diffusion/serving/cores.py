"""How many CPU threads a model job gets: every core while no light request runs.

The light lessons (heat equation, forward noising) answer slider moves and must stay
interactive; model jobs are long and queue. A model job therefore runs on every core
while no light request is being served, and leaves cores to the light requests while
some are: :meth:`CoreShare.light` marks a light request, and :meth:`CoreShare.apply`
(called by the job queue before a job and after each of its steps) sets the worker
thread's torch threads to match. Jobs running side by side split the cores, and a job
may say it gains from no more than one (the 2-D lab's tiny network runs three times
slower on two threads). On two cores one sampling job gets both when the class is quiet,
and one while someone drags a slider or while another job runs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch


class CoreShare:
    """The torch threads of model jobs, given how many light requests are being served.

    Args:
        idle_threads: Threads while no light request runs (default: every core, at most 8).
        busy_threads: Threads while at least one does (default: half the cores, at least 1).
    """

    def __init__(self, idle_threads: int | None = None, busy_threads: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.idle_threads = max(1, idle_threads or min(8, cores))
        self.busy_threads = max(1, busy_threads or cores // 2)
        self._light = 0
        self._lock = threading.Lock()
        self._local = threading.local()

    @contextlib.contextmanager
    def light(self) -> Iterator[None]:
        """Mark a light request for its duration."""
        with self._lock:
            self._light += 1
        try:
            yield
        finally:
            with self._lock:
                self._light -= 1

    def marking(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a plain function or a generator function) with each call marked as a light request."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self.light():
                    yield from fn(*args, **kwargs)
            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.light():
                return fn(*args, **kwargs)
        return wrapper

    @property
    def light_requests(self) -> int:
        return self._light

    def threads(self, running: int = 1, cap: int | None = None) -> int:
        """The threads a model job should use now, when ``running`` jobs share the cores.

        ``cap``: the most the job gains from (tiny networks run slower on more threads).
        """
        share = (self.busy_threads if self._light > 0 else self.idle_threads) // max(1, running)
        return max(1, min(share, cap or share))

    def apply(self, job: Any = None, running: int = 1) -> None:
        """Set this thread's torch threads to :meth:`threads` (cheap when nothing changed)."""
        want = self.threads(running, getattr(job, "max_threads", None))
        if getattr(self._local, "threads", None) != want:
            torch.set_num_threads(want)
            self._local.threads = want
