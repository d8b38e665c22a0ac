"""Faithfulness metrics: Region Perturbation with AOPC, Pixel Flipping and Faithfulness Correlation, batched.

Each perturbs the images where the map says they matter and measures how the model's target logit moves. Quantus
(0.6) loops over steps, runs and images in numpy; here a step perturbs the whole batch with one tensor operation and
the perturbed copies of all steps go through the model in large forward passes (:mod:`attrlab.quality.scoring`), on a
frozen eval copy of the model that is channels-last on a CPU (:func:`attrlab.grids.evaluate.evaluation_copy`).

Region Perturbation (Samek et al. 2017) has two region layouts:

* ``regions="windows"`` (default): the Quantus semantics that Pahde et al. (2023) ran (Quantus up to 0.3/0.4): every
  stride-1 window of ``patch_size`` x ``patch_size`` whose top-left pixel lies in the image is scored by its summed
  relevance (the map zero-padded by ``patch_size - 1`` on the right and bottom), and in that order the windows that do
  not overlap an earlier kept one are kept, greedily, until ``regions_evaluation`` are kept. The image is
  edge-padded by ``patch_size - 1`` again before every step (windows may reach into the padding).
  Greedy selection runs as ``regions_evaluation`` batched argmax steps over the still-free windows, which keeps the
  same windows as Quantus' scan of the sorted list. Samples with fewer free windows get NaN after their last region.
* ``regions="grid"``: Quantus 0.6's layout, the non-overlapping ``patch_size`` blocks of the image zero-padded
  (centred) to a multiple of ``patch_size``; the image is edge-padded the same way once.

Perturbation is cumulative; the curve holds ``c_k = f_y(x) - f_y(x_k)`` for k = 1..L (no k = 0 entry), as in Quantus,
with f the softmax probability by default (Quantus' default for Region Perturbation and Pixel Flipping).
:func:`aopc` turns curves into the area over the perturbation curve: Samek et al.'s ``sum_k c_k / (L + 1)`` (the
k = 0 term is zero), or as a named option the quantity Pahde et al.'s code computed, ``c_1 - mean_k c_k``.
Ties in relevance are ordered by position here (stable sorts); Quantus' numpy sorts leave their order unspecified.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..grids.evaluate import evaluation_copy
from .draws import random_subsets
from .normalise import check_normalisation, prepare_maps
from .perturb import baseline_value, check_baseline
from .scoring import check_batch_size, score_steps, target_scores
from .sorting import descending_order

ORDERS = ("morf", "lerf")
REGION_LAYOUTS = ("windows", "grid")
AOPC_VARIANTS = ("samek", "seed_code")


def _check_inputs(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must hold one class per image, shape ({x.shape[0]},), got {tuple(y.shape)}")
    if a.shape[0] != x.shape[0] or a.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"maps of shape {tuple(a.shape)} do not fit images of shape {tuple(x.shape)}")


def _as_images(a: torch.Tensor) -> torch.Tensor:
    return a if a.dim() == 4 else a.unsqueeze(1)


def _greedy_windows(keys: torch.Tensor, patch_size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners (N, count) (flat indices into H x W) of greedily kept non-overlapping windows, and validity.

    ``keys`` (N, H, W) ranks the windows (highest first). A window is kept when it overlaps no kept window; the best
    still-free window is kept next, which is the scan of the sorted list that Quantus does.
    """
    n, h, w = keys.shape
    flat = keys.reshape(n, h * w)
    rows = torch.arange(h, device=keys.device).repeat_interleave(w)
    cols = torch.arange(w, device=keys.device).repeat(h)
    free = torch.ones_like(flat, dtype=torch.bool)
    chosen, valid = [], []
    for _ in range(count):
        best = flat.masked_fill(~free, float("-inf")).argmax(1)
        valid.append(free.gather(1, best[:, None])[:, 0])
        chosen.append(best)
        r, c = rows[best], cols[best]
        free &= ~(((rows[None] - r[:, None]).abs() < patch_size) & ((cols[None] - c[:, None]).abs() < patch_size))
    return torch.stack(chosen, 1), torch.stack(valid, 1)


def _square_masks(top: torch.Tensor, left: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(N, 1, height, width) masks of the squares with top-left corners (top, left) (N,)."""
    r = torch.arange(height, device=top.device)
    c = torch.arange(width, device=top.device)
    in_rows = (r[None] >= top[:, None]) & (r[None] < top[:, None] + size)
    in_cols = (c[None] >= left[:, None]) & (c[None] < left[:, None] + size)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def region_perturbation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    patch_size: int = 4,
    regions_evaluation: int = 50,
    order: str = "morf",
    baseline: str | float = "blur",
    regions: str = "windows",
    blur_kernel_size: int = 15,
    normalise: str = "second_moment",
    absolute: bool = False,
    softmax: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Region Perturbation curves: the drop of the target logit as the most (or least) relevant regions are replaced.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (evaluated in eval mode, without gradients).
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes.
    a : torch.Tensor
        Maps (N, C', H, W) or (N, H, W); channels are summed when regions are scored.
    patch_size : int
        Side of the square regions (Pahde et al. 2023: 14 on 224-pixel images).
    regions_evaluation : int
        Number of regions perturbed, L (Pahde et al.: 50).
    order : str
        ``"morf"`` (most relevant first) or ``"lerf"`` (least relevant first).
    baseline : str or float
        ``"blur"`` (Quantus' box filter, Pahde et al.'s choice), ``"black"`` (the image minimum), ``"white"``,
        ``"mean"`` (of the current image) or a number.
    regions : str
        ``"windows"`` (greedy stride-1 windows, the semantics Pahde et al. ran) or ``"grid"`` (Quantus 0.6 blocks).
    blur_kernel_size : int
        Side of the box filter of the blur baseline (Quantus: 15).
    normalise : str
        Per-map normalisation: ``"second_moment"``, ``"max"`` or ``"none"`` (does not change the order of regions).
    absolute : bool
        Rank regions by ``|a|`` instead of the signed map (Quantus' default: signed).
    softmax : bool
        Measure softmax probabilities (Quantus' default for this metric) instead of logits.
    batch_size : int, optional
        Images per forward pass (the perturbed copies of several steps share a pass); None chooses by device.

    Returns
    -------
    torch.Tensor
        (N, L) curves ``f_y(x) - f_y(x_k)``; NaN after a sample's last region when fewer than L windows fit.
    """
    _check_inputs(x, y, a)
    check_normalisation(normalise)
    check_baseline(baseline)
    check_batch_size(batch_size)
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; valid choices: {', '.join(ORDERS)}")
    if regions not in REGION_LAYOUTS:
        raise ValueError(f"unknown region layout {regions!r}; valid choices: {', '.join(REGION_LAYOUTS)}")
    n, _, h, w = x.shape
    if not isinstance(patch_size, int) or not 0 < patch_size <= min(h, w):
        raise ValueError(f"patch_size must be an integer between 1 and {min(h, w)}, got {patch_size!r}")
    if not isinstance(regions_evaluation, int) or regions_evaluation <= 0:
        raise ValueError(f"regions_evaluation must be a positive integer, got {regions_evaluation!r}")
    relevance = _as_images(prepare_maps(a, normalise, absolute)).sum(1, keepdim=True).double()
    sign = 1.0 if order == "morf" else -1.0
    p = patch_size
    if regions == "windows":
        pad = p - 1
        sums = F.avg_pool2d(F.pad(relevance, (0, pad, 0, pad)), p, stride=1) * (p * p)
        corners, valid = _greedy_windows(sign * sums[:, 0], p, regions_evaluation)
        tops, lefts = corners // w + pad, corners % w + pad  # in the coordinates of the padded image
        padding = (pad, pad, pad, pad)
    else:
        (top, bottom), (left, right) = _centred_padding(h, p), _centred_padding(w, p)
        padded = F.pad(relevance, (left, right, top, bottom))
        blocks_h, blocks_w = padded.shape[-2] // p, padded.shape[-1] // p
        sums = padded.reshape(n, blocks_h, p, blocks_w, p).sum((2, 4)).reshape(n, -1)
        count = min(regions_evaluation, blocks_h * blocks_w)
        blocks = descending_order(sign * sums)[:, :count].to(x.device)
        tops, lefts = blocks // blocks_w * p, blocks % blocks_w * p
        valid = torch.ones_like(blocks, dtype=torch.bool)
        padding = (left, right, top, bottom)

    def steps() -> Iterator[torch.Tensor]:
        current = F.pad(x, padding, mode="replicate")
        for k in range(tops.shape[1]):
            if regions == "windows" and k:  # re-padded from the current image before every step, as in Quantus 0.3
                current = F.pad(
                    current[..., padding[2] : padding[2] + h, padding[0] : padding[0] + w], padding, mode="replicate"
                )
            mask = _square_masks(tops[:, k], lefts[:, k], p, current.shape[-2], current.shape[-1])
            mask &= valid[:, k, None, None, None]
            current = torch.where(mask, baseline_value(current, baseline, blur_kernel_size), current)
            yield current[..., padding[2] : padding[2] + h, padding[0] : padding[0] + w]

    model = evaluation_copy(model)  # frozen, eval mode, channels-last on a CPU (about 1.6x faster there)
    original = target_scores(model, x, y, batch_size, softmax)
    curves = original[:, None] - score_steps(model, steps(), y, batch_size, softmax)
    return curves.masked_fill(~valid, float("nan"))


def _centred_padding(size: int, patch_size: int) -> tuple[int, int]:
    """Quantus' ``get_padding_size``: the padding that makes ``size`` a multiple of ``patch_size``, split centred."""
    total = (patch_size - size % patch_size) % patch_size
    return total // 2, total - total // 2


def aopc(curves: torch.Tensor, variant: str = "samek") -> torch.Tensor:
    """The area over the perturbation curve of each sample, from :func:`region_perturbation` curves.

    Parameters
    ----------
    curves : torch.Tensor
        (N, L) drops ``c_k = f_y(x) - f_y(x_k)``, k = 1..L; NaN entries (regions that did not fit) are left out.
    variant : str
        ``"samek"``: Samek et al. (2017), ``1/(L+1) sum_{k=0}^{L} (f(x_0) - f(x_k)) = sum_k c_k / (L + 1)``, the
        formula of Pahde et al. (2023)'s text. ``"seed_code"``: what Pahde et al.'s code computed per sample,
        ``c_1 - mean_k c_k`` (the drops relative to the first step; the code then averaged per class, took the
        absolute value and divided the sum over classes by the number of classes).

    Returns
    -------
    torch.Tensor
        (N,) AOPC values.
    """
    if variant not in AOPC_VARIANTS:
        raise ValueError(f"unknown AOPC variant {variant!r}; valid choices: {', '.join(AOPC_VARIANTS)}")
    present = ~torch.isnan(curves)
    total = torch.where(present, curves, torch.zeros_like(curves)).sum(1)
    length = present.sum(1).to(curves.dtype)
    if variant == "samek":
        return total / (length + 1)
    return curves[:, 0] - total / length


def pixel_flipping(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    features_in_step: int = 1,
    baseline: str | float = "black",
    normalise: str = "second_moment",
    absolute: bool = False,
    softmax: bool = True,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Pixel Flipping curves (Bach et al. 2015): the target logit as features are replaced, most relevant first.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes.
    a : torch.Tensor
        Maps broadcastable to ``x`` ((N, 1, H, W) maps repeat over the channels, as in Quantus).
    features_in_step : int
        Features replaced per step (Pahde et al. 2023: 448 of 224 x 224); the last step may replace fewer.
    baseline : str or float
        ``"black"`` (the image minimum, Quantus' default), ``"white"``, ``"mean"`` (of the current image) or a
        number (Pahde et al.: 0).
    normalise : str
        Per-map normalisation: ``"second_moment"``, ``"max"`` or ``"none"`` (does not change the order).
    absolute : bool
        Order by ``|a|`` (Quantus' default: signed).
    softmax : bool
        Record softmax probabilities (Quantus' default for this metric) instead of logits.
    batch_size : int, optional
        Images per forward pass; None chooses by device.

    Returns
    -------
    torch.Tensor
        (N, ceil(D / features_in_step)) the target scores after each step (Quantus' curve; its mean or
        :func:`curve_auc` summarise it).
    """
    _check_inputs(x, y, a)
    check_normalisation(normalise)
    check_baseline(baseline, ("black", "white", "mean"))
    check_batch_size(batch_size)
    n = x.shape[0]
    d = x[0].numel()
    if not isinstance(features_in_step, int) or not 0 < features_in_step <= d:
        raise ValueError(f"features_in_step must be an integer between 1 and {d}, got {features_in_step!r}")
    maps = prepare_maps(a, normalise, absolute)
    maps = _as_images(maps).expand_as(x).reshape(n, d)
    order = descending_order(maps).to(x.device)
    count = math.ceil(d / features_in_step)
    model = evaluation_copy(model)  # frozen, eval mode, channels-last on a CPU (about 1.6x faster there)

    def steps() -> Iterator[torch.Tensor]:
        current = x.reshape(n, d)
        for k in range(count):
            index = order[:, k * features_in_step : (k + 1) * features_in_step]
            value = baseline_value(current, baseline).expand(n, index.shape[1])
            current = current.scatter(1, index, value)
            yield current.reshape(x.shape)

    return score_steps(model, steps(), y, batch_size, softmax)


def curve_auc(curves: torch.Tensor) -> torch.Tensor:
    """The area under each curve (N, S) by the trapezoidal rule with unit spacing (Quantus' ``calculate_auc``)."""
    return torch.trapezoid(curves, dim=1)


def faithfulness_correlation(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    nr_runs: int = 100,
    subset_size: int = 224,
    baseline: str | float = "black",
    subsets: torch.Tensor | None = None,
    seed: int = 0,
    normalise: str = "second_moment",
    absolute: bool = False,
    softmax: bool = False,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Faithfulness Correlation (Bhatt et al. 2020): Pearson correlation, over random feature subsets, of the
    subset's summed relevance and the logit drop when the subset is replaced.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes.
    a : torch.Tensor
        Maps broadcastable to ``x``.
    nr_runs : int
        Random subsets per image (Pahde et al. 2023: 100).
    subset_size : int
        Features per subset (Pahde et al.: 1 % of the features, 501 of 224 x 224).
    baseline : str or float
        Replacement: ``"black"`` (the image minimum), ``"white"``, ``"mean"`` (of the image) or a number
        (Pahde et al.: the mean pixel, 0 in normalised space).
    subsets : torch.Tensor, optional
        (N, nr_runs, subset_size) feature indices to use instead of drawing them (e.g.
        :func:`attrlab.quality.draws.quantus_subsets`, Quantus' own draws).
    seed : int
        Seed of the subsets drawn when ``subsets`` is None (device-independent).
    normalise : str
        Per-map normalisation: ``"second_moment"``, ``"max"`` or ``"none"``.
    absolute : bool
        Sum ``|a|`` (Quantus' default and Pahde et al.: signed).
    softmax : bool
        Measure softmax probabilities instead of logits.
    batch_size : int, optional
        Images per forward pass; None chooses by device.

    Returns
    -------
    torch.Tensor
        (N,) correlations in [-1, 1] (NaN when a side is constant).
    """
    _check_inputs(x, y, a)
    check_normalisation(normalise)
    check_baseline(baseline, ("black", "white", "mean"))
    check_batch_size(batch_size)
    n = x.shape[0]
    d = x[0].numel()
    if subsets is None:
        if not isinstance(nr_runs, int) or nr_runs < 2:
            raise ValueError(f"nr_runs must be an integer >= 2, got {nr_runs!r}")
        subsets = random_subsets(n, nr_runs, d, subset_size, seed)
    elif subsets.dim() != 3 or subsets.shape[:2] != (n, nr_runs) or subsets.shape[2] != subset_size:
        raise ValueError(f"subsets must have shape ({n}, {nr_runs}, {subset_size}), got {tuple(subsets.shape)}")
    subsets = subsets.to(x.device)
    maps = _as_images(prepare_maps(a, normalise, absolute)).expand_as(x).reshape(n, d)
    flat = x.reshape(n, d)
    value = baseline_value(flat, baseline).expand(n, subset_size)

    def steps() -> Iterator[torch.Tensor]:
        for run in range(nr_runs):
            yield flat.scatter(1, subsets[:, run], value).reshape(x.shape)

    model = evaluation_copy(model)  # frozen, eval mode, channels-last on a CPU (about 1.6x faster there)
    original = target_scores(model, x, y, batch_size, softmax)
    drops = (original[:, None] - score_steps(model, steps(), y, batch_size, softmax)).double()
    relevance = maps[:, None, :].expand(n, nr_runs, d).gather(2, subsets).sum(2).double()
    return pearson(relevance, drops).to(x.dtype)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of (N, R) tensors (NaN where a row is constant)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.square().sum(1) * b.square().sum(1)).sqrt()
