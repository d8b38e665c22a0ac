"""Localisation metrics against ground-truth masks: Relevance Rank Accuracy and Relevance Mass Accuracy.

Batched versions of Quantus' ``RelevanceRankAccuracy`` and ``RelevanceMassAccuracy`` (Arras et al. 2022). Masks
come from :mod:`attrlab.canvas` (a digit's box or its pixels) or any boolean tensor of the maps' shape. An empty mask
scores NaN, as in Quantus.
"""

from __future__ import annotations

import torch

from .normalise import prepare_maps
from .sorting import descending_order


def _flat_masks(a: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The masks broadcast to the maps' shape and flattened per sample, as booleans."""
    masks = masks.to(device=a.device, dtype=torch.bool)
    if masks.dim() == a.dim() - 1 and a.dim() == 4:  # (N, H, W) masks for (N, C, H, W) maps
        masks = masks.unsqueeze(1)
    try:
        masks = masks.expand_as(a)
    except RuntimeError as err:
        raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit maps of shape {tuple(a.shape)}") from err
    return masks.reshape(a.shape[0], -1)


def relevance_rank_accuracy(
    a: torch.Tensor, masks: torch.Tensor, normalise: str = "second_moment", absolute: bool = True
) -> torch.Tensor:
    """The share of a map's K highest-ranked features that lie in the mask, K = the mask's size.

    Features of equal relevance are ranked by position (a stable sort); Quantus' numpy sort breaks such ties in an
    unspecified order, so the two can differ on maps with ties at the K-th rank (exact zeros, say).

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps (N, C, H, W) or (N, H, W).
    masks : torch.Tensor
        Ground-truth masks, broadcastable to ``a`` ((N, 1, H, W) or (N, H, W) for (N, C, H, W) maps); non-zero
        means inside.
    normalise : str
        Per-map normalisation: ``"second_moment"``, ``"max"`` or ``"none"`` (it does not change the ranking).
    absolute : bool
        Rank ``|a|`` (the seed's choice) instead of the signed values.

    Returns
    -------
    torch.Tensor
        (N,) accuracies in [0, 1]; NaN for an empty mask.
    """
    flat_masks = _flat_masks(a, masks)
    a = prepare_maps(a, normalise, absolute).reshape(a.shape[0], -1)
    size = flat_masks.sum(1)
    order = descending_order(a)
    in_mask = flat_masks.gather(1, order)
    rank = torch.arange(a.shape[1], device=a.device)
    hits = (in_mask & (rank[None, :] < size[:, None])).sum(1)
    score = hits.to(a.dtype) / size.to(a.dtype)
    return torch.where(size > 0, score, torch.full_like(score, float("nan")))


def relevance_mass_accuracy(
    a: torch.Tensor, masks: torch.Tensor, normalise: str = "second_moment", absolute: bool = True
) -> torch.Tensor:
    """The share of a map's total relevance that falls inside the mask, ``sum_mask a / sum a``.

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps (N, C, H, W) or (N, H, W).
    masks : torch.Tensor
        Ground-truth masks broadcastable to ``a``; non-zero means inside.
    normalise : str
        Per-map normalisation: ``"second_moment"``, ``"max"`` or ``"none"`` (a ratio, so it cancels).
    absolute : bool
        Use ``|a|`` (the seed's choice); signed maps can give shares outside [0, 1].

    Returns
    -------
    torch.Tensor
        (N,) shares; NaN for an empty mask.
    """
    flat_masks = _flat_masks(a, masks)
    a = prepare_maps(a, normalise, absolute).reshape(a.shape[0], -1)
    score = (a * flat_masks).sum(1) / a.sum(1)
    return torch.where(flat_masks.any(1), score, torch.full_like(score, float("nan")))
