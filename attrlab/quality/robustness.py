"""Robustness metrics: Average and Max Sensitivity (Yeh et al. 2019), batched over images and noise draws.

A map is recomputed for ``nr_samples`` noisy copies of each image and compared with the original map,
``||a - a'||_F / ||a||_F`` per copy (both maps normalised and, if asked, made absolute first), then averaged
(Average Sensitivity) or maximised (Max Sensitivity) over the copies. Lower is more robust. All noisy copies of a
batch are explained in a few large calls of ``explain`` instead of one call per copy.

The noise is Quantus' ``batch_uniform_noise``: uniform in (-lower_bound, lower_bound) on every feature, or in
(lower_bound, upper_bound) when ``upper_bound`` is given. Pahde et al. (2023) passed ``perturb_std=0.2``, which
Quantus' uniform noise ignores; what their runs used is the constructor's ``lower_bound=0.2`` (SEED-NOTES 2.2), so
that is the default here.
"""

from __future__ import annotations

import torch
from torch import nn

from .draws import uniform_noise
from .normalise import check_normalisation, prepare_maps
from .scoring import as_explain, resolve_batch_size

REDUCTIONS = ("mean", "max")


@torch.no_grad()
def _predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    explain,
    reduce: str = "mean",
    nr_samples: int = 10,
    lower_bound: float = 0.2,
    upper_bound: float | None = None,
    noise: torch.Tensor | None = None,
    seed: int = 0,
    nan_on_prediction_change: bool = False,
    normalise: str = "second_moment",
    absolute: bool = False,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Average (``reduce="mean"``) or Max (``reduce="max"``) Sensitivity of each image's map.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (used for the prediction-change check only; ``explain`` holds its own reference).
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes (the noisy copies are explained for the same class).
    a : torch.Tensor
        (N, ...) the maps of ``x``, as ``explain`` returns them.
    explain : callable or attrlab method
        ``explain(inputs, target) -> maps`` (an attrlab method's ``attribute`` is used when it has one).
    reduce : str
        ``"mean"`` (Average Sensitivity) or ``"max"`` (Max Sensitivity).
    nr_samples : int
        Noisy copies per image (Pahde et al. 2023: 10).
    lower_bound : float
        Half-width of the noise interval, or its lower end when ``upper_bound`` is given (Quantus: 0.2).
    upper_bound : float, optional
        Upper end of the noise interval.
    noise : torch.Tensor, optional
        (N, nr_samples, C, H, W) noise to add instead of drawing it (e.g.
        :func:`attrlab.quality.draws.quantus_uniform_noise`, Quantus' draws).
    seed : int
        Seed of the noise drawn when ``noise`` is None (device-independent).
    nan_on_prediction_change : bool
        Quantus' ``return_nan_when_prediction_changes``: a copy whose predicted class differs from the image's makes
        the image's score NaN.
    normalise : str
        Per-map normalisation of both maps: ``"second_moment"`` (Pahde et al.), ``"max"`` or ``"none"``
        (Quantus' default for this metric is none).
    absolute : bool
        Compare ``|a|`` and ``|a'|``.
    batch_size : int, optional
        Images per ``explain`` call; None chooses by device.

    Returns
    -------
    torch.Tensor
        (N,) sensitivities, lower is more robust.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; valid choices: {', '.join(REDUCTIONS)}")
    check_normalisation(normalise)
    batch_size = resolve_batch_size(batch_size, x.device)
    if not isinstance(nr_samples, int) or nr_samples <= 0:
        raise ValueError(f"nr_samples must be a positive integer, got {nr_samples!r}")
    if x.dim() != 4 or a.shape[0] != x.shape[0] or y.shape != (x.shape[0],):
        raise ValueError(
            f"need images (N, C, H, W), N maps and N labels; got {tuple(x.shape)}, {tuple(a.shape)}, {tuple(y.shape)}"
        )
    explain = as_explain(explain)
    n = x.shape[0]
    if noise is None:
        noise = uniform_noise(n, nr_samples, tuple(x.shape[1:]), lower_bound, upper_bound, seed)
    elif tuple(noise.shape) != (n, nr_samples, *x.shape[1:]):
        raise ValueError(f"noise must have shape {(n, nr_samples, *x.shape[1:])}, got {tuple(noise.shape)}")
    noisy = (x[:, None].double() + noise.to(x.device)).to(x.dtype).reshape(n * nr_samples, *x.shape[1:])
    targets = y.repeat_interleave(nr_samples)
    maps = torch.cat(
        [
            explain(noisy[i : i + batch_size], targets[i : i + batch_size]).detach()
            for i in range(0, len(noisy), batch_size)
        ]
    )
    reference = prepare_maps(a, normalise, absolute).reshape(n, 1, -1).double()
    perturbed = prepare_maps(maps, normalise, absolute).reshape(n, nr_samples, -1).double()
    ratios = (reference - perturbed).norm(dim=2) / reference.norm(dim=2)
    if nan_on_prediction_change:
        changed = (
            _predictions(model, noisy, batch_size).reshape(n, nr_samples) != _predictions(model, x, batch_size)[:, None]
        )
        ratios = ratios.masked_fill(changed, float("nan"))
        # Quantus then takes the plain mean (max), so one changed copy makes the score NaN
        scores = ratios.mean(1) if reduce == "mean" else ratios.max(1).values
        scores = scores.masked_fill(changed.any(1), float("nan"))
    else:
        scores = ratios.nanmean(1) if reduce == "mean" else ratios.nan_to_num(float("-inf")).max(1).values
    return scores.to(x.dtype)


def avg_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, explain, **settings):
    """Average Sensitivity: :func:`sensitivity` with ``reduce="mean"`` (every other parameter as documented there).

    Parameters
    ----------
    model, x, y, a, explain
        As in :func:`sensitivity`.
    **settings
        Any other parameter of :func:`sensitivity` except ``reduce``.

    Returns
    -------
    torch.Tensor
        (N,) mean relative map change over the noisy copies.
    """
    return sensitivity(model, x, y, a, explain, reduce="mean", **settings)


def max_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, explain, **settings):
    """Max Sensitivity: :func:`sensitivity` with ``reduce="max"`` (every other parameter as documented there).

    Parameters
    ----------
    model, x, y, a, explain
        As in :func:`sensitivity`.
    **settings
        Any other parameter of :func:`sensitivity` except ``reduce``.

    Returns
    -------
    torch.Tensor
        (N,) largest relative map change over the noisy copies.
    """
    return sensitivity(model, x, y, a, explain, reduce="max", **settings)
