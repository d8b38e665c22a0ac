"""Autograd primitives shared by every gradient-based method, LRP and the CAM methods: target gradients, batched.

``target_gradient`` differentiates the selected logits with one backward pass per target column (images are
independent in eval mode, so the gradient of a batch's summed logits is each image's own gradient);
``layer_gradient`` cuts the model at a layer, runs the part below without a graph and differentiates only the part
above. captum keeps the same primitives in ``captum/_utils/gradient.py``; keeping them here means LRP and the CAM
methods do not import the gradient methods.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Layer, Target, per_target, resolve_target, stack_targets, target_columns
from .layer_split import ModelSplit, Substitutes
from .model_state import eval_semantics


def target_gradient(
    logits: torch.Tensor, target: torch.Tensor, wrt: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """d logits[i, target[i]] / d wrt[i] for every row i, from one backward pass of the selected logits' sum.

    An (N, T) ``target`` gives ``(N, T, *wrt.shape[1:])``: one backward pass per column through the same graph.
    ``scale`` (constants shaped like the resolved target) multiplies each selected logit's gradient.
    """
    columns = target_columns(target)
    scales = None if scale is None else target_columns(scale)
    count = columns.shape[1]
    gradients = []
    for column in range(count):
        selected = logits.gather(1, columns[:, column : column + 1])
        if scales is not None:
            selected = selected * scales[:, column : column + 1]
        selected = selected.sum()
        (gradient,) = torch.autograd.grad(selected, wrt, retain_graph=column < count - 1)
        gradients.append(gradient)
    return per_target(stack_targets(gradients), target)


def layer_gradient(
    model: nn.Module, inputs: torch.Tensor, target: Target, layer: Layer, substitutes: Substitutes | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The activation at ``layer`` (the inputs for ``None``), the gradient of each image's target logit w.r.t. it,
    the logits and the resolved targets.

    The part below the layer runs without a graph; for (N, T) targets the gradient is (N, T, ...) and the activation
    is returned as (N, 1, ...), so that the two broadcast.
    """
    split = ModelSplit(model, layer, substitutes)
    with eval_semantics(model):
        with torch.no_grad():
            activation = split.head(inputs)
        activation = activation.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = split.tail(activation, inputs)
            target_index = resolve_target(target, logits)
            gradient = target_gradient(logits, target_index, activation)
    activation = activation.detach()
    if target_index.dim() == 2:
        activation = activation[:, None]
    return activation, gradient, logits.detach(), target_index


__all__ = ["layer_gradient", "target_gradient"]
