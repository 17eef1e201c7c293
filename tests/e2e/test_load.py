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


def test_lesson_6_endpoints_under_a_small_class():
    """Generate, compare, sweep, and look inside the pictures just made (attention, path) at once."""
    from diffusion.models import registry as models

    if not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    report = run_load(students=3, seconds=20, think=(0.5, 2.0), arrive_within=2.0,
                      only=("text_to_image", "text_to_image_compare", "text_to_image_guidance_sweep"))
    print_report(report)
    assert report["failed"] == 0, report["endpoints"]
    assert report["healthy_after"]
    endpoints = report["endpoints"]
    assert endpoints["text_to_image"]["completed"] > 0
    assert endpoints["text_to_image_compare"]["completed"] + endpoints["text_to_image_guidance_sweep"]["completed"] > 0
    assert sum(endpoints.get(n, {}).get("completed", 0) for n in ("text_to_image_attention", "text_to_image_path")) > 0
