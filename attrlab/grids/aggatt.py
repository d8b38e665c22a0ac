"""AggAtt: attribution maps sorted by localisation score, binned by percentile range and averaged per bin.

Maps are sorted best first (descending score, ties broken by the larger positive mass in the scored cell), split into
the thesis' unequal percentile bins (0-2, 2-5, 5-50, 50-95, 95-98, 98-100 %: narrow bins show the best and worst
cases) and the positive part of the maps in each bin is averaged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: percentile ranges of the thesis, best localised first
BINS: tuple[tuple[float, float], ...] = ((0, 2), (2, 5), (5, 50), (50, 95), (95, 98), (98, 100))


def aggatt_order(scores: torch.Tensor, cell_mass: torch.Tensor) -> torch.Tensor:
    """Indices that sort maps by descending score, ties by descending positive mass in the cell."""
    by_mass = torch.argsort(cell_mass, descending=True, stable=True)
    return by_mass[torch.argsort(scores[by_mass], descending=True, stable=True)]


def bin_slices(count: int, bins: Sequence[tuple[float, float]] = BINS) -> list[slice]:
    """Positions of each percentile bin in a sorted list of ``count`` maps; every bin must hold at least one map."""
    slices = [slice(round(low * count / 100), round(high * count / 100)) for low, high in bins]
    empty = [bins[i] for i, s in enumerate(slices) if s.stop <= s.start]
    if empty:
        smallest = min(high - low for low, high in bins)
        raise ValueError(
            f"{count} maps leave the percentile bins {empty} empty; AggAtt needs at least {int(100 / smallest) + 1} maps"
        )
    return slices


def bin_maps(
    maps: torch.Tensor, scores: torch.Tensor, cell_mass: torch.Tensor, bins: Sequence[tuple[float, float]] = BINS
) -> torch.Tensor:
    """The AggAtt panels: the mean positive map of each percentile bin of (N, H, W) signed ``maps``.

    Parameters
    ----------
    maps : torch.Tensor
        (N, H, W) signed attribution maps of one method and layer.
    scores, cell_mass : torch.Tensor
        (N,) localisation scores and positive masses in the scored cell (the tie-breaker), from
        :func:`attrlab.grids.localisation.localisation`.
    bins : sequence of (float, float)
        Percentile ranges, best localised first.

    Returns
    -------
    torch.Tensor
        (len(bins), H, W) mean positive maps.
    """
    order = aggatt_order(scores, cell_mass)
    positive = maps.clamp(min=0)[order]
    return torch.stack([positive[s].mean(0) for s in bin_slices(len(order), bins)])


def bin_scores(
    scores: torch.Tensor, cell_mass: torch.Tensor, bins: Sequence[tuple[float, float]] = BINS
) -> torch.Tensor:
    """The mean localisation score of the maps in each bin (a label for the AggAtt panels)."""
    ordered = scores[aggatt_order(scores, cell_mass)]
    return torch.stack([ordered[s].mean() for s in bin_slices(len(ordered), bins)])
