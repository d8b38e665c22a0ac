"""How LRP sees a layer: the functional Conv2d/Linear evaluator (:class:`Affine`), parameter-free layers as
functional calls, and what the engine knows about a layer's surroundings (:class:`LayerInfo`).

Rules never call a module (so module hooks never run and the train/eval flag does not matter): they evaluate a
Conv2d or Linear through :class:`Affine`, with its own or modified weights, and its transpose through
``aten.convolution_backward`` (one call for stacked weight blocks, without the expanded dummy input that
``torch.nn.grad.conv2d_input`` would copy). Parameter-free layers (ReLU, pooling, reshapes, dropout) are evaluated by
:func:`functional`. Grid-cell layers (:class:`~attrlab.cells.Cellwise`) are applied to each cell alone.
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


class Affine:
    """A Conv2d or Linear layer as the rules see it: (possibly canonized) weight and bias and functional calls.

    Parameters
    ----------
    module : nn.Conv2d or nn.Linear
        The layer (zero padding, ``groups=1``); a :class:`~attrlab.cells.Cellwise` convolution runs per grid cell.
    weight : torch.Tensor, optional
        A weight to use instead of the module's own (read detached).
    bias : torch.Tensor, optional
        The bias going with ``weight`` (ignored without ``weight``: the module's own is used).
    """

    def __init__(self, module: nn.Module, weight: Tensor | None = None, bias: Tensor | None = None):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"Affine wraps Conv2d or Linear layers, not {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"LRP supports zero-padded convolutions only, got padding_mode={module.padding_mode!r}")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"LRP supports convolutions with groups=1 only, got groups={module.groups}")
        self.module = module
        self.weight = (module.weight if weight is None else weight).detach()
        if weight is None:
            bias = module.bias
        self.bias = None if bias is None else bias.detach()
        self.padding = _numeric_padding(module) if isinstance(module, nn.Conv2d) else None
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
        if self.cellwise is not None:
            cells = self.cellwise
            conv = cast(nn.Conv2d, m)  # Affine wraps Conv2d/Linear only: a Cellwise one is a CellwiseConv2d
            padding = cast("tuple[int, int]", self.padding)
            return cells.merge(F.conv2d(cells.split(x), weight, bias, conv.stride, padding, conv.dilation))
        if isinstance(m, nn.Conv2d):
            padding = cast("tuple[int, int]", self.padding)  # set for every Conv2d in __init__
            return F.conv2d(x, weight, bias, m.stride, padding, m.dilation)
        return F.linear(x, weight, bias)

    def transpose(self, grad: Tensor, weight: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """``weight^T grad``: the gradient of ``layer(x, weight)`` w.r.t. ``x`` (weights may be stacked along dim 0,
        with ``grad`` stacked along its channels, to sum several terms in one call)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            shape = (input_shape[0], weight.shape[1], *input_shape[2:])
            cells = self.cellwise
            if cells is not None:
                grad, shape = cells.split(grad), cells.cell_shape(shape)
            # torch.nn.grad.conv2d_input passes an expanded dummy input that convolution_backward then copies in
            # full; an uninitialised dummy in the gradient's memory layout avoids that copy (only its shape is read)
            channels_last = grad.is_contiguous(memory_format=torch.channels_last)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            dummy = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
            result = torch.ops.aten.convolution_backward(
                grad, dummy, weight, None, m.stride, self.padding, m.dilation, False, [0, 0], 1, [True, False, False]
            )[0]
            return result if cells is None else cells.merge(result)
        return grad @ weight


def _numeric_padding(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        if any(s != 1 for s in m.stride):
            raise ValueError("padding='same' needs stride 1")
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(total % 2 for total in totals):
            raise ValueError(f"padding='same' with an even kernel {m.kernel_size} is not supported by attrlab's LRP")
        return cast("tuple[int, int]", tuple(total // 2 for total in totals))
    return cast("tuple[int, int]", tuple(m.padding))


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


def _channel(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast over ``x`` (N, C, ...)."""
    return t.view(-1, *[1] * (x.dim() - 2))


def functional(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """The eval-mode forward of a parameter-free layer as a functional call (module hooks never run).

    Parameters
    ----------
    layer : nn.Module
        ReLU, max / average / adaptive average pooling, Flatten, Dropout, Identity, a canonization ThreshReLU or
        a BatchNorm (running statistics: ``scale * x + shift`` per channel).

    Returns
    -------
    callable
        ``x -> layer(x)`` in eval semantics; other layer types raise a ``TypeError`` naming them.
    """
    if isinstance(layer, nn.ReLU):
        return F.relu
    if isinstance(layer, nn.MaxPool2d):
        return per_cell(
            layer,
            lambda x: F.max_pool2d(
                x, layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode
            ),
        )
    if isinstance(layer, nn.AvgPool2d):
        return lambda x: F.avg_pool2d(
            x,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.ceil_mode,
            layer.count_include_pad,
            layer.divisor_override,
        )
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return lambda x: F.adaptive_avg_pool2d(x, layer.output_size)
    if isinstance(layer, nn.Flatten):
        return lambda x: x.flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return lambda x: x  # dropout is the identity in eval semantics
    if isinstance(layer, ThreshReLU):
        return layer.forward  # attrlab's own module (canonization), called without hooks
    if isinstance(layer, BatchNorm):
        scale, shift = batchnorm_affine(layer)
        return lambda x: x * _channel(scale, x) + _channel(shift, x)
    raise TypeError(f"no functional form for layer type {type(layer).__name__}")


__all__ = ["Affine", "LayerInfo", "functional", "per_cell"]
