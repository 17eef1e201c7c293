"""The run store: live runs (for Stop) and finished results (for scrubbing), by random run id.

One store per lesson, each bounded in bytes: a finished result must say how many bytes
it holds (``nbytes``); the least recently used results are dropped first, but the newest
one is always kept, so the run a student just made can be replayed.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict
from typing import Any

from diffusion.errors import InputError
from diffusion.serving.live import LiveRun

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_RESERVED = 256  # run ids handed out whose runs have not started yet


class _Reserved:
    """A run id handed out before its run exists; remembers a Stop."""

    stopped = False

    def stop(self) -> None:
        self.stopped = True


class RunStore:
    """Live runs and finished results of one lesson, by run id.

    Args:
        max_bytes: Bytes of finished results kept.
        missing_code: Error code for an empty run id (each lesson says which button to press).
        expired_code: Error code for an id that is not (or no longer) kept.
    """

    def __init__(self, max_bytes: int, missing_code: str = "no_run", expired_code: str = "run_expired") -> None:
        self.max_bytes = max_bytes
        self.missing_code, self.expired_code = missing_code, expired_code
        self._live: dict[str, LiveRun] = {}
        self._done: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def new_id() -> str:
        """A fresh random run id (32 hex digits): ids cannot be guessed from one another."""
        return secrets.token_hex(16)

    def reserve(self, run_id: str) -> None:
        """Hold ``run_id`` for a run about to start: a Stop that comes before it does still reaches it.

        A handler shows the run id at once, before its run is queued; without this, a Stop
        pressed in that moment would find no run and be lost.
        """
        with self._lock:
            self._live.setdefault(run_id, _Reserved())
            reserved = [k for k, v in self._live.items() if isinstance(v, _Reserved)]
            for old in reserved[:-MAX_RESERVED]:  # bounded: requests that went away before their run began
                del self._live[old]

    def release(self, run_id: str) -> None:
        """Forget a reservation whose run never started (its request was refused)."""
        with self._lock:
            if isinstance(self._live.get(run_id), _Reserved):
                del self._live[run_id]

    def add_live(self, run_id: str, run: LiveRun) -> None:
        """Register a running run so :meth:`stop` can reach it (at once, if it was stopped while reserved)."""
        with self._lock:
            before = self._live.get(run_id)
            self._live[run_id] = run
        if isinstance(before, _Reserved) and before.stopped:
            run.stop()

    def stop(self, run_id: Any) -> bool:
        """Stop the live run ``run_id``; False if there is none."""
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            return False
        with self._lock:
            run = self._live.get(run_id)
        if run is None:
            return False
        run.stop()
        return True

    def finish(self, run_id: str, result: Any) -> None:
        """The run ``run_id`` ended: forget it as live and keep ``result`` (unless None or empty)."""
        with self._lock:
            self._live.pop(run_id, None)
            if result is None or (hasattr(result, "__len__") and len(result) == 0):
                return
            self._done[run_id] = result
            self._done.move_to_end(run_id)
            total = sum(item.nbytes for item in self._done.values())
            while total > self.max_bytes and len(self._done) > 1:
                _, old = self._done.popitem(last=False)
                total -= old.nbytes

    def add(self, result: Any) -> str:
        """Keep a finished ``result`` under a new run id and return the id."""
        run_id = self.new_id()
        self.finish(run_id, result)
        return run_id

    def get(self, run_id: Any) -> Any:
        """The finished result ``run_id``, marked as recently used.

        Raises:
            InputError: :attr:`missing_code` for an empty id, :attr:`expired_code` for one not kept.
        """
        if not run_id:
            raise InputError(self.missing_code, "Run it first; then it can be replayed.")
        with self._lock:
            result = self._done.get(run_id) if isinstance(run_id, str) and _RUN_ID.match(run_id) else None
            if result is None:
                raise InputError(self.expired_code, "This run is no longer kept; run again.")
            self._done.move_to_end(run_id)
            return result
