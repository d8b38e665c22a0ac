"""Side-by-side timing for the benchmarks: two callables alternated within every repeat, the ratio as a median; the
``--device`` option and the host-memory setting (``--malloc-defaults``) every benchmark takes."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from attrlab.device import resolve_device, reuse_freed_memory, synchronize


def paired(
    ours: Callable[[], None], reference: Callable[[], None], repeats: int, device: str | torch.device = "cpu"
) -> tuple[float, float, float]:
    """Median milliseconds of ``ours`` and ``reference`` and the median of their per-repeat ratios.

    The two sides alternate within every repeat (after one warm-up call each), so load from other processes hits both
    alike; ``device`` is synchronised before each clock reading (queued CUDA kernels count to the call that queued
    them).
    """
    for function in (ours, reference):
        function()
    times = []
    for _ in range(repeats):
        pair = []
        for function in (ours, reference):
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            pair.append(time.perf_counter() - start)
        times.append(pair)
    return (
        1000 * statistics.median(t[0] for t in times),
        1000 * statistics.median(t[1] for t in times),
        statistics.median(t[0] / t[1] for t in times),
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` option every benchmark takes (resolve it with :func:`attrlab.device.resolve_device`)."""
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")


def device_and_batch(name: str, cpu_batch: int, cuda_batch: int, batch: int | None) -> tuple[torch.device, int]:
    """The benchmark's device and batch size: ``batch`` when given, else the device's default (a GPU runs larger
    batches, where its time is not just kernel launches)."""
    device = resolve_device(name)
    return device, batch or (cuda_batch if device.type == "cuda" else cpu_batch)


def add_malloc_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--malloc-defaults`` switch every benchmark takes (see :func:`host_memory`)."""
    parser.add_argument(
        "--malloc-defaults",
        action="store_true",
        help="keep glibc's malloc defaults (by default freed host memory is reused: attrlab.device.reuse_freed_memory)",
    )


def host_memory(malloc_defaults: bool) -> str:
    """Apply attrlab's host-memory setting unless ``malloc_defaults``; return the line that says which one is measured.

    Both sides of every ratio run under the same setting; the ratios differ between the two settings because the
    sides allocate different amounts of large temporaries (each one page-faulted in again under glibc's defaults).
    """
    if malloc_defaults:
        return "host memory: glibc's malloc defaults (--malloc-defaults)"
    if reuse_freed_memory():
        return "host memory: freed memory reused (attrlab.device.reuse_freed_memory)"
    return "host memory: the C library's defaults (not glibc, or ATTRLAB_REUSE_FREED_MEMORY=0)"
