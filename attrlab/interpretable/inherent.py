"""The inherent explanation of dynamic-linear networks (B-cos, CoDA) as an attribution method: ``W(x)^T ⊙ x``.

With every dynamic scale factor detached (:func:`attrlab.interpretable.dynamic.dynamic_linear`) a bias-free
B-cos or CoDA network is the linear map ``f(x) = W_{0->L}(x) x``; the gradient of logit ``c`` is row ``c`` of
``W_{0->L}(x)``, and ``x ⊙ gradient`` are the contributions ``s_c(x)`` (thesis eqs. 5.11, 6.16), which sum exactly to
the logit. One forward and one backward pass per target column, through
:func:`attrlab.attribution.autograd.layer_gradient`.

* ``layer=None``: contributions of the input. A model with a :class:`PairEncoding` is explained in the encoding's
  ``[u, 1 - u]`` channels (the network is linear in them, not in the raw [-1, 1] pixels) and each pixel gets the sum
  of its two channels; so does a model whose named layer in front of the encoding is an identity (the grid
  wrappers' ``"input"``).
* ``layer=<name>``: contributions ``a_l ⊙ d f / d a_l`` of that layer's activations (they, too, sum to the logit),
  shaped like the layer's output.

On a network that is not dynamic linear (ReLU nets, biases) the same computation is Input x Gradient in the
dynamic-linear mode; its sum then differs from the logit by what the biases contribute.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attribution.autograd import layer_gradient
from ..attribution.base import (
    Attribution,
    Explanation,
    Layer,
    Target,
    named_layers,
    resolve_layer,
)
from ..attribution.checks import check_batch
from .dynamic import PairEncoding, dynamic_linear


def _encoding_layer(model: nn.Module, layer: Layer) -> nn.Module | None:
    """The PairEncoding to explain in place of ``layer`` (None, or an identity that only feeds the encoding)."""
    encodings = [module for module in model.modules() if isinstance(module, PairEncoding)]
    if not encodings:
        return None
    module = resolve_layer(model, layer)
    if module is None:  # the input (None or "input"): its contributions are the encoding's, folded onto the pixels
        return encodings[0]
    if not isinstance(module, nn.Identity):
        return None
    order = list(named_layers(model).values())
    position = next(i for i, m in enumerate(order) if m is module)
    before_encoding = next(i for i, m in enumerate(order) if m is encodings[0])
    return encodings[0] if position < before_encoding else None


class InherentContributions(Attribution):
    """``make_method("bcos", model).attribute(x, target=..., layer=...)``: the dynamic-linear contributions.

    Parameters
    ----------
    model : nn.Module
        A B-cos or CoDA network (any model runs; see the module docstring).
    """

    name = "bcos"

    def __init__(self, model: nn.Module):
        super().__init__(model)

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        """Contributions of ``inputs`` (or of ``layer``'s activations) to each target logit.

        Parameters
        ----------
        inputs : torch.Tensor
            (N, C, H, W) images.
        target : None, int, sequence or tensor
            Logits to explain; (N, T) explains T per image from one forward pass.
        layer : None, str or nn.Module
            None: the input (folded over a :class:`PairEncoding`'s channels); else that layer's output.

        Returns
        -------
        Explanation
            Contributions shaped like the input (or the layer's output), (N, T, ...) for (N, T) targets.
        """
        inputs = check_batch(inputs, self.model)
        encoding = _encoding_layer(self.model, layer)
        with dynamic_linear(self.model):
            activation, gradient, logits, target_index = layer_gradient(
                self.model, inputs, target, encoding if encoding is not None else layer
            )
        contributions = activation * gradient
        if encoding is not None:
            contributions = PairEncoding.fold(contributions)
        return Explanation(contributions, logits, target_index)


__all__ = ["InherentContributions"]
