"""How the benchmarks time a call: the best of a few runs."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Smallest wall time of ``repeat`` runs (the least disturbed by other processes)."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = run()
        best = min(best, time.perf_counter() - start)
    return best, value
