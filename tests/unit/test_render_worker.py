"""The drawing processes: same pictures as in-process, and a broken worker never costs an answer."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from diffusion.lessons import heat
from diffusion.lessons.noising.figures import histogram_data
from diffusion.serving import render_pool
from diffusion.serving.render_pool import RenderPool

PARAMS = heat.HeatParams(initial_condition="spike", diffusivity=0.1, length=100.0, n_points=200, t_end=10.0,
                         n_steps=500).validated()
TEXT = {"xlabel_x": "位置 x（长度单位）"}


@pytest.fixture(scope="module")
def pool():
    p = RenderPool(2, timeout=60)
    yield p
    p.close()


def local_heat() -> list[str]:
    result = heat.simulate(PARAMS)
    return [render_pool.png_data_url(f) for f in render_pool.heat_figures(result, len(result.times) - 1, TEXT)]


def test_a_worker_draws_the_same_pictures_as_this_process(pool):
    frame = len(heat.simulate(PARAMS).times) - 1
    assert pool.run(render_pool.heat_request(PARAMS, frame, TEXT)) == local_heat()
    rng = np.random.default_rng(0)
    histogram = histogram_data(rng.standard_normal((16, 16, 3)), np.zeros((16, 16, 3)))
    args = (histogram, 321, TEXT)
    pictures = pool.run(render_pool.histogram_request(*args))
    assert pictures == render_pool.histogram_picture(*args)
    assert len(pictures) == 1 and pictures[0].startswith("data:image/png;base64,")


def test_a_worker_stays_small():
    """No torch or diffusers in a drawing process: it imports only what it draws with."""
    import subprocess
    import sys

    code = ("import sys, diffusion.serving.render_pool; "
            "print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_two_requests_at_once_both_get_their_pictures(pool):
    """Both workers busy at once (the speed-up itself is measured by the load benchmark)."""
    import threading

    request = render_pool.heat_request(PARAMS, 10, TEXT)
    pool.run(request)  # both workers warm
    pool.run(request)
    start = time.perf_counter()
    pool.run(request)
    one = time.perf_counter() - start
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.run(request))) for _ in range(2)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    two = time.perf_counter() - start
    assert len(results) == 2 and all(results)
    print(f"one request {one:.3f} s, two at once {two:.3f} s")


def test_a_caller_that_will_not_wait_draws_itself_while_every_worker_is_busy():
    import threading

    pool = RenderPool(1, timeout=60)
    try:
        histogram = render_pool.histogram_request(
            histogram_data(np.zeros((8, 8, 3)), np.zeros((8, 8, 3))), 5, {})
        assert pool.run(histogram, wait=False)  # idle: the worker draws it
        busy = threading.Thread(target=pool.run, args=(render_pool.heat_request(PARAMS, 10, TEXT),))
        busy.start()
        deadline = time.monotonic() + 5
        while pool._idle.qsize() and time.monotonic() < deadline:  # until the worker has taken the heat run
            time.sleep(0.001)
        assert pool.run(histogram, wait=False) is None
        assert busy.is_alive()  # it answered without waiting for the heat run to finish
        busy.join()
        assert pool.run(histogram, wait=False)  # free again
    finally:
        pool.close()


def test_a_refused_task_returns_none_and_the_worker_stays(pool):
    assert pool.run({"task": "heat", "params": {"diffusivity": -1.0}, "frame": 0, "text": {}}) is None
    assert pool.run({"task": "no such task"}) is None
    bad_histogram = {"edges": list(range(5000)), "noisy": [], "clean": [], "mean": 0, "std": 1}
    assert pool.run(render_pool.histogram_request(bad_histogram, 1, {})) is None
    assert pool.run(render_pool.heat_request(PARAMS, 0, {})) is not None


def test_a_dead_or_hanging_worker_is_replaced_and_the_caller_draws_itself():
    pool = RenderPool(1, timeout=0.05)
    try:
        request = render_pool.heat_request(PARAMS, 0, TEXT)
        # The first request also waits for the worker to start: longer than 0.05 s, so the
        # watchdog ends it and the caller is told to draw itself.
        assert pool.run(request) is None
        pool.timeout = 60
        assert pool.run(request) is not None  # a fresh worker took its place
        worker = pool._idle.queue[0]
        worker.process.kill()
        worker.process.wait()
        assert pool.run(request) is not None  # noticed dead before use, replaced
    finally:
        pool.close()


def test_no_workers_means_draw_in_process():
    assert RenderPool(0).run(render_pool.heat_request(PARAMS, 0, TEXT)) is None
    assert render_pool.default_render_workers(1) == 0
    assert render_pool.default_render_workers(2) == 2
    assert render_pool.default_render_workers(64) == 4


def test_the_protocol_answers_every_line_even_garbage():
    lines = ["not json\n", json.dumps({"task": "heat"}) + "\n",
             json.dumps(render_pool.heat_request(PARAMS, 0, {})) + "\n"]
    out = io.StringIO()
    render_pool.serve(iter(lines), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["ok"] for r in replies] == [False, False, True]
    assert "JSONDecodeError" in replies[0]["error"] and len(replies[2]["pictures"]) == 4
