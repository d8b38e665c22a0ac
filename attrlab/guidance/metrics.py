"""Localisation of maps in boxes for model guidance: the Energy Pointing Game (EPG) and IoU, batched.

* **EPG** (Wang et al. 2020; thesis eq. 7.2): the share of a map's positive attribution that lies in the mask,
  ``Σ M A⁺ / Σ A⁺``; Quantus' ``AttributionLocalisation`` with ``positive_attributions=True`` and no abs or
  normalisation computes the same (tested).
* **IoU**: the map's positive part normalised by its maximum, binarised at a threshold, against the mask; the
  threshold is chosen on held-out maps (:func:`select_iou_threshold`), as the thesis does after Fong and Vedaldi.

Maps come from any method: (N, h, w) or (N, 1, h, w), at the input's or a layer's resolution; a map coarser than its
mask is resized bilinearly to the mask's size (:func:`fit_maps`), as layer maps are compared with input boxes. A map
with no positive attribution or an empty mask scores NaN. These live in the guidance package rather than
:mod:`attrlab.quality.localisation` because they serve the guidance study's selection and losses; Quantus has EPG
but not this IoU, and neither runs batched on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the thresholds :func:`select_iou_threshold` tries by default
IOU_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def fit_maps(maps: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """(N, h, w) or (N, 1, h, w) maps as (N, H, W): bilinearly resized (``align_corners=False``) when (h, w) differs.

    Parameters
    ----------
    maps : torch.Tensor
        The maps (differentiable: the resizing keeps the graph).
    size : tuple of int
        (H, W), the masks' size.

    Returns
    -------
    torch.Tensor
        (N, H, W).
    """
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w) or (N, 1, h, w), got shape {tuple(maps.shape)}")
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _masks(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(
            f"masks must be (N, H, W) with N = {maps.shape[0]} (the maps' batch), got shape {tuple(masks.shape)}"
        )
    return fit_maps(maps, masks.shape[-2:]), masks.to(device=maps.device, dtype=torch.bool)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """EPG: the share of each map's positive attribution inside its mask (thesis eq. 7.2).

    Parameters
    ----------
    maps : torch.Tensor
        (N, h, w) or (N, 1, h, w) attribution maps of any method.
    masks : torch.Tensor
        (N, H, W) boolean masks (the union of the class's boxes).

    Returns
    -------
    torch.Tensor
        (N,) scores in [0, 1]; NaN for an empty mask or a map without positive attribution.
    """
    maps, masks = _masks(maps, masks)
    positive = maps.clamp(min=0).flatten(1)
    total = positive.sum(1)
    inside = (positive * masks.flatten(1)).sum(1)
    score = inside / total
    return torch.where((total > 0) & masks.flatten(1).any(1), score, torch.full_like(score, float("nan")))


def iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> torch.Tensor:
    """IoU of each map's positive part, normalised by its maximum and binarised at ``threshold``, with its mask.

    Parameters
    ----------
    maps : torch.Tensor
        (N, h, w) or (N, 1, h, w) attribution maps.
    masks : torch.Tensor
        (N, H, W) boolean masks.
    threshold : float
        In [0, 1): a pixel is "on" where ``A⁺ / max A⁺ > threshold``.

    Returns
    -------
    torch.Tensor
        (N,) IoU in [0, 1]; NaN for an empty mask or a map without positive attribution.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}")
    maps, masks = _masks(maps, masks)
    positive = maps.clamp(min=0).flatten(1)
    peak = positive.amax(1, keepdim=True)
    on = positive > threshold * peak
    flat = masks.flatten(1)
    intersection = (on & flat).sum(1).to(maps.dtype)
    union = (on | flat).sum(1).to(maps.dtype)
    score = intersection / union
    valid = (peak[:, 0] > 0) & flat.any(1)
    return torch.where(valid, score, torch.full_like(score, float("nan")))


def select_iou_threshold(
    maps: torch.Tensor, masks: torch.Tensor, thresholds: tuple[float, ...] = IOU_THRESHOLDS
) -> float:
    """The threshold of ``thresholds`` with the highest mean IoU on held-out ``maps`` (ties: the smallest).

    Parameters
    ----------
    maps : torch.Tensor
        (N, h, w) held-out maps.
    masks : torch.Tensor
        (N, H, W) their masks.
    thresholds : tuple of float
        The candidates, each in [0, 1).

    Returns
    -------
    float
        The chosen threshold.
    """
    if not thresholds:
        raise ValueError("thresholds must name at least one candidate")
    scores = torch.stack([iou(maps, masks, t).nanmean() for t in thresholds])
    return float(thresholds[int(torch.nan_to_num(scores, nan=-1.0).argmax())])


__all__ = ["IOU_THRESHOLDS", "energy_pointing_game", "fit_maps", "iou", "select_iou_threshold"]
