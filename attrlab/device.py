"""Device choice and device-wide switches: CUDA when present, full-float32 and deterministic modes, synchronisation.

* :func:`resolve_device` picks the device ("auto": CUDA when present, otherwise the CPU).
* :func:`set_deterministic` makes CUDA runs repeat bit for bit (``TrainConfig(deterministic=True)`` calls it): it
  turns on ``torch.use_deterministic_algorithms`` (kernels without a deterministic version raise instead of running),
  turns off cuDNN's benchmark autotuner and sets ``CUBLAS_WORKSPACE_CONFIG=:4096:8``, which cuBLAS needs for
  reproducible matmuls (CUDA >= 10.2). On the CPU the same seed already gives the same numbers.
* :func:`full_float32` switches TF32 off inside a ``with`` block, so float32 convolutions and matmuls on an Ampere or
  newer GPU keep float32's precision (the tests compare devices under it); outside it PyTorch's defaults hold.
* :func:`synchronize` waits for queued kernels before a clock is read (benchmarks); a no-op on the CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

#: the cuBLAS workspace setting that makes its matmuls deterministic (NVIDIA's documented choice; ":16:8" also works)
CUBLAS_WORKSPACE = ":4096:8"


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
