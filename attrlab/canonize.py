"""BatchNorm canonization: fold every BatchNorm into a neighbouring Conv2d/Linear so LRP sees plain affine layers.

With ``s = gamma / sqrt(var + eps)`` and ``shift = beta - s * mu`` (running statistics: eval semantics):

* Linear -> BN: ``W' = diag(s) W``, ``b' = s b + shift``.
* BN -> Linear: ``W' = W diag(s)``, ``b' = W shift + b``. For a convolution the folded shift is a constant bias only
  when the convolution has no padding (zero padding pads the BN *output* with zeros, so the border would need a
  spatial bias); padded convolutions after a BatchNorm are refused with an error (a documented limit).
* BN -> ReLU -> Linear: ``ReLU(BN(x)) = BN(ThreshReLU(x))`` with ``ThreshReLU(x) = x`` where ``BN(x) > 0`` and
  ``t = mu - beta sqrt(var + eps) / gamma`` (the zero of the BN) elsewhere; the BN then folds into the Linear.

Merges happen between neighbours inside one ``nn.Sequential`` (the order of its children), the first applicable
option in the order above. BatchNorms become ``nn.Identity`` so every layer name stays valid.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import skip_init

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)
AffineLayer = (nn.Conv2d, nn.Linear)


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
    """(weight, bias) of ``layer`` followed by a BatchNorm with (scale, shift)."""
    new_weight = weight * _channel_view(scale, weight.dim(), 0)
    new_bias = shift if bias is None else scale * bias + shift
    return new_weight, new_bias


def fold_into_next(layer: nn.Module, weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor, name: str):
    """(weight, bias) of ``layer`` preceded by a BatchNorm with (scale, shift)."""
    if isinstance(layer, nn.Conv2d):
        padding = layer.padding
        padded = padding not in ("valid",) and any(p != 0 for p in (padding if not isinstance(padding, str) else (1,)))
        if padded:
            raise ValueError(
                f"cannot fold a BatchNorm into the padded convolution {name!r}: the folded bias would vary at the "
                "border (put the BatchNorm after the convolution, or use padding=0)"
            )
        if layer.groups != 1:
            raise ValueError(f"cannot fold a BatchNorm into the grouped convolution {name!r}")
        new_weight = weight * _channel_view(scale, weight.dim(), 1)
        folded = (weight * _channel_view(shift, weight.dim(), 1)).sum(dim=(1, 2, 3))
    else:
        new_weight = weight * scale
        folded = weight @ shift
    return new_weight, folded if bias is None else bias + folded


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
    """A new Conv2d/Linear like ``layer`` holding (weight, bias); no random initialisation (the RNG is untouched)."""
    if isinstance(layer, nn.Conv2d):
        new = skip_init(
            nn.Conv2d,
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
            module = cast("nn.Conv2d | nn.Linear", module)  # pending holds only the indices of Conv2d/Linear layers
            weight, bias = fold_into_next(module, module.weight.detach(), _bias(module), scale, shift, name)
            out.append((name, _rebuild(module, weight, bias)))
        else:
            out.append((name, module))
    return out


def _bias(module: nn.Conv2d | nn.Linear) -> Tensor | None:
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
    "ThreshReLU",
    "batchnorm_affine",
    "canonize",
    "canonize_layers",
    "fold_into_next",
    "fold_into_previous",
]
