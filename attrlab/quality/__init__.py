"""Explanation quality metrics (Pahde et al. 2023), batched in torch on the inputs' device and equal to Quantus.

Families as in Quantus: complexity (:func:`sparseness`, :func:`complexity`), localisation
(:func:`relevance_rank_accuracy`, :func:`relevance_mass_accuracy`). Every metric takes its maps as they come from a
method and normalises each map by the square root of its second moment first (``normalise="second_moment"``, the
seed's choice; ``"max"`` or ``"none"`` switch it).
"""

from .complexity import complexity, sparseness
from .localisation import relevance_mass_accuracy, relevance_rank_accuracy
from .normalise import NORMALISATIONS, normalise_maps, prepare_maps

__all__ = [
    "NORMALISATIONS",
    "complexity",
    "normalise_maps",
    "prepare_maps",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sparseness",
]
