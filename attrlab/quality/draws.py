"""The random draws of the metrics: seeded and device-independent by default, or in Quantus' order for comparisons.

attrlab draws from a ``torch.Generator`` seeded with the metric's ``seed`` on the CPU and moves the result to the
inputs' device, so a seed gives the same numbers on every device. Quantus 0.6 draws from numpy's global RNG, batch by
batch of its ``batch_size`` (64 by default), inside its loops; the ``quantus_*`` functions here seed numpy's global RNG
and replay those loops, so an attrlab metric given their result sees exactly the numbers Quantus used (the tests and
the benchmark compare that way). They reseed numpy's global RNG, as Quantus' own seeding does.
"""

from __future__ import annotations

import numpy as np
import torch


def random_subsets(n: int, runs: int, features: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, runs, size) feature indices: for every sample and run a uniform subset of ``size`` of ``features``."""
    if not 0 < size <= features:
        raise ValueError(f"subset size must be between 1 and the number of features {features}, got {size}")
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand((n, runs, features), generator=generator)
    return keys.topk(size, dim=2).indices


def uniform_noise(
    n: int, samples: int, shape: tuple[int, ...], lower_bound: float, upper_bound: float | None, seed: int = 0
) -> torch.Tensor:
    """``(n, samples, *shape)`` noise, uniform in (-lower_bound, lower_bound), or (lower_bound, upper_bound) when given."""
    low, high = (-lower_bound, lower_bound) if upper_bound is None else (lower_bound, upper_bound)
    if not high > low:
        raise ValueError(f"the noise interval must not be empty, got ({low}, {high})")
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, samples, *shape), generator=generator, dtype=torch.float64).mul_(high - low).add_(low)


def off_classes(y: torch.Tensor, num_classes: int, seed: int = 42) -> torch.Tensor:
    """(N,) a class other than ``y`` for every sample, uniform over the other ``num_classes - 1``."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, num_classes - 1, (len(y),), generator=generator).to(y.device)
    return index + (index >= y).long()  # the index-th class of the list without y, as in Quantus


def quantus_subsets(
    n: int, runs: int, features: int, size: int, seed: int, batch_size: int = 64, named_baseline: bool = True
) -> torch.Tensor:
    """Faithfulness Correlation's subsets as Quantus 0.6 draws them after ``np.random.seed(seed)``.

    With a named baseline ("black", "mean", ...) Quantus' ``get_baseline_dict`` also draws a uniform value per image
    after each run's subsets (whether or not it is used), which moves the global RNG on; ``named_baseline`` replays it.
    """
    np.random.seed(seed)
    out = np.empty((n, runs, size), dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        for run in range(runs):
            out[start:stop, run] = np.stack(
                [np.random.choice(features, size, replace=False) for _ in range(stop - start)]
            )
            if named_baseline:
                np.random.uniform(low=0.0, high=1.0, size=stop - start)
    return torch.from_numpy(out)


def quantus_uniform_noise(
    n: int,
    samples: int,
    shape: tuple[int, ...],
    lower_bound: float,
    upper_bound: float | None,
    seed: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """Average/Max Sensitivity's noise as Quantus 0.6 draws it after ``np.random.seed(seed)``."""
    np.random.seed(seed)
    d = int(np.prod(shape))
    out = np.empty((n, samples, d), dtype=np.float64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        for step in range(samples):
            if upper_bound is None:
                out[start:stop, step] = np.random.uniform(low=-lower_bound, high=lower_bound, size=(stop - start, d))
            else:
                out[start:stop, step] = np.random.uniform(low=lower_bound, high=upper_bound, size=(stop - start, d))
    return torch.from_numpy(out).reshape(n, samples, *shape)


def quantus_off_classes(y: torch.Tensor, num_classes: int, seed: int = 42, batch_size: int = 64) -> torch.Tensor:
    """Random Logit's off-classes as Quantus 0.6 draws them: ``np.random.seed(seed)`` again for every batch."""
    labels = y.detach().cpu().numpy()
    index = np.empty(len(labels), dtype=np.int64)
    for start in range(0, len(labels), batch_size):
        np.random.seed(seed)
        index[start : start + batch_size] = np.random.randint(
            0, num_classes - 1, len(labels[start : start + batch_size])
        )
    index_t = torch.from_numpy(index).to(y.device)
    return index_t + (index_t >= y).long()
