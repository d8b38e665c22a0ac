"""Shared fixtures: the digits dataset is loaded once per session (it is small and deterministic)."""

from __future__ import annotations

import pytest
import torch

from attrlab.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits", device="cpu")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
