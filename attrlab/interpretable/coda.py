"""Dynamic alignment units and convolutional CoDA layers (Böhle et al. 2021; thesis ch. 5): ``w(x)^T x``.

A DAU (eq. 5.1) computes ``g(A B x + b)^T x = w(x)^T x`` with a rank-r factorisation ``A`` (d x r), ``B`` (r x d), a
bias ``b`` (d) and a rescaling ``g(u) = α(‖u‖) u`` that bounds the weight's norm:

* ``"l2"`` (eq. 5.2): ``u / ‖u‖``, so ``DAU(x) = ‖x‖ cos(x, w(x)) <= ‖x‖``;
* ``"sq"`` (squashing): ``u ‖u‖ / (1 + ‖u‖²)``, norm below 1;
* ``"wb"`` (weight bounding, the eDAU of eqs. 5.4-5.6): ``w(x) = A' B x / ‖B x‖`` with ``A' = A / ‖A‖_F``, so
  ``‖w(x)‖ <= 1``; no bias, and every unit has its own ``B`` (L2 and SQ share ``B`` within a layer).

A convolutional layer applies ``out_channels`` DAUs to every input patch (d = C k² entries). It never builds the d-dim
weight vectors: with ``z = B x`` (an r-channel convolution), ``u_j^T x = z^T (A_j^T x) + b_j^T x`` (convolutions with
``A^T`` and ``b``) and ``‖u_j‖² = z^T (A_j^T A_j) z + 2 (A_j^T b_j)^T z + ‖b_j‖²`` (Gram matrices of size r x r), so
the cost grows with r, not d. In :func:`attrlab.interpretable.dynamic.dynamic_linear` mode ``z`` and ``α`` are
detached: the output is then ``w(x)^T x`` with ``w(x)`` a constant, and one backward pass gives the contributions
``W_{0->L}(x)^T ⊙ x`` (eq. 5.11). The DAU's ``b`` is part of the weight, not an additive bias: the contributions
still sum exactly to the output.

Written here (no CoDA package exists on PyPI) with the detachable dynamics and per-cell form attrlab needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import Cellwise
from .dynamic import DynamicLinear

RESCALINGS = ("l2", "sq", "wb")
#: keeps ‖u‖ and ‖Bx‖ away from zero (an all-zero patch)
EPS = 1e-6


class DAUConv2d(DynamicLinear, nn.Module):
    """``out_channels`` dynamic alignment units of rank ``rank`` on every k x k patch; see the module docstring.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out (one DAU per output channel).
    rank : int
        The rank r of each unit's ``A B``.
    kernel_size, stride, padding : int
        As for ``nn.Conv2d`` (square, zero padding).
    rescaling : str
        ``"l2"``, ``"sq"`` or ``"wb"`` (:data:`RESCALINGS`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        rescaling: str = "sq",
    ):
        super().__init__()
        if rescaling not in RESCALINGS:
            raise ValueError(f"unknown rescaling {rescaling!r}; valid choices: {', '.join(RESCALINGS)}")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank!r}")
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size, self.stride, self.padding, self.rescaling = kernel_size, stride, padding, rescaling
        d = in_channels * kernel_size * kernel_size
        shared = rescaling != "wb"
        # B: (r, C, k, k) shared by the layer's units, or (out * r, C, k, k), one per unit (weight bounding)
        self.b_weight = nn.Parameter(
            torch.randn(rank if shared else out_channels * rank, in_channels, kernel_size, kernel_size) / math.sqrt(d)
        )
        # A^T of every unit stacked: (out * r, C, k, k); row j * r + s is column s of unit j's A
        self.a_weight = nn.Parameter(
            torch.randn(out_channels * rank, in_channels, kernel_size, kernel_size) / math.sqrt(rank)
        )
        self.bias = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size)) if shared else None

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, r = self.out_channels, self.rank
        if self.rescaling == "wb":
            a_unit = self.a_weight.unflatten(0, (out, r))
            a_unit = a_unit / a_unit.flatten(1).norm(dim=1).view(out, 1, 1, 1, 1)  # A' = A / ‖A‖_F per unit
            ax = self._conv(x, a_unit.flatten(0, 1)).unflatten(1, (out, r))  # (N, out, r, H, W): A'_j^T x
            z = self._conv(x, self.b_weight).unflatten(1, (out, r))  # B_j x
            direction = self.dynamic(z / (z.pow(2).sum(2, keepdim=True) + EPS).sqrt())
            return (direction * ax).sum(2)
        assert self.bias is not None  # only the "wb" rescaling (returned above) has no bias
        z = self._conv(x, self.b_weight)  # (N, r, H, W)
        ax = self._conv(x, self.a_weight).unflatten(1, (out, r))  # (N, out, r, H, W): A_j^T x
        bx = self._conv(x, self.bias)  # (N, out, H, W): b_j^T x
        a = self.a_weight.flatten(1).unflatten(0, (out, r))  # (out, r, d)
        gram = a @ a.transpose(1, 2)  # (out, r, r): A_j^T A_j
        cross = a @ self.bias.flatten(1)[:, :, None]  # (out, r, 1): A_j^T b_j
        norm_squared = (
            torch.einsum("nrhw,jrs,nshw->njhw", z, gram, z)
            + 2 * torch.einsum("jr,nrhw->njhw", cross[:, :, 0], z)
            + self.bias.flatten(1).pow(2).sum(1).view(1, out, 1, 1)
        ).clamp_min(0) + EPS
        if self.rescaling == "l2":
            alpha = norm_squared.rsqrt()
        else:  # squashing: ‖u‖ / (1 + ‖u‖²)
            alpha = norm_squared.sqrt() / (1 + norm_squared)
        z = self.dynamic(z)
        return self.dynamic(alpha) * ((z[:, None] * ax).sum(2) + bx)

    def weight_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """The units' weight vectors w(x) for a batch of single patches (N, C, k, k): (N, out, C, k, k).

        The explicit form of eq. 5.1 (the forward never builds it); for tests and small demonstrations.
        """
        out, r = self.out_channels, self.rank
        flat = x.flatten(1)  # (N, d)
        if self.rescaling == "wb":
            a_unit = self.a_weight.flatten(1).unflatten(0, (out, r))
            a_unit = a_unit / a_unit.flatten(1).norm(dim=1).view(out, 1, 1)
            z = (flat @ self.b_weight.flatten(1).T).unflatten(1, (out, r))
            direction = z / (z.pow(2).sum(2, keepdim=True) + EPS).sqrt()
            w = torch.einsum("jrd,njr->njd", a_unit, direction)
        else:
            assert self.bias is not None  # only the "wb" rescaling has no bias
            z = flat @ self.b_weight.flatten(1).T  # (N, r)
            u = torch.einsum("jrd,nr->njd", self.a_weight.flatten(1).unflatten(0, (out, r)), z)
            u = u + self.bias.flatten(1)[None]
            norm_squared = u.pow(2).sum(2, keepdim=True) + EPS
            alpha = norm_squared.rsqrt() if self.rescaling == "l2" else norm_squared.sqrt() / (1 + norm_squared)
            w = alpha * u
        return w.view(x.shape[0], out, *x.shape[1:])

    def cellwise(self, n: int) -> nn.Module:
        """The layer applied to each cell of an n x n grid alone (DiFull); a 1x1 layer already is."""
        if self.kernel_size == 1 and self.stride == 1:
            return self
        return CellwiseDAUConv2d(self, n)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, rank={self.rank}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, rescaling={self.rescaling}"
        )


class CellwiseDAUConv2d(Cellwise, nn.Module):
    """A :class:`DAUConv2d` run on each cell of an n x n grid alone, sharing the wrapped layer (DiFull)."""

    def __init__(self, layer: DAUConv2d, n: int):
        super().__init__()
        self.layer = layer
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.layer(self.split(x)))

    def extra_repr(self) -> str:
        return f"cells={self.n}x{self.n}"


__all__ = ["RESCALINGS", "CellwiseDAUConv2d", "DAUConv2d"]
