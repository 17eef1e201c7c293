"""A live run: any reverse loop of :mod:`diffusion.reverse` in a worker thread, streamed.

A tab's event handler is a generator that gradio runs in its own worker thread. The
loop runs in a second thread (:class:`LiveRun`); its callback keeps only the newest
step, and :meth:`LiveRun.steps` hands the handler the first step at once and then the
newest one every ``interval`` seconds. A run of 1000 steps therefore neither floods the
browser with frames nor waits for it: each streamed frame costs the server some CPU
(pictures and gradio's bookkeeping), so the frame rate is capped.

Stopping follows the contract's rule 2: :meth:`LiveRun.stop` sets the flag the loop
polls after every step. The handler calls it in a ``finally`` block, so a closed page or
a cancelled event ends the worker too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from diffusion.reverse import StepCallback, StepInfo, StopFlag

FRAME_INTERVAL_S = 0.25  # at most ~4 streamed frames a second (see the module docstring)
FIRST_FRAME_POLL_S = 0.02  # the first step is sent as soon as it exists


class LiveRun:
    """One run in a worker thread, with its newest step kept for streaming.

    Args:
        target: ``target(callback, stop)`` runs the loop with the contract's callback and
            stop flag and returns its result (a :class:`~diffusion.reverse.Trajectory`, or a
            lesson's result holding one). A loop that is not a reverse process (training)
            may report any record with a ``step`` attribute instead of a ``StepInfo``.
        name: The worker thread's name (shows in stack dumps).
        start: Start the worker thread now. With False the run waits until someone calls
            :meth:`run` in a thread of their own (the job queue of :mod:`diffusion.serving.jobs`).
    """

    def __init__(self, target: Callable[[StepCallback, StopFlag], Any], name: str = "live-run",
                 start: bool = True) -> None:
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._latest: StepInfo | None = None
        self._lock = threading.Lock()
        self._target = target
        self.started = time.perf_counter()
        self.callbacks: list[Callable[[Any], None]] = []  # more listeners of every step (the job queue's)
        if start:
            threading.Thread(target=self._main, daemon=True, name=name).start()

    def run(self) -> None:
        """Run the loop in the calling thread (a run made with ``start=False``); never raises."""
        self.started = time.perf_counter()
        self._main()

    def report(self, info: StepInfo) -> None:
        """The run contract's callback: keep the newest step (a batched run calls it for each job)."""
        # A step's tensors may live on the device and be reused by the loop: keep a CPU copy.
        # Other progress records (a training step's loss) are plain values already.
        copy = info.to_cpu() if isinstance(info, StepInfo) else info
        with self._lock:
            self._latest = copy
        for listener in self.callbacks:
            listener(copy)

    def _main(self) -> None:
        try:
            self.result = self._target(self.report, self.stop_event.is_set)
        except BaseException as error:  # noqa: BLE001 - handed to the streaming thread
            self.error = error
        finally:
            self.done.set()

    def steps(self, interval: float = FRAME_INTERVAL_S) -> Iterator[StepInfo]:
        """Yield the first step at once, then the newest step about every ``interval`` seconds.

        Ends when the run ends; raises what the run raised.
        """
        yield from self._poll(interval, heartbeat=False)

    def wait(self, interval: float = FRAME_INTERVAL_S) -> Iterator[StepInfo | None]:
        """Like :meth:`steps`, but also yields ``None`` every ``interval`` while no new step came.

        For loops without steps (a classical denoiser): the handler can still show it is alive.
        """
        yield from self._poll(interval, heartbeat=True)

    def _poll(self, interval: float, heartbeat: bool) -> Iterator[StepInfo | None]:
        last = -1
        while True:
            finished = self.done.wait(interval if last >= 0 or heartbeat else FIRST_FRAME_POLL_S)
            with self._lock:
                info = self._latest
            new = info is not None and info.step != last
            # A run that ends before the first poll still shows one step before its final frame.
            if new and (not finished or (last < 0 and not heartbeat)):
                last = info.step
                yield info
            elif heartbeat and not finished:
                yield None
            if finished:
                break
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Ask the loop to end after its current step."""
        self.stop_event.set()
