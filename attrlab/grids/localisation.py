"""The grid localisation score: the share of an attribution map's positive mass that falls into the scored cell.

``L_i = sum_{p in cell i} A+(p) / sum_{p in grid} A+(p)`` (thesis eq. 4.1), 0 when the positive total is <= 1e-7.
Attributions are first summed over channels; maps of a layer (smaller than the input) are bilinearly upsampled to the
input size (``align_corners=False``, the common Grad-CAM practice) before the positive part is taken, so a perfect map
scores 1 and a uniform one 1/n^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: positive totals at or below this count as an empty map (score 0)
EMPTY_TOTAL = 1e-7


def attribution_map(attribution: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, h, w) attribution -> (N, H, W) signed map: channels summed, bilinearly upsampled to ``size``."""
    if attribution.dim() != 4:
        raise ValueError(f"expected an (N, C, h, w) attribution, got shape {tuple(attribution.shape)}")
    summed = attribution.sum(1, keepdim=True)
    if tuple(summed.shape[-2:]) != tuple(size):
        summed = F.interpolate(summed, size=tuple(size), mode="bilinear", align_corners=False)
    return summed[:, 0]


def positive_mass(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive mass of (N, H, W) ``maps`` inside each of the (cells, H, W) ``masks``: (N, cells), and in total: (N,).

    The masks must partition the map (the cells of a grid): the total is the sum over cells, so a map whose positive
    mass lies in one cell scores exactly 1.
    """
    if maps.shape[-2:] != masks.shape[-2:]:
        raise ValueError(f"maps of size {tuple(maps.shape[-2:])} do not match masks of size {tuple(masks.shape[-2:])}")
    positive = maps.clamp(min=0)
    per_cell = torch.einsum("nhw,chw->nc", positive, masks.to(positive.dtype))
    return per_cell, per_cell.sum(1)


def localisation(
    maps: torch.Tensor, masks: torch.Tensor, cells: torch.Tensor | int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The localisation score of each map for its cell, and the positive mass in that cell (the AggAtt tie-breaker).

    ``maps`` (N, H, W) signed attribution maps at input size, ``masks`` (cells, H, W) boolean, ``cells`` the scored
    cell of each map ((N,) long tensor or one int for all). Returns two (N,) tensors.
    """
    per_cell, total = positive_mass(maps, masks)
    cells = torch.as_tensor(cells, device=maps.device).long().expand(maps.shape[0])
    inside = per_cell.gather(1, cells[:, None])[:, 0]
    score = torch.where(total > EMPTY_TOTAL, inside / total.clamp(min=EMPTY_TOTAL), torch.zeros_like(total))
    return score, inside
