"""Side-by-side timing for the benchmarks: two callables alternated within every repeat, the ratio as a median."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def paired(ours: Callable[[], None], reference: Callable[[], None], repeats: int) -> tuple[float, float, float]:
    """Median milliseconds of ``ours`` and ``reference`` and the median of their per-repeat ratios.

    The two sides alternate within every repeat (after one warm-up call each), so load from other processes hits both
    alike.
    """
    for function in (ours, reference):
        function()
    times = []
    for _ in range(repeats):
        pair = []
        for function in (ours, reference):
            start = time.perf_counter()
            function()
            pair.append(time.perf_counter() - start)
        times.append(pair)
    return (
        1000 * statistics.median(t[0] for t in times),
        1000 * statistics.median(t[1] for t in times),
        statistics.median(t[0] / t[1] for t in times),
    )
