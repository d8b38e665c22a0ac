"""Inherently interpretable networks (thesis part II): dynamic-linear layers whose explanation is part of the model.

* :mod:`.dynamic`: the shared mechanics: the ``dynamic_linear`` mode that detaches every dynamic scale factor, so one
  backward pass gives the network's input-dependent linear map ``W(x)``, and the input encoding ``[x, 1 - x]``;
* :mod:`.coda`: dynamic alignment units and convolutional CoDA layers (Böhle et al. 2021);
* :mod:`.bcos`: B-cos layers (Böhle et al. 2022), MaxOut, and bias-free (and, for the bias study, biased)
  normalisation layers;
* :mod:`.inherent`: the contributions ``W(x)^T ⊙ x`` as a registered attribution method (``"bcos"``);
* :mod:`.bias`: with biased normalisation layers, the bias term ``b(x)`` of ``y = W(x) x + b(x)`` and its share of
  the top-2 logit difference (thesis Fig. 6.13).
"""

from .bcos import NORMS, BcosConv2d, BcosLinear, bias_free_norm
from .coda import RESCALINGS, DAUConv2d
from .dynamic import DynamicLinear, PairEncoding, dynamic_linear

__all__ = [
    "NORMS",
    "RESCALINGS",
    "BcosConv2d",
    "BcosLinear",
    "DAUConv2d",
    "DynamicLinear",
    "PairEncoding",
    "bias_free_norm",
    "dynamic_linear",
]
