"""Device choice and device-wide switches: CUDA when present, full-float32 and deterministic modes, synchronisation.

* :func:`resolve_device` picks the device ("auto": CUDA when present, otherwise the CPU).
* :func:`set_deterministic` makes CUDA runs repeat bit for bit (``TrainConfig(deterministic=True)`` calls it): it
  turns on ``torch.use_deterministic_algorithms`` (kernels without a deterministic version raise instead of running),
  turns off cuDNN's benchmark autotuner and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS needs for
  reproducible matmuls (CUDA >= 10.2). On the CPU the same seed already gives the same numbers.
* :func:`full_float32` switches TF32 off inside a ``with`` block, so float32 convolutions and matmuls on an Ampere or
  newer GPU keep float32's precision (the tests compare devices under it); outside it PyTorch's defaults hold.
* :func:`synchronize` waits for queued kernels before a clock is read (benchmarks); a no-op on the CPU.
* :func:`reuse_freed_memory` makes glibc's ``malloc`` keep freed host memory for the next tensor instead of returning
  it to the operating system: the CPU counterpart of PyTorch's CUDA caching allocator. PyTorch allocates CPU tensors
  with plain ``malloc``; glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
  unmaps it when freed, so each large activation of every call is faulted in page by page and zeroed by the kernel
  again. Measured on the 2-core CI machine: doubling an 80 MB tensor takes 23 ms with glibc's defaults and 2.2 ms
  with this, a convolution of 200 images with a 40 MB output 36 ms and 14 ms (``bench/results/tracking.txt`` has
  whole passes). attrlab's own processes call it (the command line, the chapters, the tests, the benchmarks); in
  your own scripts call it once. The price: the process keeps up to its peak of host memory until it exits, as the
  CUDA allocator does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

import torch

#: the cuBLAS workspace setting that makes its matmuls deterministic (NVIDIA's documented choice; ":16:8" also works)
CUBLAS_WORKSPACE = ":4096:8"

#: glibc ``mallopt`` parameters (``malloc.h``) and the values :func:`reuse_freed_memory` gives them, in bytes:
#: blocks below 1 GiB come from the heap, the heap is not trimmed before 1 GiB is free at its top, and it grows
#: 256 MiB at a time
MALLOPT_SETTINGS = {"M_MMAP_THRESHOLD": (-3, 2**30), "M_TRIM_THRESHOLD": (-1, 2**30), "M_TOP_PAD": (-2, 2**28)}
#: set to "0" to keep glibc's defaults where attrlab's own processes would change them
REUSE_ENV = "ATTRLAB_REUSE_FREED_MEMORY"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Return the torch device for ``device`` ("auto", "cpu", "cuda", "cuda:1", a torch.device or None = auto)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available here; use 'auto' or 'cpu'")
    return resolved


def device_name(device: str | torch.device) -> str:
    """A readable name: "cpu (N threads)" or the GPU's model, e.g. "cuda:0 (NVIDIA H200)"."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def synchronize(device: str | torch.device) -> None:
    """Wait until every kernel queued on ``device`` has finished (CUDA); nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reuse_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed host memory for reuse (see the module docstring for why and what it costs).

    Sets :data:`MALLOPT_SETTINGS` through ``mallopt``; calling it again changes nothing. It takes effect from the next
    allocation on, for the whole process. Nothing is done where the C library is not glibc (macOS, Windows, musl) or
    when the environment variable ``ATTRLAB_REUSE_FREED_MEMORY`` is ``0``.

    Returns
    -------
    bool
        Whether glibc accepted every setting.
    """
    if os.environ.get(REUSE_ENV, "1") == "0":
        return False
    libc = _glibc()
    if libc is None:
        return False
    # a list, not a generator: every setting is tried even after glibc refuses one (an older glibc caps the threshold)
    return all([libc.mallopt(parameter, value) == 1 for parameter, value in MALLOPT_SETTINGS.values()])


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def set_deterministic(enabled: bool = True) -> None:
    """Switch deterministic algorithms on (or off again) for the whole process; see the module docstring.

    ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS first runs in the process; it is set here when missing (a
    value already there is kept), so call this before the first CUDA matmul (``Trainer`` does so when it starts).
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.benchmark = False if enabled else torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic = enabled


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """:func:`set_deterministic` inside a ``with`` block, the previous settings restored afterwards."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    set_deterministic(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[1], before[2]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for float32 matmuls and cuDNN convolutions inside the block (restored afterwards).

    Uses PyTorch's ``fp32_precision`` switches where they exist (2.9 and later; mixing them with the older
    ``allow_tf32`` flags is an error there), otherwise ``allow_tf32``.
    """
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "conv"):
        before = (matmul.fp32_precision, conv.conv.fp32_precision)
        matmul.fp32_precision, conv.conv.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.conv.fp32_precision = before
        return
    before = (matmul.allow_tf32, conv.allow_tf32)
    matmul.allow_tf32, conv.allow_tf32 = False, False
    try:
        yield
    finally:
        matmul.allow_tf32, conv.allow_tf32 = before
