"""BatchNorm canonization: fold every BatchNorm into a neighbouring convolution/Linear so LRP sees affine layers.

With ``s = gamma / sqrt(var + eps)`` and ``shift = beta - s * mu`` (running statistics: eval semantics):

* Linear -> BN: ``W' = diag(s) W``, ``b' = s b + shift``.
* BN -> Linear: ``W' = W diag(s)``, ``b' = W shift + b``. For a convolution the folded shift is a constant bias only
  when the convolution has no padding: zero padding pads the BN *output* with zeros, so the border outputs need a
  spatial bias map (Pahde et al. 2023, appendix A: :func:`spatial_bias`). Modules cannot hold such a bias, so
  :func:`canonize` refuses padded convolutions after a BatchNorm; attrlab's traced LRP engine folds them.
* BN -> ReLU -> Linear: ``ReLU(BN(x)) = BN(ThreshReLU(x))`` with ``ThreshReLU(x) = x`` where ``BN(x) > 0`` and
  ``t = mu - beta sqrt(var + eps) / gamma`` (the zero of the BN) elsewhere; the BN then folds into the Linear.

Merges happen between neighbours inside one ``nn.Sequential`` (the order of its children), the first applicable
option in the order above. BatchNorms become ``nn.Identity`` so every layer name stays valid.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
Convolution = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AffineLayer = (*Convolution, nn.Linear)


class SpatialBiasError(ValueError):
    """A BatchNorm before a padded convolution: its fold needs a spatial bias map, which a module cannot hold."""


def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """The per-channel (scale, shift) of ``bn`` in eval mode: ``bn(x) = scale * x + shift``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"cannot canonize {type(bn).__name__} without running statistics (track_running_stats=False)")
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _channel_view(t: Tensor, dims: int, axis: int) -> Tensor:
    shape = [1] * dims
    shape[axis] = -1
    return t.reshape(shape)


def fold_into_previous(layer: nn.Module, weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor):
    """(weight, bias) of ``layer`` followed by a BatchNorm with (scale, shift); ``bias`` may be a spatial map
    ``(out_channels, *spatial)``, see :func:`spatial_bias`."""
    new_weight = weight * _channel_view(scale, weight.dim(), 0)
    if bias is None:
        return new_weight, shift
    view = (lambda t: t) if bias.dim() == 1 else (lambda t: _channel_view(t, bias.dim(), 0))
    return new_weight, view(scale) * bias + view(shift)


def is_padded(layer: nn.Module) -> bool:
    """True for a convolution that pads its input (with zeros: the only mode LRP takes)."""
    if not isinstance(layer, Convolution):
        return False
    padding = layer.padding
    if isinstance(padding, str):
        return padding == "same" and any(k > 1 for k in layer.kernel_size)
    return any(p != 0 for p in padding)


def _per_input_channel(layer: nn.Module, weight: Tensor, values: Tensor) -> Tensor:
    """``values`` (one per input channel of ``layer``) laid out like ``weight`` (out, in / groups, *kernel)."""
    groups = layer.groups if isinstance(layer, Convolution) else 1
    out, per_group = weight.shape[0], weight.shape[1]
    grouped = values.view(groups, 1, per_group).expand(groups, out // groups, per_group).reshape(out, per_group)
    return grouped.view(out, per_group, *[1] * (weight.dim() - 2))


def fold_into_next(
    layer: nn.Module,
    weight: Tensor,
    bias: Tensor | None,
    scale: Tensor,
    shift: Tensor,
    name: str,
    spatial: bool = False,
):
    """(weight, bias) of ``layer`` preceded by a BatchNorm with (scale, shift).

    A padded convolution pads the BatchNorm's *output* with zeros, so the folded shift reaches the border outputs
    only through the taps inside the image: the folded bias is a map, not one number per channel. With
    ``spatial=False`` that raises an error (a module cannot hold such a bias); with ``spatial=True`` the return
    value is ``(weight, bias, shift)``: for a padded convolution the bias is the layer's own and ``shift`` is what
    :func:`spatial_bias` builds the map from once the input size is known; otherwise the folded bias and ``None``.
    """
    padded = is_padded(layer)
    if padded and not spatial:
        raise SpatialBiasError(
            f"cannot fold a BatchNorm into the padded convolution {name!r}: the folded bias varies at the border "
            "(a spatial bias map, Pahde et al. 2023 appendix A, which only attrlab's traced LRP engine holds); put "
            "the BatchNorm after the convolution or use padding=0"
        )
    if isinstance(layer, Convolution):
        new_weight = weight * _per_input_channel(layer, weight, scale)
        folded = (weight * _per_input_channel(layer, weight, shift)).flatten(1).sum(1)
    else:
        new_weight = weight * scale
        folded = weight @ shift
    if spatial and padded:
        return new_weight, bias, shift
    new_bias = folded if bias is None else bias + folded
    return (new_weight, new_bias, None) if spatial else (new_weight, new_bias)


def spatial_bias(layer: Any, weight: Tensor, bias: Tensor | None, shift: Tensor, input_shape) -> Tensor:
    """The bias map of a padded convolution with a BatchNorm folded into it (Pahde et al. 2023, appendix A).

    The original layer computes ``conv(pad0(s x + t))`` with ``pad0`` zero padding of the BatchNorm's output; that
    is ``conv(pad0(s x)) + conv(pad0(t 1))``: the canonized layer has weight ``W diag(s)`` and the bias map
    ``B = conv_W(pad0(t 1)) + b``, the original convolution applied to a constant image equal to the BatchNorm's
    shift (interior outputs get the usual ``W t + b``; border outputs miss the taps that fall on the padding).

    Parameters
    ----------
    layer : nn.Conv1d, nn.Conv2d or nn.Conv3d
        The padded convolution (its stride, padding, dilation and groups are used).
    weight : torch.Tensor
        Its original weight (before the fold).
    bias : torch.Tensor or None
        Its original bias.
    shift : torch.Tensor
        The BatchNorm's shift per input channel.
    input_shape : tuple of int
        The shape of the convolution's input ``(N, C, *spatial)``.

    Returns
    -------
    torch.Tensor
        ``(out_channels, *output spatial shape)``.
    """
    constant = shift.view(1, -1, *[1] * (len(input_shape) - 2)).expand(1, *input_shape[1:])
    convolve = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(input_shape) - 2]
    return convolve(constant, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)[0]


class ThreshReLU(nn.Module):
    """``ReLU(BN(x))`` rewritten as ``BN(ThreshReLU(x))``: ``x`` where ``scale * x + shift > 0``, else the BN's zero."""

    scale: Tensor  # buffers (register_buffer in __init__)
    shift: Tensor

    def __init__(self, scale: Tensor, shift: Tensor):
        super().__init__()
        if bool((scale == 0).any()):
            raise ValueError("ThreshReLU needs a BatchNorm with non-zero scale in every channel")
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = _channel_view(self.scale, x.dim(), 1), _channel_view(self.shift, x.dim(), 1)
        return torch.where(scale * x + shift > 0, x, -shift / scale)


def _rebuild(layer: nn.Module, weight: Tensor, bias: Tensor) -> nn.Module:
    """A new convolution / Linear like ``layer`` holding (weight, bias); no random initialisation (the RNG is untouched)."""
    if isinstance(layer, Convolution):
        new = skip_init(
            type(layer),
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=True,
            padding_mode=layer.padding_mode,
            device=weight.device,
            dtype=weight.dtype,
        )
    else:
        new = skip_init(
            nn.Linear, layer.in_features, layer.out_features, bias=True, device=weight.device, dtype=weight.dtype
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.weight.requires_grad)
    new.train(layer.training)
    return new


def _identity_like(module: nn.Module) -> nn.Identity:
    identity = nn.Identity()
    identity.train(module.training)
    return identity


def canonize_layers(layers: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """The sequence ``layers`` (name, module) with every BatchNorm folded; untouched modules are the same objects."""
    if not any(isinstance(module, BatchNorm) for _, module in layers):
        return list(layers)
    out: list[tuple[str, nn.Module]] = []
    pending: dict[int, tuple[Tensor, Tensor]] = {}  # index of a later affine layer -> BN to fold into it
    for index, (name, module) in enumerate(layers):
        if isinstance(module, BatchNorm):
            scale, shift = batchnorm_affine(module)
            nxt = layers[index + 1][1] if index + 1 < len(layers) else None
            after = layers[index + 2][1] if index + 2 < len(layers) else None
            if out and isinstance(out[-1][1], AffineLayer):
                previous_name, previous = out[-1][0], out[-1][1]  # (the isinstance check above narrows out[-1][1])
                weight, bias = fold_into_previous(previous, previous.weight.detach(), _bias(previous), scale, shift)
                out[-1] = (previous_name, _rebuild(previous, weight, bias))
            elif isinstance(nxt, AffineLayer):
                pending[index + 1] = (scale, shift)
            elif isinstance(nxt, nn.ReLU) and isinstance(after, AffineLayer):
                pending[index + 2] = (scale, shift)
            else:
                raise ValueError(
                    f"cannot canonize BatchNorm {name!r}: it needs a Conv2d/Linear right before it, right after it, "
                    "or after a ReLU right after it"
                )
            out.append((name, _identity_like(module)))
        elif isinstance(module, nn.ReLU) and index + 1 in pending and isinstance(layers[index - 1][1], BatchNorm):
            scale, shift = pending[index + 1]
            relu = ThreshReLU(scale, shift)
            relu.train(module.training)
            out.append((name, relu))
        elif index in pending:
            scale, shift = pending[index]
            module = cast("nn.Conv2d | nn.Linear", module)  # pending holds only the indices of convolutions / Linears
            weight, bias = fold_into_next(module, module.weight.detach(), _bias(module), scale, shift, name)
            out.append((name, _rebuild(module, weight, bias)))
        else:
            out.append((name, module))
    return out


def _bias(module: Any) -> Tensor | None:
    return None if module.bias is None else module.bias.detach()


def canonize(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into its neighbours (the original is left untouched).

    In eval mode the copy computes the same outputs as the original up to float rounding.
    """
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for name, new in canonize_layers(children):
                if new is not module._modules[name]:
                    module._modules[name] = new
    return model


__all__ = [
    "AffineLayer",
    "BatchNorm",
    "Convolution",
    "SpatialBiasError",
    "ThreshReLU",
    "batchnorm_affine",
    "canonize",
    "canonize_layers",
    "fold_into_next",
    "fold_into_previous",
    "is_padded",
    "spatial_bias",
]
