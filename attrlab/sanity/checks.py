"""The two SSIM sanity checks of Sixt et al. (2020): random logit and cascading randomisation, with bootstrap CIs.

* Random logit: the map for the true class against the map for a class drawn uniformly from the other classes
  (seeded), both from ONE attribution call with (N, 2) targets.
* Cascading randomisation: the layers from the top down to a checkpoint re-initialised *cumulatively* with each
  layer's own default initialiser (``reset_parameters``), on a copy of the model; one attribution call for all images
  at each checkpoint, the map of the label class compared with the original model's.

Both score ``max(SSIM(a, b), SSIM(a, -b))`` on percentile-normalised maps (:mod:`attrlab.sanity.ssim`). Medians over
images get percentile bootstrap intervals (99 %, 10 000 resamples, seeded), vectorised in numpy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from .methods import SanityMethod, reduce_channels
from .ssim import DATA_RANGE, ssim_flipped


def _check_batch(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 4:
        raise ValueError(f"inputs must be an (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs))}")
    labels = torch.as_tensor(labels, device=inputs.device).long().reshape(-1)
    if labels.shape[0] != inputs.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {inputs.shape[0]} images")
    return labels


def _maps(method: SanityMethod, model: nn.Module, inputs: torch.Tensor, target) -> torch.Tensor:
    attribution = method.build(model).attribute(inputs, target=target).detach()
    if attribution.dim() == 5:  # (N, T, C, H, W): the targets become separate maps, target-major per image
        return reduce_channels(attribution.flatten(0, 1), method.reduce).view(
            *attribution.shape[:2], -1, attribution.shape[-1]
        )
    return reduce_channels(attribution, method.reduce)


def random_classes(labels: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """For each label a class drawn uniformly from the ``num_classes - 1`` others (seeded, on the labels' device)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    generator = torch.Generator().manual_seed(seed)
    draw = torch.randint(0, num_classes - 1, labels.shape, generator=generator).to(labels.device)
    return draw + (draw >= labels).long()


def random_logit(
    model: nn.Module,
    method: SanityMethod,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int = 10,
    seed: int = 0,
    data_range: float = DATA_RANGE,
) -> pd.DataFrame:
    """The random-logit check: SSIM of the label's map against a random other class's map, per image.

    Parameters
    ----------
    model : nn.Module
        The classifier (not changed).
    method : SanityMethod
        A row of :data:`attrlab.sanity.methods.SIXT_METHODS`.
    inputs, labels : torch.Tensor
        (N, C, H, W) images and their (N,) labels.
    num_classes : int
        The number of classes to draw the random class from.
    seed : int
        Seed of the random classes.
    data_range : float
        SSIM data range.

    Returns
    -------
    pandas.DataFrame
        One row per image: ``method``, ``image``, ``label``, ``random_class``, ``ssim``.
    """
    labels = _check_batch(inputs, labels)
    other = random_classes(labels, num_classes, seed)
    maps = _maps(method, model, inputs, torch.stack([labels, other], 1))
    scores = ssim_flipped(maps[:, 0], maps[:, 1], method.percentile, data_range=data_range)
    return pd.DataFrame(
        {
            "method": method.label,
            "image": np.arange(len(labels)),
            "label": labels.cpu().numpy(),
            "random_class": other.cpu().numpy(),
            "ssim": scores.cpu().numpy(),
        }
    )


def parametrised_layers(model: nn.Module) -> list[str]:
    """Names of the modules holding parameters of their own, in registration (= forward, for the seed models) order."""
    return [
        name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))
    ]


def cascade(
    model: nn.Module, checkpoints: list[str] | None = None, seed: int = 0
) -> Iterator[tuple[int, str, nn.Module]]:
    """Yield ``(depth, checkpoint, randomised)`` top-down: ONE deep copy of ``model`` (eval mode) in which every
    parametrised layer from ``checkpoint`` to the output has been re-initialised by its ``reset_parameters``.

    The copy is changed in place between yields (cumulative randomisation); the re-initialisation draws from the
    global generator inside ``torch.random.fork_rng`` seeded with ``seed``, so the caller's random state is kept and
    the same seed gives the same weights.
    """
    layers = parametrised_layers(model)
    if not layers:
        raise ValueError("the model has no parametrised layers to randomise")
    if checkpoints is None:
        checkpoints = list(layers)
    unknown = [name for name in checkpoints if name not in layers]
    if unknown:
        raise ValueError(f"checkpoints {unknown} are not parametrised layers; valid: {', '.join(layers)}")
    order = sorted(set(checkpoints), key=layers.index, reverse=True)  # top-down
    randomised = copy.deepcopy(model).eval()
    modules = dict(randomised.named_modules())
    reset_from = len(layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for depth, checkpoint in enumerate(order, start=1):
            start = layers.index(checkpoint)
            for name in reversed(layers[start:reset_from]):
                modules[name].reset_parameters()
            reset_from = start
            yield depth, checkpoint, randomised


@dataclass
class CascadeResult:
    """What cascading randomisation produced."""

    scores: pd.DataFrame  # method, checkpoint, depth, image, ssim
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # "original" and each checkpoint -> (K, H, W) maps


def cascading_randomisation(
    model: nn.Module,
    method: SanityMethod,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    checkpoints: list[str] | None = None,
    seed: int = 0,
    keep: int = 0,
    data_range: float = DATA_RANGE,
) -> CascadeResult:
    """Cascading randomisation from the top: at each checkpoint every parametrised layer from it to the output is
    re-initialised (cumulatively, on a copy), and the label's map is compared with the original one.

    Parameters
    ----------
    model : nn.Module
        The trained classifier (not changed: a deep copy is randomised).
    method : SanityMethod
        A row of :data:`attrlab.sanity.methods.SIXT_METHODS`.
    inputs, labels : torch.Tensor
        (N, C, H, W) images and their (N,) labels (the explained class).
    checkpoints : list of str, optional
        Parametrised layers at which to compare, any order (default: every parametrised layer).
    seed : int
        Seed of the re-initialisation (the same seed re-draws the same weights).
    keep : int
        Keep the maps of the first ``keep`` images at every checkpoint (for figures).
    data_range : float
        SSIM data range.

    Returns
    -------
    CascadeResult
        Scores (one row per checkpoint and image; ``depth`` 1 is the top layer) and the kept maps.
    """
    labels = _check_batch(inputs, labels)
    original = _maps(method, model, inputs, labels)
    maps = {"original": original[:keep].cpu()} if keep else {}
    frames = []
    for depth, checkpoint, randomised in cascade(model, checkpoints, seed):
        current = _maps(method, randomised, inputs, labels)
        scores = ssim_flipped(original, current, method.percentile, data_range=data_range)
        frames.append(
            pd.DataFrame(
                {
                    "method": method.label,
                    "checkpoint": checkpoint,
                    "depth": depth,
                    "image": np.arange(len(labels)),
                    "ssim": scores.cpu().numpy(),
                }
            )
        )
        if keep:
            maps[checkpoint] = current[:keep].cpu()
    return CascadeResult(pd.concat(frames, ignore_index=True), maps)


def bootstrap_median(
    values, confidence: float = 0.99, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """The median of ``values`` (NaNs dropped) with a percentile bootstrap interval, vectorised.

    Parameters
    ----------
    values : array-like
        One value per image.
    confidence : float
        Interval coverage (0.99: the 0.5th and 99.5th percentiles of the resampled medians).
    resamples : int
        Bootstrap resamples.
    seed : int
        Seed of numpy's generator.

    Returns
    -------
    tuple of float
        (median, low, high); NaNs when no value is left.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, data.size, (resamples, data.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(np.median(data)), float(low), float(high)


def median_table(
    frame: pd.DataFrame,
    by: list[str],
    value: str = "ssim",
    confidence: float = 0.99,
    resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group of ``by``: the median of ``value`` with its bootstrap interval, the count and the NaN count."""
    missing = [column for column in [*by, value] if column not in frame.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the frame; it has {list(frame.columns)}")
    rows = []
    for key, group in frame.groupby(by, sort=False):
        median, low, high = bootstrap_median(group[value].to_numpy(), confidence, resamples, seed)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, median, low, high, int(group[value].notna().sum()), int(group[value].isna().sum())))
    return pd.DataFrame(rows, columns=[*by, "median", "low", "high", "n", "nan"])


__all__ = [
    "CascadeResult",
    "bootstrap_median",
    "cascade",
    "cascading_randomisation",
    "median_table",
    "parametrised_layers",
    "random_classes",
    "random_logit",
]
