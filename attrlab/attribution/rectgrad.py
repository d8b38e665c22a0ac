"""RectGrad (Kim et al. 2019): the gradient with each ReLU passing only its most important units, hook-free.

At every ReLU with output ``a`` the backward signal ``R`` is thresholded by the importance ``a * R``::

    R_l = 1[a * R_{l+1} > tau] * R_{l+1},   tau = the q-th percentile of a * R_{l+1} over the layer's units, per image

(the ReLU's own derivative mask ``1[z > 0]`` is replaced by this one; inactive units have ``a * R = 0``). ``q`` is
``percentile`` (98 by default, the setting of Sixt et al.'s code). The percentile is numpy's default ("linear"
interpolation between order statistics), computed per image on its device by one sort per ReLU; ``torch.quantile``
would do the same but refuses tensors of more than 2^24 values, which a batch of conv activations exceeds.

As for Guided Backprop the ``nn.ReLU`` modules are replaced by a custom autograd function in a hook-free forward;
with ``layer=`` the modified gradient is taken w.r.t. that layer's output. The attribution is the modified gradient
itself (Sixt et al. post-process it like the gradient, with ``abs`` and a max over channels).
"""

from __future__ import annotations

import torch
from torch import nn

from .gradient import _LayerGradient


def row_percentile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile (0..100) of each row of ``values`` (N, M), numpy's linear interpolation, shape (N, 1)."""
    ordered = values.sort(dim=1).values
    position = q / 100 * (values.shape[1] - 1)
    low = int(position)
    high = min(low + 1, values.shape[1] - 1)
    fraction = position - low
    return (ordered[:, low] + fraction * (ordered[:, high] - ordered[:, low]))[:, None]


class _RectifiedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: torch.Tensor, percentile: float) -> torch.Tensor:
        output = value.clamp(min=0)
        ctx.save_for_backward(output)
        ctx.percentile = percentile
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (output,) = ctx.saved_tensors
        importance = (output * grad_output).flatten(1)
        threshold = row_percentile(importance, ctx.percentile)
        return grad_output * (importance > threshold).view_as(grad_output), None


class RectGrad(_LayerGradient):
    """RectGrad (Kim et al. 2019, "Why are saliency maps noisy?"): see the module docstring.

    Parameters
    ----------
    model : nn.Module
        The classifier; its ``nn.ReLU`` modules get the thresholded backward.
    percentile : float
        q in [0, 100]: at each ReLU only units whose importance exceeds this percentile pass the signal (98: the
        top 2 %).
    """

    name = "rectgrad"

    def __init__(self, model: nn.Module, percentile: float = 98.0):
        super().__init__(model)
        if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile <= 100:
            raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
        self.percentile = float(percentile)
        self.substitutes = {nn.ReLU: self._relu}

    def _relu(self, value: torch.Tensor) -> torch.Tensor:
        return _RectifiedReLU.apply(value, self.percentile)

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient


__all__ = ["RectGrad", "row_percentile"]
