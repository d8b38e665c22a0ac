"""Autograd primitives shared by every gradient-based method, LRP and the CAM methods: target gradients, batched.

``target_gradient`` differentiates the selected logits with one backward pass per target column (images are
independent in eval mode, so the gradient of a batch's summed logits is each image's own gradient);
``layer_gradient`` cuts the model at a layer, runs the part below without a graph and differentiates only the part
above. captum keeps the same primitives in ``captum/_utils/gradient.py``; keeping them here means LRP and the CAM
methods do not import the gradient methods.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
from torch import nn

from .base import Layer, Target, per_target, resolve_target, stack_targets, target_columns
from .layer_split import ModelSplit, Substitutes
from .model_state import eval_semantics


def target_gradient(
    logits: torch.Tensor, target: torch.Tensor, wrt: torch.Tensor, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """d logits[i, target[i]] / d wrt[i] for every row i, from one backward pass of the selected logits' sum.

    Parameters
    ----------
    logits : torch.Tensor
        (N, classes) logits with a graph back to ``wrt``.
    target : torch.Tensor
        Resolved targets: (N,) class indices, or (N, T) for T targets per row (one backward pass per column through
        the same graph, ``retain_graph`` between them).
    wrt : torch.Tensor
        The tensor to differentiate with respect to (inputs or a layer's activation), row i belonging to logits row i.
    scale : torch.Tensor, optional
        Constants shaped like ``target`` multiplying each selected logit's gradient (LRP's ``start="one"``).

    Returns
    -------
    torch.Tensor
        ``(N, *wrt.shape[1:])``, or ``(N, T, *wrt.shape[1:])`` for (N, T) targets. Only ``wrt``'s gradient is
        computed: no parameter's ``.grad`` is touched.
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


class SplitGradient(NamedTuple):
    """What one gradient pass through a :class:`~attrlab.attribution.layer_split.ModelSplit` produced."""

    activation: torch.Tensor  #: the (detached) activation at the layer, the rows themselves for the input
    gradient: torch.Tensor  #: d logits[i, target[i]] / d activation[i]; (rows, T, ...) for (rows, T) targets
    logits: torch.Tensor  #: (rows, classes), detached
    target: torch.Tensor  #: the resolved targets, (rows,) or (rows, T)


def split_gradient(
    split: ModelSplit,
    rows: torch.Tensor,
    inputs: torch.Tensor,
    target: Target,
    *,
    at_layer: bool = False,
    resolved: bool = False,
) -> SplitGradient:
    """One batched gradient pass: the head without a graph, the tail with one, then :func:`target_gradient`.

    Parameters
    ----------
    split : ModelSplit
        The model cut at the layer the gradient is taken at.
    rows : torch.Tensor
        The rows of this pass: inputs for the head (noisy copies, a chunk of images), or activations at the layer
        when ``at_layer`` (interpolated or perturbed activations).
    inputs : torch.Tensor
        The N images ``rows`` come from (only the hook fallback of the split reads them; ``rows`` may hold k
        block-major copies of them).
    target : Target
        What to differentiate: anything :func:`~attrlab.attribution.base.resolve_target` takes, or, with
        ``resolved=True``, an already resolved (rows,) or (rows, T) long tensor used as is (no check, no host sync).
    at_layer : bool
        ``rows`` are activations at the layer: the head is skipped.
    resolved : bool
        ``target`` is already resolved.

    Returns
    -------
    SplitGradient
        Activation, gradient, logits and resolved targets of the pass; the caller runs it in eval semantics.
    """
    if not at_layer:
        with torch.no_grad():
            rows = split.head(rows)
    activation = rows.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = split.tail(activation, inputs)
        # resolved=True: target is already the resolved long tensor (see the docstring)
        target_index = cast(torch.Tensor, target) if resolved else resolve_target(target, logits)
        gradient = target_gradient(logits, target_index, activation)
    return SplitGradient(activation.detach(), gradient, logits.detach(), target_index)


def layer_gradient(
    model: nn.Module, inputs: torch.Tensor, target: Target, layer: Layer, substitutes: Substitutes | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The activation at ``layer``, the gradient of each image's target logit w.r.t. it, the logits and the targets.

    Parameters
    ----------
    model : nn.Module
        The model (run in eval semantics; it is left as it was).
    inputs : torch.Tensor
        A batch (N, ...).
    target : Target
        See :func:`~attrlab.attribution.base.resolve_target`.
    layer : Layer
        ``None`` or ``"input"`` for the input, else a layer name or module
        (:func:`~attrlab.attribution.base.resolve_layer`).
    substitutes : Substitutes, optional
        Module types whose forward is replaced (Guided Backprop's ReLU).

    Returns
    -------
    tuple of torch.Tensor
        ``(activation, gradient, logits, target)``. The part below the layer runs without a graph; for (N, T)
        targets the gradient is (N, T, ...) and the activation is returned as (N, 1, ...), so that the two broadcast.
    """
    split = ModelSplit(model, layer, substitutes)
    with eval_semantics(model):
        activation, gradient, logits, target_index = split_gradient(split, inputs, inputs, target)
    if target_index.dim() == 2:
        activation = activation[:, None]
    return activation, gradient, logits, target_index


__all__ = ["SplitGradient", "layer_gradient", "split_gradient", "target_gradient"]
