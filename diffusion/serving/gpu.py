"""Where model work runs: the one wrapper for GPU calls, the same on a laptop and on a ZeroGPU Space.

A model job is a :class:`GpuWork`: a module-level function and picklable arguments. Its
function follows the run contract of :mod:`diffusion.reverse` (``fn(callback=…, stop=…,
**kwargs)`` returns the run's result). :func:`execute` runs it:

* **here** (a laptop, a school server, a CPU or GPU Space): in the calling thread, with
  the job's own callback and stop flag, exactly as before;
* **on a ZeroGPU Space** (``SPACES_ZERO_GPU`` set, ``spaces`` installed): through one
  ``@spaces.GPU`` generator, :func:`_gpu_stream`, which the Space runs in another process.
  Its inputs and outputs are pickled, and memory it changes does not come back, so the
  GPU function *returns* everything the main process keeps: every step it reports is
  streamed back (``("step", …)``) and the result comes last (``("done", …)``). The run
  store, the result cache and the stop flag stay in the main process.

**Stop across the boundary.** Stop reaches the GPU process through the generator: when
the job's flag is set, :func:`execute` closes the stream; ZeroGPU then closes the task's
generator after its current step, which sets the loop's own flag (see :func:`_gpu_stream`).
The stopped run's result is rebuilt in the main process from the steps it already holds
(``work.partial``), so it equals the run a local Stop at that step would have kept.

**Short calls.** Every call asks for a ``duration`` computed from its request
(:func:`duration_s`): the lesson's estimate of GPU seconds, doubled, plus a fixed margin
for moving the weights to the GPU on a worker's first call, capped at :data:`MAX_DURATION_S`.
Work that needs no GPU (decoding uploads, drawing, PNG encoding, the classical denoisers)
stays outside.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from diffusion.reverse import StepInfo

MARGIN_S = 10.0        # a fresh GPU worker moves the weights first (seconds asked for on top)
MAX_DURATION_S = 120   # a lesson's call never asks for more: a visitor's daily quota is a few minutes
MIN_DURATION_S = 5
_MISSING = object()


def on_zero_gpu() -> bool:
    """Whether this process serves a ZeroGPU Space (the Hub sets ``SPACES_ZERO_GPU``)."""
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def gpu_task(duration: Any = 60) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``@spaces.GPU(duration=...)`` where the ``spaces`` package is installed; a no-op decorator elsewhere.

    ``spaces.GPU`` itself returns the function unchanged unless ``SPACES_ZERO_GPU`` is set.
    ``duration`` may be seconds or a function of the call's arguments.
    """
    try:
        import spaces
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration)


@dataclass(frozen=True)
class GpuWork:
    """One model job as a GPU call takes it.

    Attributes:
        fn: A module-level function ``fn(*, callback, stop, **kwargs)`` that runs the loop
            under the run contract and returns a picklable result. It loads its model
            itself (from the registry, which caches it per process).
        kwargs: Its picklable arguments (requests, arrays, model names; no models, locks or lambdas).
        gpu_s: The lesson's estimate of the GPU seconds this call takes.
        partial: ``partial(kwargs, steps, seconds)`` rebuilds the result of a run stopped after
            the reported ``steps`` (module-level, runs in the main process); None for work that
            has no steps to stop between.
    """

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    gpu_s: float = 1.0
    partial: Callable[[dict[str, Any], list[Any], float], Any] | None = None


def duration_s(work: GpuWork) -> int:
    """The ``duration`` a GPU call asks for: ``MARGIN_S + 2 × work.gpu_s``, whole seconds, within the bounds."""
    return int(min(MAX_DURATION_S, max(MIN_DURATION_S, math.ceil(MARGIN_S + 2.0 * float(work.gpu_s)))))


def run_here(work: GpuWork, callback: Callable[[Any], None] | None = None,
             stop: Callable[[], bool] | None = None) -> Any:
    """``work`` in the calling thread, with these callback and stop flag."""
    return work.fn(callback=callback, stop=stop, **work.kwargs)


def _stream(work: GpuWork) -> Iterator[tuple[str, Any]]:
    """The GPU process's side: run ``work`` in a thread, yield each reported step, then the result.

    Items are ``("step", record)``, then ``("done", result)`` or ``("error", exception)``: an
    error travels as a value so that the main process re-raises the lesson's own error
    (translated), not ZeroGPU's generic one. When the caller closes the stream (Stop),
    ``GeneratorExit`` arrives at a ``yield``: the loop's stop flag is set and the thread ends
    after its current step.
    """
    items: queue.Queue = queue.Queue()
    stopped = threading.Event()

    def report(record: Any) -> None:
        items.put(("step", _on_cpu(record)))

    def main() -> None:
        try:
            items.put(("done", run_here(work, report, stopped.is_set)))
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            items.put(("error", error))

    thread = threading.Thread(target=main, daemon=True, name="gpu-call")
    thread.start()
    try:
        while True:
            item = items.get()
            yield item
            if item[0] != "step":
                return
    finally:
        stopped.set()
        thread.join()


def _on_cpu(record: Any) -> Any:
    """A reported record with its step tensors copied to the CPU (a batch reports ``(index, step)``)."""
    if isinstance(record, StepInfo):
        return record.to_cpu()
    if isinstance(record, tuple):
        return tuple(_on_cpu(part) for part in record)
    return record


# Decorated once, at import, as ZeroGPU wants; ``duration`` is asked of each call's own work.
_gpu_stream = gpu_task(duration=duration_s)(_stream)


def execute(work: GpuWork, callback: Callable[[Any], None] | None = None,
            stop: Callable[[], bool] | None = None) -> Any:
    """Run ``work`` here, or through the GPU process on a ZeroGPU Space (module docstring).

    Returns:
        The result of ``work.fn``; for a run stopped across the process boundary,
        ``work.partial`` of the steps received.

    Raises:
        Whatever ``work.fn`` raised (re-raised in this process).
    """
    if not on_zero_gpu():
        return run_here(work, callback, stop)
    steps: list[Any] = []
    result: Any = _MISSING
    start = time.perf_counter()
    stream = _gpu_stream(work)
    try:
        for kind, value in stream:  # read to its end, so the GPU process finishes the call itself
            if kind == "done":
                result = value
            elif kind == "error":
                raise value
            else:
                steps.append(value)
                if callback is not None:
                    callback(value)
                if stop is not None and work.partial is not None and stop():
                    return work.partial(work.kwargs, steps, time.perf_counter() - start)
        if result is _MISSING:
            raise RuntimeError("the GPU call ended without a result")
        return result
    finally:
        stream.close()  # Stop, an error or a closed page: the GPU process ends the task too


def execute_batch(work: GpuWork, callbacks: Sequence[Callable[[Any], None] | None],
                  stops: Sequence[Callable[[], bool] | None],
                  partial_member: Callable[[dict[str, Any], int, list[Any], float], Any]) -> list[Any]:
    """Run batched ``work`` (its ``fn`` reports ``(index, step)`` and returns one result per member).

    In-process each member's stop flag goes into the loop (``stops``). Across the process
    boundary a stopped member's result is rebuilt at once from its steps
    (``partial_member(kwargs, index, steps, seconds)``) while the others go on, and the
    stream is closed when every member has stopped.
    """
    def route(pair: tuple[int, Any]) -> None:
        if callbacks[pair[0]] is not None:
            callbacks[pair[0]](pair[1])

    if not on_zero_gpu():
        return run_here(replace(work, kwargs={**work.kwargs, "stops": list(stops)}), route)
    steps: list[list[Any]] = [[] for _ in callbacks]
    kept: dict[int, Any] = {}
    result: Any = _MISSING
    start = time.perf_counter()
    stream = _gpu_stream(work)
    try:
        for kind, value in stream:
            if kind == "done":
                result = value
            elif kind == "error":
                raise value
            elif value[0] not in kept:
                i, info = value
                steps[i].append(info)
                route(value)
                if stops[i] is not None and stops[i]():
                    kept[i] = partial_member(work.kwargs, i, steps[i], time.perf_counter() - start)
                    if len(kept) == len(callbacks):
                        return [kept[j] for j in range(len(callbacks))]
        if result is _MISSING:
            raise RuntimeError("the GPU call ended without a result")
        return [kept.get(j, r) for j, r in enumerate(result)]
    finally:
        stream.close()
