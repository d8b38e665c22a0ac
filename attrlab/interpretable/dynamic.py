"""Dynamic-linear networks: layers computing ``W(a) a``, the mode that detaches ``W``'s dependence on ``a``, and the
input encoding ``[x, 1 - x]``.

A B-cos or CoDA layer computes ``W(a) a`` with a weight matrix that depends on its input through scale factors
(cosine powers, DAU norms, normalisation statistics). Composed without biases, the whole network is
``f(x) = W_{0->L}(x) x``. Inside :func:`dynamic_linear` every :class:`DynamicLinear` layer detaches its scale factors
from the graph, so the gradient of a logit *is* its row of ``W_{0->L}(x)`` and ``x ⊙ gradient`` are contributions
that sum exactly to the logit: one backward pass, no hooks (thesis eqs. 5.11 and 6.16).

The encoding :class:`PairEncoding` maps attrlab's [-1, 1] images to [0, 1] and stacks ``[x, 1 - x]``: without the
second half a black pixel (0) could never contribute to a bias-free network, whatever the class.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn


class DynamicLinear:
    """Marks a layer ``a -> W(a) a``; with ``detach_dynamics`` set its scale factors are constants for autograd."""

    detach_dynamics: bool = False

    def dynamic(self, factor: torch.Tensor) -> torch.Tensor:
        """``factor`` detached in :func:`dynamic_linear` mode, as it is otherwise."""
        return factor.detach() if self.detach_dynamics else factor

    def dynamic_scope(self) -> AbstractContextManager[object]:
        """Where a layer computes its dynamic factors: without an autograd graph in :func:`dynamic_linear` mode (the
        factors are constants there, so recording their graph would only cost time and memory), else as usual."""
        return torch.no_grad() if self.detach_dynamics else nullcontext()


@contextmanager
def dynamic_linear(model: nn.Module) -> Iterator[nn.Module]:
    """Detach the dynamic scale factors of every :class:`DynamicLinear` layer of ``model`` for the ``with`` block.

    Only the flags change (and are restored afterwards), never a parameter or buffer: the explanation leaves the
    model as it was.
    """
    layers = [module for module in model.modules() if isinstance(module, DynamicLinear)]
    flags = [layer.detach_dynamics for layer in layers]
    for layer in layers:
        layer.detach_dynamics = True
    try:
        yield model
    finally:
        for layer, flag in zip(layers, flags):
            layer.detach_dynamics = flag


class PairEncoding(nn.Module):
    """[-1, 1] images (N, C, H, W) -> (N, 2C, H, W): ``[u, 1 - u]`` with ``u = (x + 1) / 2`` in [0, 1].

    Contributions to the encoded input fold back to pixels by adding each channel's two halves (:meth:`fold`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x + 1.0) * 0.5
        return torch.cat([u, 1.0 - u], dim=1)

    @staticmethod
    def fold(contributions: torch.Tensor) -> torch.Tensor:
        """(..., 2C, H, W) contributions of the encoding's channels -> (..., C, H, W) per input channel."""
        *lead, channels, height, width = contributions.shape
        return contributions.reshape(*lead, 2, channels // 2, height, width).sum(-4)

    def cellwise(self, n: int) -> nn.Module:
        """Acts on each pixel alone: the same layer serves every cell of a grid."""
        return self


__all__ = ["DynamicLinear", "PairEncoding", "dynamic_linear"]
