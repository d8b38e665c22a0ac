"""How LRP sees a layer: the functional Conv2d/Linear evaluator (:class:`Affine`), parameter-free layers as
functional calls, and what the engine knows about a layer's surroundings (:class:`LayerInfo`).

Rules never call a module (so module hooks never run and the train/eval flag does not matter): they evaluate a
convolution (1d, 2d, 3d, grouped) or Linear through :class:`Affine`, with its own or modified weights, and its
transpose through ``aten.convolution_backward`` (one call for stacked weight blocks, without the expanded dummy input
that ``torch.nn.grad.conv2d_input`` would copy). Parameter-free layers (activations, pooling, reshapes, dropout) are
evaluated by :func:`functional`. Grid-cell layers (:class:`~attrlab.cells.Cellwise`) are applied to each cell alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..canonize import BatchNorm, ThreshReLU, batchnorm_affine
from ..cells import Cellwise


@dataclass(frozen=True)
class LayerInfo:
    """What the engine knows about a layer when its rule runs."""

    name: str
    input_nonnegative: bool = False  # every input value is >= 0 (the layer follows a ReLU, possibly via pooling)
    output_rectified: bool = False  # a ReLU takes this layer's output directly
    model_input: bool = False  # the layer receives the model input (possibly through reshapes only)
    # the ReLU after this layer is applied here: output relu(z), and relu(z) / d as the scale folds the ReLU's
    # gradient mask into the rule (one elementwise pass less each way; relevance at both outputs is the same)
    fused_relu: bool = False


#: the convolutions LRP evaluates functionally (any number of spatial dimensions; transposed ones are not supported)
Convolution = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVOLVE = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class Affine:
    """A convolution or Linear layer as the rules see it: (possibly canonized) weight and bias and functional calls.

    Convolutions of 1, 2 or 3 spatial dimensions with any stride, dilation, zero padding (numbers or ``"same"`` /
    ``"valid"``) and groups (depthwise included). Rules may stack several weight blocks in one call: along the output
    channels (``[W; A; B]``, outputs chunked along dim 1) or along the input channels (the input-space rules'
    ``[W, W+, W-]``, results split along dim 1); for a grouped convolution the blocks are interleaved per group here,
    so that the rules never see the groups.

    Parameters
    ----------
    module : nn.Conv1d, nn.Conv2d, nn.Conv3d or nn.Linear
        The layer (``padding_mode="zeros"``); a :class:`~attrlab.cells.Cellwise` convolution runs per grid cell.
    weight : torch.Tensor, optional
        A weight to use instead of the module's own (read detached).
    bias : torch.Tensor, optional
        The bias going with ``weight`` (ignored without ``weight``: the module's own is used): one value per output
        channel, or a map ``(out_channels, *output spatial shape)`` when a BatchNorm was folded into a padded convolution
        (Pahde et al. 2023, appendix A: see :func:`attrlab.canonize.spatial_bias`).
    """

    def __init__(self, module: nn.Module, weight: Tensor | None = None, bias: Tensor | None = None):
        if not isinstance(module, (*Convolution, nn.Linear)):
            raise TypeError(f"Affine wraps Conv1d/Conv2d/Conv3d or Linear layers, not {type(module).__name__}")
        if isinstance(module, Convolution) and module.padding_mode != "zeros":
            raise ValueError(
                f"LRP supports zero-padded convolutions only, got padding_mode={module.padding_mode!r} (the other "
                "modes pad with input values, which a rule would have to give relevance to)"
            )
        self.module = module
        self.weight = (module.weight if weight is None else weight).detach()
        if weight is None:
            bias = module.bias
        self.bias = None if bias is None else bias.detach()
        self.padding = _numeric_padding(module) if isinstance(module, Convolution) else None
        self.groups = module.groups if isinstance(module, Convolution) else 1
        #: a convolution of each grid cell alone (DiFull): the rule's convolutions run on the cells as a batch
        self.cellwise = module if isinstance(module, Cellwise) else None
        self._derived: dict[Any, Any] = {}

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` (a rule's modified weights and the like), computed once per ``key`` for this layer object.

        The engine builds these layer objects with its plan and keeps the plan only while the model's parameters
        are unchanged (:class:`~attrlab.lrp.engine.LRP`), so what rules derive from the parameters is reused across
        calls without any rule holding state.
        """
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def __call__(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None | str = "same") -> Tensor:
        """The layer applied to ``x`` with ``weight`` (default: its own) and ``bias`` (default: its own; None: none)."""
        weight = self.weight if weight is None else weight
        bias = self.bias if isinstance(bias, str) else bias
        m = self.module
        if not isinstance(m, Convolution):
            return F.linear(x, weight, bias)
        padding = cast("tuple[int, ...]", self.padding)  # set for every convolution in __init__
        spatial_bias = bias is not None and bias.dim() > 1
        flat_bias = None if spatial_bias else bias
        blocks = weight.shape[0] // m.out_channels  # weight blocks stacked along the output channels
        if self.groups != 1 and blocks > 1:
            weight = _interleave(weight, blocks, self.groups)
            flat_bias = None if flat_bias is None else _interleave(flat_bias, blocks, self.groups)
        if self.cellwise is not None:
            cells = self.cellwise
            out = cells.merge(F.conv2d(cells.split(x), weight, flat_bias, m.stride, padding, m.dilation))
        else:
            out = _CONVOLVE[x.dim() - 2](x, weight, flat_bias, m.stride, padding, m.dilation, self.groups)
        if self.groups != 1 and blocks > 1:
            out = _deinterleave(out, self.groups, blocks)
        return out + cast(Tensor, bias) if spatial_bias else out

    def transpose(self, grad: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """``weight^T grad``: the gradient of ``layer(x, weight)`` w.r.t. ``x`` (weights may be stacked along dim 0,
        with ``grad`` stacked along its channels, to sum several terms in one call; or along dim 1, with
        ``input_shape`` counting the stacked input channels, to get several terms at once)."""
        m = self.module
        if not isinstance(m, Convolution):
            return grad @ weight
        groups = self.groups
        blocks = weight.shape[0] // m.out_channels
        inputs = weight.shape[1] * groups // m.in_channels  # weight blocks stacked along the input channels
        if groups != 1 and blocks > 1:
            weight, grad = _interleave(weight, blocks, groups), _interleave(grad, blocks, groups, dim=1)
        shape = (input_shape[0], weight.shape[1] * groups, *input_shape[2:])
        cells = self.cellwise
        if cells is not None:
            grad, shape = cells.split(grad), cells.cell_shape(shape)
        # torch.nn.grad.conv2d_input passes an expanded dummy input that convolution_backward then copies in
        # full; an uninitialised dummy in the gradient's memory layout avoids that copy (only its shape is read)
        channels_last = grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        dummy = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        result = torch.ops.aten.convolution_backward(
            grad,
            dummy,
            weight,
            None,
            m.stride,
            self.padding,
            m.dilation,
            False,
            [0] * (grad.dim() - 2),
            groups,
            [True, False, False],
        )[0]
        if groups != 1 and inputs > 1:
            result = _deinterleave(result, groups, inputs)
        return result if cells is None else cells.merge(result)


def _interleave(t: Tensor, blocks: int, groups: int, dim: int = 0) -> Tensor:
    """Channels ordered (block, group, channel) -> (group, block, channel) along ``dim``: a grouped convolution sees
    each group's rows of every stacked block together."""
    shape = t.shape
    size = shape[dim] // (blocks * groups)
    t = t.reshape(*shape[:dim], blocks, groups, size, *shape[dim + 1 :]).transpose(dim, dim + 1)
    return t.reshape(shape)


def _deinterleave(t: Tensor, groups: int, blocks: int) -> Tensor:
    """A grouped call's output channels ordered (group, block, channel) -> (block, group, channel) (dim 1)."""
    shape = t.shape
    size = shape[1] // (blocks * groups)
    return t.reshape(shape[0], groups, blocks, size, *shape[2:]).transpose(1, 2).reshape(shape)


def _numeric_padding(m: Any) -> tuple[int, ...]:
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(m.kernel_size)
        if any(s != 1 for s in m.stride):
            raise ValueError("padding='same' needs stride 1")
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(total % 2 for total in totals):
            raise ValueError(f"padding='same' with an even kernel {m.kernel_size} is not supported by attrlab's LRP")
        return tuple(total // 2 for total in totals)
    return tuple(padding)


def per_cell(layer: nn.Module, function: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``function`` as ``layer`` applies it: on each grid cell alone for a :class:`~attrlab.cells.Cellwise` layer.

    Parameters
    ----------
    layer : nn.Module
        The layer ``function`` evaluates.
    function : callable
        A tensor function of the layer's input.

    Returns
    -------
    callable
    """
    if isinstance(layer, Cellwise):
        return lambda x: layer.merge(function(layer.split(x)))
    return function


def max_pool2d(
    x: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool = False
) -> Tensor:
    """``F.max_pool2d``; on the CPU and without a graph (max pooling as average pooling) computed in channels-last layout.

    Why: PyTorch's CPU kernel for standard-layout (NCHW) tensors is scalar code, its channels-last kernel is vectorised
    over the channels: 200 x 32 x 28 x 28 in 2 x 2 windows takes 8.8 ms against 3.0 ms including both layout
    conversions. The maxima are the same numbers and come back in the standard layout. With a graph (max pooling
    routing the gradient) the channels-last backward and the conversions cost what the forward saves, so PyTorch's
    standard path runs.

    Parameters
    ----------
    x : torch.Tensor
        (N, C, H, W).
    kernel_size, stride, padding, dilation, ceil_mode
        As for ``F.max_pool2d``.

    Returns
    -------
    torch.Tensor
        (N, C, H', W').
    """
    if x.device.type != "cpu" or x.dim() != 4 or (x.requires_grad and torch.is_grad_enabled()):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    return F.max_pool2d(channels_last, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode).contiguous()


def _channel(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast over ``x`` (N, C, ...)."""
    return t.view(-1, *[1] * (x.dim() - 2))


#: the layers that are the identity in eval semantics
IDENTITIES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Identity,
)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVERAGE_POOLS = (
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
#: element-wise activations other than ReLU, by their functional form (relevance passes them: zennit's ``Pass``)
ACTIVATIONS: dict[type, Callable[[Tensor], Tensor]] = {
    nn.ReLU6: F.relu6,
    nn.SiLU: F.silu,
    nn.Sigmoid: torch.sigmoid,
    nn.Hardsigmoid: F.hardsigmoid,
    nn.Hardswish: F.hardswish,
    nn.Tanh: torch.tanh,
}


def functional(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """The eval-mode forward of a parameter-free layer as a functional call (module hooks never run).

    Parameters
    ----------
    layer : nn.Module
        ReLU and the other element-wise activations (ReLU6, SiLU, Sigmoid, Hardsigmoid, Hardswish, Tanh, GELU,
        LeakyReLU, ELU), max / average / adaptive average pooling (1d, 2d, 3d), Flatten, dropout, Identity, a
        canonization ThreshReLU or a BatchNorm (running statistics: ``scale * x + shift`` per channel).

    Returns
    -------
    callable
        ``x -> layer(x)`` in eval semantics; other layer types raise a ``TypeError`` naming them.
    """
    if isinstance(layer, nn.ReLU):
        return F.relu
    activation = next((f for t, f in ACTIVATIONS.items() if isinstance(layer, t)), None)
    if activation is not None:
        return activation
    if isinstance(layer, nn.GELU):
        return lambda x: F.gelu(x, approximate=layer.approximate)
    if isinstance(layer, nn.LeakyReLU):
        return lambda x: F.leaky_relu(x, layer.negative_slope)
    if isinstance(layer, nn.ELU):
        return lambda x: F.elu(x, layer.alpha)
    if isinstance(layer, MAX_POOLS):
        # (by isinstance: grid-cell layers subclass these)
        pools: tuple[Callable[..., Tensor], ...] = (F.max_pool1d, max_pool2d, F.max_pool3d)
        pool = next(f for t, f in zip(MAX_POOLS, pools) if isinstance(layer, t))
        return per_cell(
            layer,
            lambda x: pool(
                x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode
            ),
        )
    if isinstance(layer, nn.AvgPool1d):
        return lambda x: F.avg_pool1d(
            x, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad
        )
    if isinstance(layer, (nn.AvgPool2d, nn.AvgPool3d)):
        average = F.avg_pool2d if isinstance(layer, nn.AvgPool2d) else F.avg_pool3d
        return lambda x: average(
            x,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            layer.count_include_pad,
            layer.divisor_override,
        )
    if isinstance(layer, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        adaptive = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
        return lambda x: adaptive[x.dim() - 2](x, cast(Any, layer.output_size))
    if isinstance(layer, nn.Flatten):
        return lambda x: x.flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, IDENTITIES):
        return lambda x: x  # dropout is the identity in eval semantics
    if isinstance(layer, ThreshReLU):
        return layer.forward  # attrlab's own module (canonization), called without hooks
    if isinstance(layer, BatchNorm):
        scale, shift = batchnorm_affine(layer)
        return lambda x: x * _channel(scale, x) + _channel(shift, x)
    raise TypeError(f"no functional form for layer type {type(layer).__name__}")


__all__ = [
    "ACTIVATIONS",
    "AVERAGE_POOLS",
    "IDENTITIES",
    "MAX_POOLS",
    "Affine",
    "Convolution",
    "LayerInfo",
    "functional",
    "max_pool2d",
    "per_cell",
]
