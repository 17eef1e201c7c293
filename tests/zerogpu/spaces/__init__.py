"""A test double of Hugging Face's ``spaces`` package, with ZeroGPU's call semantics.

With this folder's parent on ``sys.path``, ``import spaces`` finds this module. Unless
``SPACES_ZERO_GPU`` is ``1``, ``t`` or ``true`` (as the real package reads it), :func:`GPU`
returns the function unchanged. Otherwise each call runs as on a ZeroGPU Space: in a forked
worker process (reused while idle; up to :data:`MAX_WORKERS` per function at once), with
arguments and results pickled across, so worker-side state does not come back. A call past
its ``duration`` (plus ``SPACES_DOUBLE_GRACE_S``, default 5 s) is killed; one over
``SPACES_DOUBLE_MAX_DURATION_S`` (default 120 s) is refused, like a request over the quota.
Generators stream; closing the caller's one makes the worker close the task's after its
current ``next()``. A worker's ``gradio.Error`` is re-raised as is; any other exception
becomes a ``gradio.Error`` with its class name and, unlike the real package (which hides
the message), its message, so that a failing test says what went wrong.
"""

from __future__ import annotations

import atexit
import inspect
import os
import pickle
import sys
import threading
import time
import traceback
from contextlib import suppress
from datetime import timedelta
from functools import partial, wraps
from multiprocessing import connection as mp_connection
from multiprocessing import get_context
from typing import Any, Callable

__version__ = "0.0-test-double"

MAX_WORKERS = 4  # worker processes at most per decorated function; a further call waits
MAX_LOGGED_CALLS = 1000
DEFAULT_DURATION_S = 60.0  # the real package's duration when none is given
WAIT_FOR_WORKER_S = 60.0

calls: list[dict[str, Any]] = []
"""One dict per finished call, oldest first, the last :data:`MAX_LOGGED_CALLS` kept:
``function`` (qualname), ``duration`` (requested seconds), ``wall`` (seconds the call
took), ``pid`` (the worker's), ``stopped`` (a generator closed early), ``items`` (values
a generator yielded) and ``error`` (the class name of what failed, or None)."""

_ctx = get_context("fork")
_calls_lock = threading.Lock()
_lock = threading.Lock()  # forks, and the registries below
_parent_ends: set[Any] = set()
_pools: set[_Pool] = set()
_decorated: dict[Callable[..., Any], Callable[..., Any]] = {}
_in_worker = False
_END = object()


class _Lost(Exception):
    """The worker died under a call ("Aborted"), or was killed past its duration."""


def in_gpu_call() -> bool:
    """True in a worker, where decorated functions run directly (the real ``wrappers.forked``)."""
    return _in_worker


def _env_seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)

def _error(message: str) -> Exception:
    import gradio as gr

    return gr.Error(message, title="ZeroGPU worker error", print_exception=False)


def _seconds(duration: Any, args: tuple, kwargs: dict) -> float:
    if callable(duration):
        duration = duration(*args, **kwargs)
    if isinstance(duration, timedelta):
        return duration.total_seconds()
    return DEFAULT_DURATION_S if duration is None else float(duration)


def _dump_args(name: str, args: tuple, kwargs: dict) -> bytes:
    try:
        return pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        culprit = "the arguments"
        for label, value in [*((f"argument {i}", a) for i, a in enumerate(args)),
                             *((f"argument {k!r}", v) for k, v in kwargs.items())]:
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                culprit = f"{label} ({type(value).__name__})"
                break
        raise pickle.PicklingError(
            f"{culprit} of GPU task {name} cannot be pickled to send to the GPU worker "
            f"({type(exc).__name__}: {exc})") from exc


def _reply(conn: Any, kind: str, value: Any = None, what: str = "") -> bool:
    """In the worker: pickle and send one message, or the error if it will not pickle."""
    if kind == "error":  # the exception itself may not pickle: send its text
        gr, exc, gradio_error = sys.modules.get("gradio"), value, None
        if gr is not None and isinstance(exc, gr.Error):
            try:
                gradio_error = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                pass
        value = {"cls": type(exc).__name__, "message": what or str(exc), "gradio": gradio_error,
                 "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
    try:
        data = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        _reply(conn, "error", exc, f"{what} cannot be pickled to send back from the GPU "
                                   f"worker: {type(exc).__name__}: {exc}")
        return False
    conn.send_bytes(data)
    return True


def _worker_main(task: Callable[..., Any], args_conn: Any, res_conn: Any, stop: Any) -> None:
    """The worker's loop: one call per message until the parent goes away."""
    global _in_worker, _lock, _calls_lock
    _in_worker = True
    _lock, _calls_lock = threading.Lock(), threading.Lock()  # the forking thread held _lock
    for conn in list(_parent_ends):  # this process's copies of every parent-side pipe end
        conn.close()
    # torch's intra-op thread pool does not survive fork: its threads exist only in the
    # parent, and a forked child that hands work to the pool it inherited can hang (OpenMP
    # is not fork-safe). With one thread each op runs inline. Only when torch is already
    # imported: importing it here would cost seconds per worker.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    name, is_gen = getattr(task, "__qualname__", repr(task)), inspect.isgeneratorfunction(task)
    while True:
        try:
            data = args_conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            args, kwargs = pickle.loads(data)
            if not is_gen:
                _reply(res_conn, "ok", task(*args, **kwargs), f"the return value of {name}")
                continue
            gen, ended = task(*args, **kwargs), True
            for value in gen:  # as the real one: a stop is seen after the next() under way
                if stop.is_set():
                    break
                if not _reply(res_conn, "item", value, f"a value yielded by {name}"):
                    ended = False  # the error went instead: nothing more
                    break
            gen.close()
            if ended:
                _reply(res_conn, "end")
        except Exception as exc:
            _reply(res_conn, "error", exc)


class _Worker:
    """One forked process with its two pipes and its stop event."""

    def __init__(self, task: Callable[..., Any]):
        with _lock:  # no other fork may inherit this worker's child-side ends
            args_r, args_w = _ctx.Pipe(duplex=False)
            res_r, res_w = _ctx.Pipe(duplex=False)
            self.stop = _ctx.Event()
            self.process = _ctx.Process(target=_worker_main, args=(task, args_r, res_w, self.stop), daemon=True)
            _parent_ends.update((args_w, res_r))
            try:
                self.process.start()
            finally:
                args_r.close()
                res_w.close()
        self.send, self.recv = args_w, res_r

    def receive(self, deadline: float) -> tuple[str, Any]:
        """The next message, unpickled, or :class:`_Lost` if the worker is gone."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise _Lost("DurationExceeded")
            try:
                ready = mp_connection.wait([self.recv, self.process.sentinel], timeout=remaining)
                data = self.recv.recv_bytes() if self.recv in ready or self.recv.poll() else None
            except (EOFError, OSError):  # it died mid-message, or shutdown() closed the pipe
                raise _Lost("Aborted") from None
            if data is not None:
                return pickle.loads(data)
            if self.process.sentinel in ready:
                raise _Lost("Aborted")

    def kill(self, close: bool = True) -> None:
        """Stop the process now and (unless a caller still reads them) close the pipe ends."""
        for signal_it in (self.process.terminate, self.process.kill):
            if self.process.is_alive():
                signal_it()
                self.process.join(1)
        for conn in (self.send, self.recv) if close else ():
            _parent_ends.discard(conn)
            conn.close()


class _Pool:
    """The workers of one decorated function: idle ones are reused, busy ones are not."""

    def __init__(self, task: Callable[..., Any]):
        self.task, self.name, self.cond = task, getattr(task, "__qualname__", repr(task)), threading.Condition()
        self.workers: set[_Worker] = set()
        self.idle: list[_Worker] = []

    def acquire(self) -> _Worker:
        """An idle live worker, a new one, or (at :data:`MAX_WORKERS`) the next freed one."""
        deadline = time.monotonic() + WAIT_FOR_WORKER_S
        with self.cond:
            while True:
                while self.idle:
                    worker = self.idle.pop()
                    if worker.process.is_alive():
                        return worker
                    self.workers.discard(worker)
                    worker.kill()
                if len(self.workers) < MAX_WORKERS:
                    worker = _Worker(self.task)
                    self.workers.add(worker)
                    with _lock:
                        _pools.add(self)
                    return worker
                if not self.cond.wait(deadline - time.monotonic()):
                    raise _error(f"No GPU was available after {WAIT_FOR_WORKER_S:g}s")

    def release(self, worker: _Worker, reusable: bool) -> None:
        """Back to the idle list if it finished its call cleanly; else killed."""
        with self.cond:
            if reusable and worker in self.workers and worker.process.is_alive():
                self.idle.append(worker)
            else:
                self.workers.discard(worker)
                worker.kill()
            self.cond.notify()

    def shutdown(self) -> None:
        """Kill every worker, busy ones included (their callers get "GPU task aborted")."""
        with self.cond:
            workers, idle = list(self.workers), set(self.idle)
            self.workers.clear()
            self.idle.clear()
            self.cond.notify_all()
        for worker in workers:  # a busy one's caller sees it die, then closes its pipes
            worker.kill(close=worker in idle)


class _Call:
    """One call of a decorated function: its worker, its deadline and its entry in :data:`calls`."""

    def __init__(self, pool: _Pool, duration: Any, args: tuple, kwargs: dict):
        self.pool, self.worker, self.clean, self.began = pool, None, False, time.monotonic()
        self.record: dict[str, Any] | None = {
            "function": pool.name, "duration": _seconds(duration, args, kwargs),
            "wall": 0.0, "pid": None, "stopped": False, "items": 0, "error": None}
        self.payload = partial(_dump_args, pool.name, args, kwargs)

    def __enter__(self) -> _Call:
        try:
            seconds, cap = self.record["duration"], _env_seconds("SPACES_DOUBLE_MAX_DURATION_S", 120)
            if seconds > cap:
                self.record["error"] = "DurationRefused"
                raise _error(f"The requested GPU duration ({seconds:g}s) is larger than the "
                             f"maximum allowed ({cap:g}s)")
            payload = self.payload()
            self.worker = self.pool.acquire()
            self.record["pid"] = self.worker.process.pid
            self.worker.stop.clear()
            self.deadline = time.monotonic() + seconds + _env_seconds("SPACES_DOUBLE_GRACE_S", 5)
            try:
                self.worker.send.send_bytes(payload)
            except OSError:  # it died before the call
                raise _Lost("Aborted") from None
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def next(self) -> Any:
        """The call's result, its next yielded value, or ``_END``; the worker's error raised."""
        kind, value = self.worker.receive(self.deadline)
        if kind == "item":
            self.record["items"] += 1
            return value
        self.clean = True
        if kind == "error":
            self.record["error"] = value["cls"]
            if value["gradio"] is not None:
                raise pickle.loads(value["gradio"])
            sys.stderr.write(value["traceback"])  # as the real package prints it
            error = _error(f"{value['cls']}: {value['message']}")
            error.worker_traceback = value["traceback"]  # type: ignore[attr-defined]
            raise error
        return _END if kind == "end" else value

    def stop(self) -> None:
        """The caller closed its generator: the worker closes the task's after its next()."""
        self.record["stopped"] = True
        self.worker.stop.set()
        with suppress(_Lost):  # if it had to be killed, it is not clean
            while self.worker.receive(self.deadline)[0] not in ("end", "error"):
                pass  # values it sent before it saw the stop
            self.clean = True

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.worker is not None:
            self.pool.release(self.worker, self.clean)
            self.worker = None
        record, self.record = self.record, None
        if record is None:  # __enter__ failed and this ran already
            return
        record["wall"] = time.monotonic() - self.began
        if exc is not None and not isinstance(exc, GeneratorExit):
            record["error"] = exc.args[0] if isinstance(exc, _Lost) else record["error"] or exc_type.__name__
        with _calls_lock:
            calls.append(record)
            del calls[:-MAX_LOGGED_CALLS]
        if isinstance(exc, _Lost):
            raise _error("GPU task aborted" if exc.args[0] == "Aborted" else
                         f"GPU task exceeded its duration of {record['duration']:g}s and was aborted"
                         ) from None


def GPU(task: Callable[..., Any] | None = None, *, duration: Any = None,
        size: str | None = None) -> Any:
    """``@spaces.GPU``, ``@spaces.GPU(duration=30)`` or ``@spaces.GPU(duration=fn)``.

    ``duration`` is seconds, a ``timedelta`` or a function of the call's arguments giving
    either (None: 60 s). ``size`` (``"large"``/``"xlarge"``) is accepted and ignored.
    Without ``SPACES_ZERO_GPU`` the function comes back unchanged.
    """
    if not callable(task):
        if task is not None and not isinstance(task, str):  # @spaces.GPU(45)
            duration = task
        return partial(_decorate, duration=duration)
    return _decorate(task, duration=duration)


def _decorate(task: Callable[..., Any], duration: Any) -> Callable[..., Any]:
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "t", "true"):
        return task
    with _lock:
        if task in _decorated:
            return _decorated[task]
    if inspect.iscoroutinefunction(task) or inspect.isasyncgenfunction(task):
        raise NotImplementedError("ZeroGPU does not support async functions")
    pool = _Pool(task)

    @wraps(task)
    def gpu_call(*args: Any, **kwargs: Any) -> Any:
        if _in_worker:  # a nested call: already in the worker
            return task(*args, **kwargs)
        with _Call(pool, duration, args, kwargs) as call:
            return call.next()

    @wraps(task)
    def gpu_stream(*args: Any, **kwargs: Any) -> Any:
        if _in_worker:
            yield from task(*args, **kwargs)
            return
        with _Call(pool, duration, args, kwargs) as call:
            while (value := call.next()) is not _END:
                try:
                    yield value
                except GeneratorExit:
                    call.stop()
                    raise

    decorated = gpu_stream if inspect.isgeneratorfunction(task) else gpu_call
    decorated.zerogpu = None  # type: ignore[attr-defined]
    with _lock:
        _decorated.update({task: decorated, decorated: decorated})
    return decorated


def shutdown() -> None:
    """Kill every worker process; decorated functions start new ones when called again."""
    with _lock:
        pools = list(_pools)
        _pools.clear()
    for pool in pools:
        pool.shutdown()


def reset() -> None:
    """Between tests: :func:`shutdown`, forget decorated functions, and clear :data:`calls`."""
    shutdown()
    with _lock:
        _decorated.clear()
    with _calls_lock:
        calls.clear()


atexit.register(shutdown)
