"""X-DNNs (Hesse et al. 2021): bias-free copies of models, on which Integrated Gradients is Input x Gradient.

A network without additive biases built from ReLUs, max- and average-pools and linear layers is positively homogeneous
of degree 1: ``f(a x) = a f(x)`` for ``a >= 0``. Along the straight path from the zero baseline every unit keeps its
on/off state, so the gradient is constant on the path and Integrated Gradients from zero reduces exactly to
``x * df/dx``: one forward and one backward pass ("exact IntGrad in one pass", which the model-guidance work of the
thesis' chapter 7 trains with).

:func:`remove_biases` returns a copy of a model with every bias removed: ``bias=None`` on convolutions and dense
layers, and each BatchNorm replaced by :class:`BiasFreeBatchNorm` (no shift beta, no mean subtraction: in eval mode a
per-channel scale ``gamma / sqrt(running_var + eps)``). Modules with other additive terms (LayerNorm, GroupNorm,
anything else holding a ``bias``) raise an error naming them rather than leaving a bias behind.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LAYERS_WITH_OPTIONAL_BIAS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class BiasFreeBatchNorm(nn.Module):
    """BatchNorm without the shift and without centring: ``y = gamma * x / sqrt(var + eps)``, per channel.

    In training mode ``var`` is the batch variance over every dimension but the channels (and the running variance
    is updated as :class:`torch.nn.BatchNorm2d` updates it); in eval mode it is the running variance, so the layer is
    a fixed per-channel scale.
    """

    running_var: torch.Tensor  # a buffer (register_buffer in __init__)

    def __init__(self, source: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.num_features, self.eps = source.num_features, source.eps
        self.momentum = source.momentum if source.momentum is not None else 0.1
        weight = source.weight.detach().clone() if source.weight is not None else torch.ones(source.num_features)
        self.weight = nn.Parameter(weight)
        running_var = source.running_var
        self.register_buffer(
            "running_var", running_var.clone() if running_var is not None else torch.ones(source.num_features)
        )
        self.training = source.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if self.training:
            dims = [d for d in range(x.ndim) if d != 1]
            variance = x.var(dim=dims, unbiased=False)
            with torch.no_grad():
                count = x.numel() // x.shape[1]
                unbiased = variance * count / max(1, count - 1)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased)
        else:
            variance = self.running_var
        return x * (self.weight / torch.sqrt(variance + self.eps)).view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def remove_biases(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without any bias (see the module docstring); the original is left unchanged.

    Parameters
    ----------
    model : nn.Module
        The model; its convolutions and dense layers lose their biases, its BatchNorms become
        :class:`BiasFreeBatchNorm` (same name, so layer names stay valid).

    Returns
    -------
    nn.Module
        The bias-free copy, in the same train/eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, _BATCH_NORMS):
        return BiasFreeBatchNorm(model)
    result = copy.deepcopy(model)
    replacements = []
    for name, module in result.named_modules():
        if isinstance(module, _BATCH_NORMS):
            replacements.append(name)
        elif isinstance(module, _LAYERS_WITH_OPTIONAL_BIAS):
            if module.bias is not None:
                module.bias = None  # nn.Module.__setattr__ turns the parameter slot into None
        elif isinstance(getattr(module, "bias", None), torch.Tensor):
            raise ValueError(
                f"cannot remove the bias of layer {name!r} ({type(module).__name__}): X-DNNs support convolutions, "
                "dense layers and BatchNorm"
            )
    for name in replacements:
        parent_name, _, child = name.rpartition(".")
        parent = result.get_submodule(parent_name) if parent_name else result
        setattr(parent, child, BiasFreeBatchNorm(getattr(parent, child)))
    return result


def has_bias(model: nn.Module) -> bool:
    """Whether any sub-module of ``model`` has a bias tensor or is a BatchNorm (whose centring is a bias)."""
    return any(
        isinstance(module, _BATCH_NORMS) or isinstance(getattr(module, "bias", None), torch.Tensor)
        for module in model.modules()
    )


__all__ = ["BiasFreeBatchNorm", "has_bias", "remove_biases"]
