"""Explanation quality metrics (Pahde et al. 2023), batched in torch on the inputs' device and equal to Quantus.

Families as in Quantus: complexity (:func:`sparseness`, :func:`complexity`), faithfulness
(:func:`region_perturbation` with :func:`aopc`, :func:`pixel_flipping`, :func:`faithfulness_correlation`), localisation
(:func:`relevance_rank_accuracy`, :func:`relevance_mass_accuracy`), robustness (:func:`avg_sensitivity`,
:func:`max_sensitivity`) and randomisation (:func:`random_logit`). Every metric takes its maps as they come from a
method and normalises each map by the square root of its second moment first (``normalise="second_moment"``, the
seed's choice; ``"max"`` or ``"none"`` switch it). Random draws are seeded and device-independent; the functions of
:mod:`attrlab.quality.draws` replay Quantus' own draws for comparisons. Why our own versions: Quantus evaluates in
numpy on the host, image by image or step by step; these run whole batches on the inputs' device
(``bench/quality.py`` measures the difference).
"""

from .complexity import complexity, sparseness
from .faithfulness import aopc, curve_auc, faithfulness_correlation, pixel_flipping, region_perturbation
from .localisation import relevance_mass_accuracy, relevance_rank_accuracy
from .normalise import NORMALISATIONS, normalise_maps, prepare_maps
from .randomisation import random_logit, ssim_1d
from .robustness import avg_sensitivity, max_sensitivity, sensitivity

__all__ = [
    "NORMALISATIONS",
    "aopc",
    "avg_sensitivity",
    "complexity",
    "curve_auc",
    "faithfulness_correlation",
    "max_sensitivity",
    "normalise_maps",
    "pixel_flipping",
    "prepare_maps",
    "random_logit",
    "region_perturbation",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "sensitivity",
    "sparseness",
    "ssim_1d",
]
