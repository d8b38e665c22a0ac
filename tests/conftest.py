"""Shared fixtures: the digits dataset (loaded once per session), a fixed seed, and the ``device`` every test that
computes attributions, trains, tracks or evaluates runs on.

``device`` is "cpu" always and also "cuda" when ``torch.cuda.is_available()``; the CUDA cases carry the ``cuda``
marker (``pytest -m cuda`` runs only them, ``make gpu-check`` does so). TF32 is switched off for every test on CUDA
(cuDNN convolutions and matmuls in full float32), so the tolerances that hold on the CPU hold there too; TF32 stays
at PyTorch's defaults in the package and the benchmarks (see the README's GPU section). Freed host memory is reused
(:func:`attrlab.device.reuse_freed_memory`), as in attrlab's other processes.
"""

from __future__ import annotations

import pytest
import torch

from attrlab.data import load_dataset
from attrlab.device import full_float32, reuse_freed_memory

reuse_freed_memory()

DEVICES = ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if torch.cuda.is_available() else [])


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", device="cpu")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """ "cpu", and "cuda" where present (TF32 off for the test)."""
    if request.param == "cpu":
        yield "cpu"
        return
    with full_float32():
        yield request.param


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
