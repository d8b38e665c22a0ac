"""B-cos layers (Böhle et al. 2022; thesis ch. 6): ``(ŵ^T a) |cos(a, ŵ)|^(B-1)``, MaxOut, bias-free normalisation.

A B-cos unit with unit-norm weight ``ŵ`` computes ``ŵ^T a × |cos(a, ŵ)|^(B-1)`` (eq. 6.4): the linear response
scaled down unless input and weight align, so its output is at most ``‖a‖`` (eq. 6.5), and B = 1 is a plain linear
map with unit-norm weights. The convolution (Alg. C.1) computes the cosine per output position with the norm of the
input patch, a sum-pool of ``Σ_c a²`` over the kernel window. MaxOut (eq. 6.18) keeps the larger of ``max_out`` units
per output channel. There are no biases anywhere, so a network of these layers is dynamic linear
(:mod:`attrlab.interpretable.dynamic`) and its contributions sum exactly to its logits.

``scale`` multiplies a layer's output by a fixed constant: the thesis scales every layer by γ (log10 γ = 1.75 + B/10)
and the network's output down by a fixed T, since with B > 1 the cosine factors shrink the signal layer after layer
until it vanishes (App. C.3.1.1).

The normalisation layers (eqs. 6.19-6.27) normalise over different dimensions (BatchNorm: N, H, W; LayerNorm: C, H,
W; InstanceNorm: H, W; PositionNorm: C; AllNorm: N, C, H, W) by the standard deviation, a dynamic scale factor, and
have no additive term: no β, and no centring by the batch mean (which is a constant, i.e. a bias, at inference).
Centring over a single image's own dimensions is linear in the image and is kept.
:class:`BiasedNorm` is the conventional layer (eq. 6.19: β, and for the batch norms centring by the batch mean, a
running mean at inference) that the thesis trains only to show what its biases do (Fig. 6.13, eq. 6.31): the
network's logits are then ``W(x) x + b(x)``, and :func:`bias_probes` reads ``b(x)`` off
(:mod:`attrlab.interpretable.bias`).

These are written here rather than taken from the authors' ``bcos`` package (not a dependency): attrlab's version
adds the detachable dynamics mode and the per-cell variant the grid evaluations need.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..cells import Cellwise
from .dynamic import DynamicLinear

#: added to ``|cos|`` before the power: the gradient of ``|c|^(B-1)`` at c = 0 is infinite for B < 2 (as in the authors' code)
COS_EPS = 1e-6
#: added to the squared patch norm: an all-zero patch would otherwise divide by zero
NORM_EPS = 1e-6


def thesis_scale(b: float) -> float:
    """The thesis' fixed per-layer output scale γ for exponent B: log10 γ = 1.75 + B / 10 (App. C.3.1.1)."""
    return 10.0 ** (1.75 + b / 10.0)


def _check(b: float, max_out: int, scale: float) -> None:
    if not b >= 1.0:
        raise ValueError(f"B must be >= 1 (B = 1 is linear), got {b!r}")
    if not isinstance(max_out, int) or isinstance(max_out, bool) or max_out < 1:
        raise ValueError(f"max_out must be a positive integer (1: no MaxOut), got {max_out!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")


class _Bcos(DynamicLinear, nn.Module):
    """What the linear and convolutional B-cos layers share: unit-norm rows, the cosine power, MaxOut, the scale."""

    weight: nn.Parameter
    b: float
    max_out: int
    scale: float

    def unit_weight(self) -> torch.Tensor:
        """The weights with every unit's row scaled to norm 1 (ŵ)."""
        flat = self.weight.flatten(1)
        return self.weight / flat.norm(dim=1).view(-1, *([1] * (self.weight.dim() - 1)))

    def scaled_unit_weight(self) -> torch.Tensor:
        """``scale × ŵ``: the fixed output scale folded into the (small) weight instead of the (large) output."""
        flat = self.weight.flatten(1)
        factor = flat.norm(dim=1).reciprocal() * self.scale if self.scale != 1.0 else flat.norm(dim=1).reciprocal()
        return self.weight * factor.view(-1, *([1] * (self.weight.dim() - 1)))

    def bcos(self, linear: torch.Tensor, norm_squared: torch.Tensor) -> torch.Tensor:
        """``linear × |linear / (scale ‖a‖)|^(B-1)``, MaxOut over groups of ``max_out`` channels.

        ``linear`` is ``scale × ŵ^T a`` (:meth:`scaled_unit_weight`), so the output is ``scale`` times the B-cos unit's
        and the cosine divides the scale out again, on the small (N, 1, ...) norm tensor. In
        :func:`~attrlab.interpretable.dynamic.dynamic_linear` mode the cosine factor is computed without an autograd
        graph (it is a constant there), so the explanation's backward pass is one multiplication per layer.
        """
        if self.b != 1.0:
            with self.dynamic_scope():
                inverse = (norm_squared + NORM_EPS).rsqrt()
                if self.scale != 1.0:
                    inverse = inverse * (1.0 / self.scale)
                # without a graph (dynamic-linear mode) the factor is built in place: one buffer instead of three
                in_place = self.detach_dynamics
                if self.b == 2.0:  # |cos| itself: fewer elementwise passes, and no singular gradient to guard against
                    factor = linear.abs().mul_(inverse) if in_place else linear.abs() * inverse
                elif in_place:
                    factor = (linear * inverse).abs_().add_(COS_EPS).pow_(self.b - 1.0)
                else:
                    factor = (linear * inverse).abs().add(COS_EPS).pow(self.b - 1.0)
            linear = linear * self.dynamic(factor)
        if self.max_out > 1:
            linear = linear.unflatten(1, (-1, self.max_out)).amax(2)
        return linear


class BcosLinear(_Bcos):
    """A layer of B-cos units on vectors: (N, in_features) -> (N, out_features); see the module docstring.

    Parameters
    ----------
    in_features, out_features : int
        Input and output sizes.
    b : float
        The exponent B >= 1.
    max_out : int
        Units per output (MaxOut keeps the largest; 1: none).
    scale : float
        Fixed factor on the output.
    """

    def __init__(self, in_features: int, out_features: int, b: float = 2.0, max_out: int = 1, scale: float = 1.0):
        super().__init__()
        _check(b, max_out, scale)
        self.in_features, self.out_features = in_features, out_features
        self.b, self.max_out, self.scale = float(b), max_out, float(scale)
        self.weight = nn.Parameter(torch.empty(out_features * max_out, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        linear = F.linear(a, self.scaled_unit_weight())
        with self.dynamic_scope():
            norm_squared = a.pow(2).sum(-1, keepdim=True)
        return self.bcos(linear, norm_squared)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, b={self.b:g}, max_out={self.max_out}, scale={self.scale:g}"


class BcosConv2d(_Bcos):
    """A convolution of B-cos units: every output position is a B-cos unit on its input patch (Alg. C.1).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size, stride, padding : int
        As for ``nn.Conv2d`` (square, zero padding); the patch norm uses the same window.
    b : float
        The exponent B >= 1.
    max_out : int
        Units per output channel (MaxOut keeps the largest; 1: none).
    scale : float
        Fixed factor on the output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        b: float = 2.0,
        max_out: int = 1,
        scale: float = 1.0,
    ):
        super().__init__()
        _check(b, max_out, scale)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.b, self.max_out, self.scale = float(b), max_out, float(scale)
        self.weight = nn.Parameter(torch.empty(out_channels * max_out, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def patch_norm_squared(self, a: torch.Tensor) -> torch.Tensor:
        """(N, 1, H', W'): ``Σ a²`` over each input patch (channels and window), a sum-pool of the channel sum."""
        window = self.kernel_size * self.kernel_size
        squares = a.pow(2).sum(1, keepdim=True)
        if self.kernel_size == 1 and self.stride == 1:
            return squares
        pooled = F.avg_pool2d(squares, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return pooled * window

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        linear = F.conv2d(a, self.scaled_unit_weight(), stride=self.stride, padding=self.padding)
        with self.dynamic_scope():
            norm_squared = self.patch_norm_squared(a)
        return self.bcos(linear, norm_squared)

    def cellwise(self, n: int) -> nn.Module:
        """The layer applied to each cell of an n x n grid alone (DiFull); a 1x1 layer already is."""
        if self.kernel_size == 1 and self.stride == 1:
            return self
        return CellwiseBcosConv2d(self, n)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, b={self.b:g}, max_out={self.max_out}, scale={self.scale:g}"
        )


class CellwiseBcosConv2d(Cellwise, BcosConv2d):
    """A :class:`BcosConv2d` run on each cell of an n x n grid alone, sharing the wrapped layer's weight (DiFull)."""

    def __init__(self, layer: BcosConv2d, n: int):
        BcosConv2d.__init__(
            self,
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.b,
            layer.max_out,
            layer.scale,
        )
        self.weight = layer.weight
        self.n = n

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.merge(super().forward(self.split(a)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cells={self.n}x{self.n}"


#: normalisation name -> (dimensions of an (N, C, H, W) tensor it normalises over, centred)
NORMS: dict[str, tuple[tuple[int, ...], bool]] = {
    "batch": ((0, 2, 3), False),
    "layer": ((1, 2, 3), True),
    "instance": ((2, 3), True),
    "position": ((1,), True),
    "all": ((0, 1, 2, 3), False),
}


class BiasFreeNorm(DynamicLinear, nn.Module):
    """``γ (a - mean) / std`` over the dimensions of :data:`NORMS`, without β; the std is a dynamic factor.

    Norms over the batch (``"batch"``, ``"all"``) do not centre (the batch mean is a bias at inference) and use a
    running variance in eval mode, like ``nn.BatchNorm2d``.

    Parameters
    ----------
    kind : str
        One of :data:`NORMS`.
    channels : int
        Channels (γ has one entry per channel).
    eps : float
        Added to the variance.
    momentum : float
        Update rate of the running variance (batch norms only).
    """

    running_var: torch.Tensor  # a buffer, registered in __init__ for the batch norms only

    def __init__(self, kind: str, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if kind not in NORMS:
            raise ValueError(f"unknown normalisation {kind!r}; valid choices: {', '.join(NORMS)}")
        self.kind, self.channels, self.eps, self.momentum = kind, channels, eps, momentum
        self.dims, self.centred = NORMS[kind]
        self.weight = nn.Parameter(torch.ones(channels))
        self.uses_batch = 0 in self.dims
        if self.uses_batch:
            shape = (1, channels, 1, 1) if kind == "batch" else (1, 1, 1, 1)
            self.register_buffer("running_var", torch.ones(shape))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.uses_batch and not self.training:
            variance = self.running_var
        else:
            variance = a.var(dim=self.dims, keepdim=True, unbiased=False)
            if self.uses_batch:
                with torch.no_grad():
                    count = a.numel() / variance.numel()
                    unbiased = variance * count / max(count - 1, 1)
                    self.running_var.lerp_(unbiased, self.momentum)
        if self.centred:
            a = a - a.mean(dim=self.dims, keepdim=True)
        return a * self.dynamic((variance + self.eps).rsqrt()) * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.kind}, {self.channels}"


class BiasedNorm(BiasFreeNorm):
    """``γ (a - mean) / std + β`` over the dimensions of :data:`NORMS` (eq. 6.19): the conventional normalisation.

    Unlike :class:`BiasFreeNorm` it has the additive β and centres the batch norms too: by the batch mean in training,
    by a running mean at inference, a constant there, i.e. a bias. In eval mode its output is ``w ⊙ c(a) + t``, with
    ``c(a)`` the input (or, for the norms over one image's own dimensions, the input minus its mean: linear in it),
    ``w = γ / std`` the dynamic factor and ``t = β - w ⊙ running mean`` (batch norms) or ``β`` the additive term.
    Inside :func:`bias_probes` the additive term is multiplied by a probe of ones, whose gradient is the term's share
    of a logit.

    Parameters
    ----------
    kind : str
        One of :data:`NORMS`.
    channels : int
        Channels (γ and β have one entry per channel).
    eps : float
        Added to the variance.
    momentum : float
        Update rate of the running mean and variance (batch norms only).
    """

    running_mean: torch.Tensor  # a buffer, registered in __init__ for the batch norms only
    bias_probe: torch.Tensor | None = None

    def __init__(self, kind: str, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(kind, channels, eps, momentum)
        self.bias = nn.Parameter(torch.zeros(channels))
        if self.uses_batch:
            self.register_buffer("running_mean", torch.zeros_like(self.running_var))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        beta = self.bias.view(1, -1, 1, 1)
        gamma = self.weight.view(1, -1, 1, 1)
        if self.uses_batch and not self.training:
            scale = self.dynamic((self.running_var + self.eps).rsqrt()) * gamma
            additive = beta - self.running_mean * scale  # the running mean is a constant: a bias
            linear = a * scale
        else:
            mean = a.mean(dim=self.dims, keepdim=True)
            variance = a.var(dim=self.dims, keepdim=True, unbiased=False)
            if self.uses_batch:
                with torch.no_grad():
                    count = a.numel() / variance.numel()
                    self.running_mean.lerp_(mean.detach(), self.momentum)
                    self.running_var.lerp_(variance.detach() * count / max(count - 1, 1), self.momentum)
            linear = (a - mean) * self.dynamic((variance + self.eps).rsqrt()) * gamma
            additive = beta
        if self.bias_probe is not None:
            additive = additive * self.bias_probe
        return linear + additive


@contextmanager
def bias_probes(model: nn.Module, count: int, device: torch.device | str | None = None) -> Iterator[list[torch.Tensor]]:
    """Give every :class:`BiasedNorm` of ``model`` a probe of ones, (count, 1, 1, 1) with a gradient, for the block.

    Each layer's additive term is multiplied by its probe, which changes no output; the gradient of a logit with
    respect to a probe is what that layer's biases add to the logit of each of ``count`` images. Yields the probes
    (an empty list for a model without biased norms); the layers are left as they were.
    """
    layers = [module for module in model.modules() if isinstance(module, BiasedNorm)]
    probes = [torch.ones(count, 1, 1, 1, device=device, requires_grad=True) for _ in layers]
    for layer, probe in zip(layers, probes):
        layer.bias_probe = probe
    try:
        yield probes
    finally:
        for layer in layers:
            layer.bias_probe = None


def bias_free_norm(kind: str, channels: int) -> BiasFreeNorm:
    """The bias-free normalisation ``kind`` (one of :data:`NORMS`) for ``channels`` channels."""
    return BiasFreeNorm(kind, channels)


__all__ = [
    "NORMS",
    "BcosConv2d",
    "BcosLinear",
    "BiasFreeNorm",
    "BiasedNorm",
    "CellwiseBcosConv2d",
    "bias_free_norm",
    "bias_probes",
    "thesis_scale",
]
