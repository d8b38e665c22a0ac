"""Explanations differentiable in the model's parameters: maps a loss can train (model guidance, thesis ch. 7).

:func:`explain_for_training` computes the (N, h, w) map of one logit per image at the input or at a layer, with
``create_graph=True`` so that a loss on the map back-propagates into every parameter (those below the layer too: the
activation is part of the map). The registered methods (:func:`attrlab.attribution.make_method`) cannot serve: they
run the part below the layer without a graph, detach their results and restore the model's train/eval flag, all of
which is right for explaining and wrong for training. The maps equal theirs (tested): ``"ixg"`` is
``input_x_gradient``, ``"gradcam"`` is ``gradcam`` with ``relu=True``, ``"bcos"`` is ``bcos``, each summed over
channels.

* ``"ixg"``: ``a ⊙ d y_t / d a`` at the input or a layer's activation ``a``.
* ``"ig_xdnn"``: Integrated Gradients from the zero baseline on an X-DNN (:mod:`attrlab.models.xdnn`): such a
  bias-free network is positively homogeneous, so IG equals Input x Gradient exactly, in one pass (Hesse et al. 2021);
  a model with an additive bias is refused, since there the one-pass map is not IG.
* ``"gradcam"``: ``ReLU(Σ_c mean_hw(d y_t / d a_c) a_c)`` at the layer.
* ``"bcos"``: the B-cos contributions ``W(a)^T ⊙ a`` (thesis eq. 6.16). The registered method gets ``W(a)`` as a
  gradient with the dynamic scale factors *detached* (:func:`attrlab.interpretable.dynamic.dynamic_linear`), which
  also cuts the factors' dependence on the parameters: a loss on that map would get an incomplete gradient. Here
  (the twice-differentiable form of thesis appendix D.4.2) the network runs as two streams: the *real* stream
  computes every layer's scale factor as a function of the parameters (its input detached from the explained
  activation), and the *linear* stream applies those factors to a copy ``z`` of the activation; ``W(a)^T e_t`` is
  the gradient of the linear stream's logit w.r.t. ``z``, and ``create_graph`` keeps its full dependence on the
  parameters, through the factors too. ``torch.autograd.gradcheck`` against finite differences in a parameter
  verifies it. The two streams cost a second forward pass through the part above the layer.

The model runs in the mode it is in (a training step explains in training mode, with the batch's normalisation
statistics); nothing is registered on it and its ``.grad`` fields are untouched (only ``torch.autograd.grad``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..interpretable.bcos import COS_EPS, NORM_EPS, BcosConv2d, BcosLinear, BiasFreeNorm
from ..interpretable.dynamic import PairEncoding
from .base import INPUT, named_layers, resolve_layer, resolve_target
from .layer_split import ModelSplit, _flatten_sequential

#: the methods of :func:`explain_for_training`
TRAINING_METHODS = ("ixg", "ig_xdnn", "gradcam", "bcos")
#: modules the linear stream of ``"bcos"`` passes through unchanged (they are linear maps of their input)
LINEAR_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Unflatten, nn.Identity)


def _check_target(target: torch.Tensor, batch: int) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a LongTensor of N = {batch} class indices, not {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype == torch.bool or target.dim() != 1 or len(target) != batch:
        raise ValueError(
            f"target must be a 1-D integer tensor of N = {batch} class indices, got dtype {target.dtype} and "
            f"shape {tuple(target.shape)}"
        )
    return target.long()


def _selected_gradient(
    logits: torch.Tensor, target: torch.Tensor, wrt: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """d logits[i, target[i]] / d wrt[i] for every row (images are independent: one backward of the sum)."""
    target = resolve_target(target, logits)  # checks the class range
    selected = logits.gather(1, target[:, None]).sum()
    (gradient,) = torch.autograd.grad(selected, wrt, create_graph=create_graph)
    return gradient


def _activation(model: nn.Module, x: torch.Tensor, layer: str | nn.Module) -> tuple[ModelSplit, torch.Tensor]:
    """The model split at ``layer`` and the activation there, with its graph to the parameters below it."""
    split = ModelSplit(model, layer)
    if split.layer is None:
        activation = x if x.requires_grad else x.detach().requires_grad_(True)
    else:
        activation = split.head(x)
        if not activation.requires_grad:  # nothing below the layer is trainable: the activation is a leaf
            activation = activation.detach().requires_grad_(True)
    return split, activation


def _spatial(activation: torch.Tensor, method: str, layer: str | nn.Module) -> None:
    if activation.dim() != 4:
        raise ValueError(
            f"method {method!r} needs a spatial layer with output (N, C, h, w); layer {layer!r} gives shape "
            f"{tuple(activation.shape)}"
        )


def _gradient_map(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | nn.Module, cam: bool, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    split, activation = _activation(model, x, layer)
    _spatial(activation, "gradcam" if cam else "ixg", layer)
    logits = split.tail(activation, x)
    gradient = _selected_gradient(logits, target, activation, create_graph)
    if cam:
        return (gradient.mean((-2, -1), keepdim=True) * activation).sum(1).clamp(min=0), logits
    return (activation * gradient).sum(1), logits


def _has_bias(model: nn.Module) -> bool:
    from ..models.xdnn import has_bias

    return has_bias(model)


# ----------------------------------------------------------------------------- the two-stream B-cos network
def _bcos_layer(layer: BcosConv2d | BcosLinear, a: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One B-cos layer on the real stream ``a`` and the linear stream ``z`` (the real stream's scale factors)."""
    weight = layer.unit_weight()
    if isinstance(layer, BcosConv2d):

        def linear_map(v: torch.Tensor) -> torch.Tensor:
            return F.conv2d(v, weight, stride=layer.stride, padding=layer.padding)

        norm_squared = layer.patch_norm_squared(a)
    else:

        def linear_map(v: torch.Tensor) -> torch.Tensor:
            return F.linear(v, weight)

        norm_squared = a.pow(2).sum(-1, keepdim=True)
    linear_a, linear_z = linear_map(a), linear_map(z)
    # the same factor expressions as BcosConv2d.bcos, on the real stream, kept in the graph
    if layer.b == 2.0:
        factor = linear_a.abs() * (norm_squared + NORM_EPS).rsqrt()
    elif layer.b != 1.0:
        factor = (linear_a * (norm_squared + NORM_EPS).rsqrt()).abs().add(COS_EPS).pow(layer.b - 1.0)
    else:
        factor = torch.ones_like(linear_a)
    out_a, out_z = linear_a * factor, linear_z * factor
    if layer.max_out > 1:  # the linear stream takes the unit the real stream's MaxOut picked
        grouped = out_a.unflatten(1, (-1, layer.max_out))
        pick = grouped.argmax(2, keepdim=True)
        out_a = grouped.gather(2, pick).squeeze(2)
        out_z = out_z.unflatten(1, (-1, layer.max_out)).gather(2, pick).squeeze(2)
    if layer.scale != 1.0:
        out_a, out_z = out_a * layer.scale, out_z * layer.scale
    return out_a, out_z


def _norm_layer(layer: BiasFreeNorm, a: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A bias-free normalisation: the real stream as the layer computes it, the linear stream with its factor."""
    out_a = layer(a)  # (updates the running variance in training mode, as the layer does)
    if layer.uses_batch and not layer.training:
        variance = layer.running_var
    else:
        variance = a.var(dim=layer.dims, keepdim=True, unbiased=False)
    if layer.centred:  # centring within an image is linear in it
        z = z - z.mean(dim=layer.dims, keepdim=True)
    return out_a, z * (variance + layer.eps).rsqrt() * layer.weight.view(1, -1, 1, 1)


def _bcos_map(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, layer: str | nn.Module, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    flat = _flatten_sequential(model)
    if flat is None:
        raise ValueError(
            f"method 'bcos' needs an nn.Sequential dynamic-linear network (B-cos), got {type(model).__name__}"
        )
    leaves, cut_after = flat
    start = resolve_layer(model, layer)
    encodings = [module for module in leaves if isinstance(module, PairEncoding)]
    before_encoding = bool(encodings) and isinstance(start, nn.Identity)
    if before_encoding and start is not None:  # an identity named in front of the encoding (the grid wrappers')
        before_encoding = cut_after[id(start)] < cut_after[id(encodings[0])]
    if encodings and (start is None or before_encoding):
        # the input of a B-cos net is explained in the encoding's [u, 1 - u] channels, where the net is linear
        start = encodings[0]
    if start is not None and id(start) not in cut_after:
        raise ValueError(f"method 'bcos' needs a layer of the sequential stack, not one inside a module: {layer!r}")
    cut = 0 if start is None else cut_after[id(start)]
    a = x
    for module in leaves[:cut]:
        a = module(a)
    if not a.requires_grad:
        a = a.detach().requires_grad_(True)
    _spatial(a, "bcos", layer)
    explained = a
    z_leaf = a.detach().requires_grad_(True)
    z = z_leaf
    for module in leaves[cut:]:
        if isinstance(module, (BcosConv2d, BcosLinear)):
            a, z = _bcos_layer(module, a, z)
        elif isinstance(module, BiasFreeNorm):
            a, z = _norm_layer(module, a, z)
        elif isinstance(module, LINEAR_MODULES):
            a, z = module(a), module(z)
        else:
            valid = ", ".join(kind.__name__ for kind in (BcosConv2d, BcosLinear, BiasFreeNorm, *LINEAR_MODULES))
            raise ValueError(
                f"method 'bcos' needs a dynamic-linear network above the layer; {type(module).__name__} is not one "
                f"of {valid}"
            )
    # W(a)^T e_t: the gradient of the linear stream, whose factors keep their graph to the parameters
    gradient = _selected_gradient(z, target, z_leaf, create_graph)
    return (explained * gradient).sum(1), a  # the real stream's output: the model's logits


def explain_for_training(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str = INPUT,
    create_graph: bool = True,
) -> torch.Tensor:
    """The explanation of logit ``target[i]`` of each image, summed over channels, differentiable in the parameters.

    Parameters
    ----------
    model : nn.Module
        The classifier, run in its current train/eval mode; nothing is registered on it.
    x : torch.Tensor
        Images (N, C, H, W) on the model's device.
    target : torch.Tensor
        (N,) integer class indices, one logit per image.
    method : str
        One of :data:`TRAINING_METHODS`: ``"ixg"``, ``"ig_xdnn"`` (bias-free X-DNNs only), ``"gradcam"``,
        ``"bcos"`` (B-cos networks only); see the module docstring.
    layer : str
        ``"input"`` or the name of a module of ``model`` with a spatial output (N, C, h, w).
    create_graph : bool
        Keep the graph of the map (a loss on it then trains the model); ``False`` returns a detached map.

    Returns
    -------
    torch.Tensor
        (N, h, w): the input's or the layer's spatial size. Unknown methods or layers raise a ``ValueError`` naming
        the valid choices.
    """
    return explain_with_logits(model, x, target, method, layer, create_graph)[0]


def explain_with_logits(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    method: str,
    layer: str = INPUT,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`explain_for_training`'s map and the logits of the forward pass it was computed from.

    A guided training step puts its data loss on these logits instead of running the model a second time: the
    forward pass is shared, and one backward pass serves the data loss and the localisation loss.

    Parameters
    ----------
    model, x, target, method, layer, create_graph
        As :func:`explain_for_training`.

    Returns
    -------
    tuple of torch.Tensor
        ``(map, logits)``: the (N, h, w) map and the (N, classes) logits, both with their graph to the parameters
        (both detached when ``create_graph`` is False).
    """
    if method not in TRAINING_METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(TRAINING_METHODS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be an (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not isinstance(layer, (str, nn.Module)):
        raise TypeError(f"layer must be {INPUT!r} or a layer name, not {type(layer).__name__}")
    resolve_layer(model, layer)  # an unknown name raises, listing the valid ones
    target = _check_target(target, x.shape[0])
    if method == "ig_xdnn" and _has_bias(model):
        raise ValueError(
            "method 'ig_xdnn' needs a bias-free X-DNN (attrlab.models.xdnn.remove_biases): with biases the one-pass "
            "map is not Integrated Gradients"
        )
    with torch.enable_grad():
        if method == "bcos":
            result, logits = _bcos_map(model, x, target, layer, create_graph)
        else:
            result, logits = _gradient_map(model, x, target, layer, method == "gradcam", create_graph)
    if not create_graph:
        return result.detach(), logits.detach()
    return result, logits


def valid_layers(model: nn.Module) -> list[str]:
    """The layer names :func:`explain_for_training` accepts on ``model``: ``"input"`` and every sub-module's name."""
    return [INPUT, *named_layers(model)]


__all__ = ["LINEAR_MODULES", "TRAINING_METHODS", "explain_for_training", "explain_with_logits", "valid_layers"]
