"""A small class presses the same button on a real server: every request is answered, the report is complete.

The full version is ``python -m diffusion.bench classroom`` (30 students within 10 s);
timings are printed there, never asserted here.
"""

from __future__ import annotations

import json

import pytest

from diffusion.bench.cli import main as bench_main

pytestmark = pytest.mark.e2e

TIMES = ("first_response_s", "first_output_s", "answer_s")


def _answered(figures: dict, requests: int) -> None:
    assert figures["requests"] == requests
    assert figures["failed"] == 0, figures["errors"]
    for name in TIMES:
        assert set(figures[name]) == {"p50", "p95", "max"}
        assert figures[name]["max"] is not None, name  # every answered request had its messages timed
    assert sum(figures["first_message_was"].values()) == requests


def test_a_small_class_pressing_sampling_and_heat_is_answered_in_full(app_server, tmp_path, capsys):
    out = tmp_path / "classroom.json"
    status = bench_main(["classroom", "--url", app_server, "--tab", "sampling", "--tab", "heat", "--students", "3",
                         "--within", "1", "--with-light", "1", "--flood", "1", "--deadline", "300",
                         "--json", str(out)])
    printed = capsys.readouterr().out
    print(printed)
    report = json.loads(out.read_text())
    assert status == 0, printed
    assert report["failed"] == 0 and report["skipped"] == []
    assert list(report["tabs"]) == ["sampling", "heat"]
    for name, entry in report["tabs"].items():
        assert f"## {name} ({entry['api_name']})" in printed
        _answered(entry["alone"], 1)
        _answered(entry["burst"]["class"], 3)
        for phase in (entry["alone"], entry["burst"]):
            assert set(phase["cores_busy"]) == {"cores", "machine", "niced", "server", "bench"}
            assert "peak_rss_mb" in phase and phase["wall_s"] >= 0
        assert set(entry["burst"]["light"]) == {"/heat_simulate", "/forward_noise"}
        assert all(f["failed"] == 0 for f in entry["burst"]["light"].values())
    assert report["tabs"]["sampling"]["seed_parameter"] == "seed"
    assert report["tabs"]["heat"]["seed_parameter"] is None and "note" in report["tabs"]["heat"]
    assert report["light_p95_met"] in (True, False)
    flood = report["flood"]
    _answered(flood["student"], 1)
    assert flood["answered_before_the_student"] + flood["refused"] + flood["cancelled"] == flood["requests"] == 1


def test_the_classroom_refuses_a_server_on_another_machine(capsys):
    assert bench_main(["classroom", "--url", "http://example.com:7860/"]) == 2
    assert "this machine" in capsys.readouterr().err
