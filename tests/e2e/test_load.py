"""A small classroom on a real server: every request completes and the light lessons stay quick.

The full version with 30 students is ``python -m diffusion.bench load``; timings are
printed there, never asserted here.
"""

from __future__ import annotations

import pytest

from diffusion.bench.load import print_report, run_load

pytestmark = pytest.mark.e2e


def test_a_small_classroom_is_served_completely():
    report = run_load(students=6, seconds=25)
    print_report(report)
    assert report["failed"] == 0, report["endpoints"]
    assert report["healthy_after"]
    assert report["endpoints"]["heat_simulate"]["completed"] > 0
    assert report["endpoints"]["forward_noise"]["completed"] > 0
