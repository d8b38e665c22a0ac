"""Sanity checks of attributions after Sixt et al. (2020), "When Explanations Lie": SSIM checks, CSC, simulation.

* :mod:`~attrlab.sanity.methods`: the paper's method list as one table (registry name, settings, post-processing).
* :mod:`~attrlab.sanity.ssim`: batched SSIM equal to scikit-image, percentile normalisation, the sign-flip score.
* :mod:`~attrlab.sanity.checks`: random-logit and cascading-randomisation checks, bootstrap medians.
* :mod:`~attrlab.sanity.csc`: cosine similarity convergence with relevance / gradient injection at a layer.
* :mod:`~attrlab.sanity.simulation`: the matrix-chain simulation (the paper's Fig. 4).
* :mod:`~attrlab.sanity.residual`: a small residual network for the skip-connection question (Fig. 5).
* :mod:`~attrlab.sanity.callback`: CSC and random-logit SSIM tracked over training.
"""

from .checks import (
    CascadeResult,
    bootstrap_median,
    cascade,
    cascading_randomisation,
    median_table,
    parametrised_layers,
    random_classes,
    random_logit,
)
from .csc import cosine_baseline, csc, gradient_from, pairwise_abs_cosine, propagate_from
from .methods import SIXT_METHODS, SanityMethod, missing_methods, reduce_channels, sanity_methods
from .simulation import model_matrices, simulate, simulation_frame
from .ssim import normalize_maps, ssim, ssim_flipped

__all__ = [
    "SIXT_METHODS",
    "CascadeResult",
    "SanityMethod",
    "bootstrap_median",
    "cascade",
    "cascading_randomisation",
    "cosine_baseline",
    "csc",
    "gradient_from",
    "median_table",
    "missing_methods",
    "model_matrices",
    "normalize_maps",
    "pairwise_abs_cosine",
    "parametrised_layers",
    "propagate_from",
    "random_classes",
    "random_logit",
    "reduce_channels",
    "sanity_methods",
    "simulate",
    "simulation_frame",
    "ssim",
    "ssim_flipped",
]
