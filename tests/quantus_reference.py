"""Helpers to run Quantus 0.6 on the same inputs as attrlab.quality: per-sample normalisation, numpy adapters."""

from __future__ import annotations

import numpy as np
import torch

quantus = __import__("pytest").importorskip("quantus")

#: Quantus keyword arguments that normalise each map by its own second moment (attrlab's default): Quantus 0.6
#: normalises the whole batch array at once unless it is given the per-sample axes
SECOND_MOMENT = {
    "normalise": True,
    "normalise_func": quantus.normalise_func.normalise_by_average_second_moment_estimate,
    "normalise_func_kwargs": {"normalise_axes": (1, 2, 3)},
    "disable_warnings": True,
}
NO_NORMALISATION = {"normalise": False, "disable_warnings": True}


def np32(t: torch.Tensor) -> np.ndarray:
    """A float32 (or int64 for integer tensors) numpy copy, so Quantus' in-place edits cannot reach the tensor."""
    array = t.detach().cpu().numpy()
    return array.astype(np.int64 if array.dtype.kind in "iu" else np.float32).copy()


def explain_func(explain):
    """Quantus' ``explain_func(model, inputs, targets, **kwargs)`` from an attrlab ``explain(x, target)``."""

    def wrapped(model, inputs, targets, **kwargs):
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        y = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        return explain(x, y).detach().cpu().numpy().astype(np.float32)

    return wrapped


def random_maps(n: int = 6, shape=(1, 28, 28), seed: int = 0) -> torch.Tensor:
    """Continuous random maps (no ties), positive and negative."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=generator)
