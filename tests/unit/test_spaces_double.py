"""The ZeroGPU test double in ``tests/zerogpu/spaces``: it must behave as a Space does.

Each test imports the double afresh with ``SPACES_ZERO_GPU`` set, decorates small
functions (decoration reads the variable, as the real package's import does) and, when it
ends, kills the workers and takes the double out of ``sys.modules`` again, so that the
rest of the suite never imports it by accident.
"""

from __future__ import annotations

import importlib
import os
import pickle
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

ZEROGPU_DIR = Path(__file__).resolve().parents[1] / "zerogpu"

STATE = {"n": 0}  # changed only inside workers


def _import_double(monkeypatch):
    monkeypatch.syspath_prepend(str(ZEROGPU_DIR))
    module = importlib.import_module("spaces")
    assert module.__version__ == "0.0-test-double"
    return module


@pytest.fixture
def spaces(monkeypatch):
    """The double, fresh, on ZeroGPU, with a short grace; its workers killed afterwards."""
    importlib.import_module("gradio")  # the double imports it lazily: once, here, not in a timed call

    saved = sys.modules.pop("spaces", None)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setenv("SPACES_DOUBLE_GRACE_S", "0.3")
    module = _import_double(monkeypatch)
    try:
        yield module
    finally:
        module.reset()
        sys.modules.pop("spaces", None)
        if saved is not None:
            sys.modules["spaces"] = saved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def whoami() -> tuple[int, bool]:
    """This process's pid, and whether the double says it is inside a GPU call."""
    return os.getpid(), _spaces().in_gpu_call()


def _spaces():
    return sys.modules["spaces"]


def bump() -> int:
    """Count calls in this process's memory."""
    STATE["n"] += 1
    return STATE["n"]


def test_without_zero_gpu_the_decorator_returns_the_function(monkeypatch):
    saved = sys.modules.pop("spaces", None)
    try:
        for value in (None, "false", "0"):
            if value is None:
                monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
            else:
                monkeypatch.setenv("SPACES_ZERO_GPU", value)
            module = importlib.reload(_import_double(monkeypatch))
            assert module.GPU(bump) is bump
            assert module.GPU(duration=30)(bump) is bump
            assert module.GPU(duration=lambda: 5, size="xlarge")(bump) is bump
            assert module.calls == []
    finally:
        sys.modules.pop("spaces", None)
        if saved is not None:
            sys.modules["spaces"] = saved


def test_a_call_runs_in_a_forked_worker_that_is_kept_for_the_next(spaces):
    gpu_whoami = spaces.GPU(whoami)
    assert gpu_whoami.zerogpu is None and gpu_whoami.__name__ == "whoami"
    pid, inside = gpu_whoami()
    assert pid != os.getpid() and inside and not spaces.in_gpu_call()
    assert gpu_whoami()[0] == pid
    assert spaces.GPU(whoami) is gpu_whoami and spaces.GPU(gpu_whoami) is gpu_whoami


def test_state_changed_in_the_worker_does_not_come_back(spaces):
    gpu_bump = spaces.GPU(duration=10)(bump)
    assert [gpu_bump(), gpu_bump()] == [1, 2]  # the same worker, still alive, remembers
    assert STATE["n"] == 0


def meet(path: str, count: int) -> int:
    """Note this pid in ``path``, wait (up to 5 s) until ``count`` pids are there, return it."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    deadline = time.monotonic() + 5
    while len(Path(path).read_text().split()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


def test_a_call_while_the_worker_is_busy_gets_its_own(spaces, tmp_path):
    gpu_meet = spaces.GPU(meet)  # two calls at once on one worker would never meet
    pids = []
    threads = [threading.Thread(target=lambda: pids.append(gpu_meet(str(tmp_path / "met"), 2)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids


def test_a_nested_decorated_call_runs_directly_in_the_worker(spaces):
    inner = spaces.GPU(whoami)
    outer = spaces.GPU(lambda: (os.getpid(), inner()))
    pid, (inner_pid, inside) = outer()
    assert pid == inner_pid != os.getpid() and inside


@pytest.mark.parametrize("bad", [lambda: 1, threading.Lock()], ids=["lambda", "lock"])
def test_an_unpicklable_argument_fails_before_the_call(spaces, bad):
    gpu_bump = spaces.GPU(lambda *args, **kwargs: bump())
    with pytest.raises(pickle.PicklingError, match=r"argument 'x' .* cannot be pickled"):
        gpu_bump(1, x=bad)
    assert spaces.calls[-1]["error"] == "PicklingError" and spaces.calls[-1]["pid"] is None


def test_an_unpicklable_result_fails_as_an_error(spaces):
    import gradio as gr

    gpu_lock = spaces.GPU(threading.Lock)
    with pytest.raises(gr.Error) as caught:
        gpu_lock()
    assert "return value" in caught.value.message and "cannot be pickled" in caught.value.message

    def stream():
        yield 1
        yield threading.Lock()
        yield 3

    with pytest.raises(gr.Error, match="yielded"):
        list(spaces.GPU(stream)())


def test_duration_may_be_a_function_of_the_call_arguments(spaces):
    seen = []

    def duration(n, *, scale=1):
        seen.append((n, scale))
        return timedelta(seconds=n * scale)

    gpu_double = spaces.GPU(duration=duration)(lambda n, *, scale=1: 2 * n * scale)
    assert gpu_double(3, scale=2) == 12
    assert seen == [(3, 2)]
    assert spaces.calls[-1]["duration"] == 6.0 and spaces.calls[-1]["error"] is None
    assert spaces.GPU(bump)() == 1 and spaces.calls[-1]["duration"] == 60.0  # the default


def test_a_call_past_its_duration_is_killed(spaces):
    import gradio as gr

    gpu_sleep = spaces.GPU(duration=0.5)(lambda: time.sleep(30))
    began = time.monotonic()
    with pytest.raises(gr.Error, match="exceeded its duration"):
        gpu_sleep()
    assert time.monotonic() - began < 5
    record = spaces.calls[-1]
    assert record["error"] == "DurationExceeded" and not _alive(record["pid"])


def test_a_duration_over_the_cap_is_refused(spaces, monkeypatch):
    import gradio as gr

    monkeypatch.setenv("SPACES_DOUBLE_MAX_DURATION_S", "10")
    gpu_bump = spaces.GPU(duration=lambda: 11)(bump)
    with pytest.raises(gr.Error, match="larger than the maximum"):
        gpu_bump()
    assert spaces.calls[-1]["error"] == "DurationRefused" and spaces.calls[-1]["pid"] is None
    assert spaces.GPU(duration=10)(lambda: bump())() == 1  # (bump itself stays as decorated)


def wait_for(path: str):
    """Yield once, then wait (up to 5 s) for the test to create ``path``, then say if it did."""
    yield "first"
    deadline = time.monotonic() + 5
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield os.path.exists(path)


def test_a_generator_streams_each_value_as_it_is_produced(spaces, tmp_path):
    gate = tmp_path / "gate"
    stream = spaces.GPU(wait_for)(str(gate))
    assert next(stream) == "first"  # while the worker still waits for the gate
    gate.touch()
    assert list(stream) == [True]
    assert spaces.calls[-1]["items"] == 2 and not spaces.calls[-1]["stopped"]


def counting(path: str):
    """Yield 0, 1, 2... slowly, noting in ``path`` how many were produced and how it ended."""
    produced = 0
    try:
        for i in range(100):
            produced += 1
            Path(path).write_text(f"{produced}")
            yield i
            time.sleep(0.1)
    except GeneratorExit:
        Path(path).write_text(f"{produced} GeneratorExit")
        raise
    finally:
        Path(path).write_text(Path(path).read_text() + " finally")


def test_closing_the_callers_generator_stops_the_workers(spaces, tmp_path):
    log = tmp_path / "log"
    gpu_counting = spaces.GPU(counting)
    stream = gpu_counting(str(log))
    assert [next(stream), next(stream)] == [0, 1]
    before = int(log.read_text())
    stream.close()  # returns once the worker has closed the task's generator
    produced, *how = log.read_text().split()
    assert before <= int(produced) <= before + 2 and how == ["GeneratorExit", "finally"]
    record = spaces.calls[-1]
    assert record["stopped"] and record["items"] == 2 and record["error"] is None
    assert spaces.GPU(whoami)()[0] != record["pid"]  # another function, another worker
    again = gpu_counting(str(log))
    assert next(again) == 0
    again.close()
    assert spaces.calls[-1]["pid"] == record["pid"]  # the stopped worker, reused once done


def test_a_gradio_error_comes_back_as_is(spaces):
    import gradio as gr

    def refuse():
        raise gr.Error("Prompt too long", title="Nope")

    with pytest.raises(gr.Error) as caught:
        spaces.GPU(refuse)()
    assert caught.value.message == "Prompt too long" and caught.value.title == "Nope"
    assert spaces.calls[-1]["error"] == "Error"


def test_another_exception_becomes_a_gradio_error_naming_it(spaces):
    import gradio as gr

    def fail(n):
        raise ValueError(f"bad value {n}")

    with pytest.raises(gr.Error) as caught:
        spaces.GPU(fail)(7)
    assert "ValueError" in caught.value.message and "bad value 7" in caught.value.message
    assert "raise ValueError" in caught.value.worker_traceback
    assert spaces.calls[-1]["error"] == "ValueError"

    def half_stream():
        yield 1
        raise KeyError("gone")

    got = []
    with pytest.raises(gr.Error, match="KeyError"):
        for value in spaces.GPU(half_stream)():
            got.append(value)
    assert got == [1]


def test_a_worker_that_dies_aborts_the_call(spaces):
    import gradio as gr

    gpu_die = spaces.GPU(lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(gr.Error, match="GPU task aborted"):
        gpu_die()
    assert spaces.calls[-1]["error"] == "Aborted"


def test_calls_are_logged_and_bounded(spaces, monkeypatch):
    monkeypatch.setattr(spaces, "MAX_LOGGED_CALLS", 3)
    gpu_bump = spaces.GPU(duration=7)(bump)
    results = [gpu_bump() for _ in range(5)]
    assert results == [1, 2, 3, 4, 5] and len(spaces.calls) == 3
    for record in spaces.calls:
        assert record["function"] == "bump" and record["duration"] == 7.0
        assert 0 <= record["wall"] < 5 and record["pid"] != os.getpid()
        assert not record["stopped"] and record["error"] is None


def test_reset_kills_the_workers_and_clears_the_log(spaces):
    gpu_whoami = spaces.GPU(whoami)
    pid = gpu_whoami()[0]
    assert _alive(pid) and spaces.calls
    spaces.reset()
    assert not _alive(pid) and spaces.calls == []
    assert gpu_whoami()[0] not in (pid, os.getpid())  # a decorated function starts a new one
