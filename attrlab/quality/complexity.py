"""Complexity metrics of attribution maps: Sparseness (the Gini index of ``|a|``) and Complexity (its entropy).

Batched versions of Quantus' ``Sparseness`` (Chalasani et al. 2020) and ``Complexity`` (Bhatt et al. 2020), one
score per map, computed on the maps' device. Quantus' numerical guards are kept (``+ 1e-7`` before the Gini index,
``+ 1e-12`` inside the logarithm), so the scores agree to float tolerance.
"""

from __future__ import annotations

import torch

from .normalise import prepare_maps
from .sorting import sorted_rows


def sparseness(a: torch.Tensor, normalise: str = "second_moment", absolute: bool = True) -> torch.Tensor:
    """The Gini index of each map: 0 for a uniform map, towards 1 when the relevance sits on few features.

    ``sum_i (2 i - d - 1) a_(i) / (d sum_i a_(i))`` over the ``d`` features sorted in increasing order (i = 1..d).

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps (N, C, H, W) or (N, H, W); every feature of a map is counted.
    normalise : str
        Per-map normalisation before scoring: ``"second_moment"`` (Pahde et al. 2023), ``"max"`` or ``"none"``.
    absolute : bool
        Score ``|a|`` (Quantus' default and the seed's choice); the Gini index assumes non-negative values.

    Returns
    -------
    torch.Tensor
        (N,) Gini indices, higher is sparser.
    """
    a = prepare_maps(a, normalise, absolute).reshape(a.shape[0], -1) + 1e-7
    d = a.shape[1]
    ordered = sorted_rows(a)
    rank = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
    return ((2 * rank - d - 1) * ordered).sum(1) / (d * ordered.sum(1))


def complexity(a: torch.Tensor, normalise: str = "second_moment", absolute: bool = True) -> torch.Tensor:
    """The Shannon entropy of each map's share of relevance per feature, ``-sum_i p_i log p_i`` with ``p = |a| / sum|a|``.

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps (N, C, H, W) or (N, H, W).
    normalise : str
        Per-map normalisation before scoring: ``"second_moment"``, ``"max"`` or ``"none"``.
    absolute : bool
        Score ``|a|`` (Quantus' default).

    Returns
    -------
    torch.Tensor
        (N,) entropies in nats, lower is less complex (at most ``log d``).
    """
    a = prepare_maps(a, normalise, absolute).reshape(a.shape[0], -1)
    share = a / a.abs().sum(1, keepdim=True)
    return -(share * torch.log(share + 1e-12)).sum(1)
