"""Starting LRP's backward pass at a layer with a given relevance (the injection that CSC, Sixt et al. 2020, needs).

attrlab's engine propagates a modified gradient ``c`` and reads relevance as ``R = a * c`` (activation x gradient).
To start at layer k with relevance ``R_k = v`` the backward pass is seeded with the gradient ``c_k = v / a_k`` at that
layer's output ``a_k``, set to 0 where ``a_k = 0``. Then ``a_k * c_k = v`` wherever ``a_k != 0`` and every rule below
sees exactly the relevance ``v`` (a rule's backward reads its output gradient only as ``c * a``). Units with
``a_k = 0`` cannot carry relevance under activation x gradient; to make that case vanish, naming a Conv2d / Linear
layer whose ReLU the engine fuses into it injects at the layer's *pre-activation* output ``z_k`` (the step is run
unfused, and ``z_k = 0`` has probability 0), so ``R_k = v`` holds on every unit, the inactive ones included, as in
the paper's matrix form ``r_l = Z_l r_{l+1}``. Naming the ReLU itself injects after it (inactive units get 0).
``tests/test_sanity.py`` checks ``R_k = v`` and that injecting the logit relevance at the output reproduces
:meth:`LRP.attribute`.

All vectors of all images go through one backward pass: stack them along the batch (repeat the images).

Traced models (residual, dense, gated: :mod:`attrlab.lrp.graph`) inject the same way at any node: a convolution /
Linear node is the pre-activation output (the traced engine does not fuse ReLUs), run as if no ReLU followed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .engine import LRP, Step, plan
from .graph import graph_plan, layer_nodes
from .rules import Affine


def _injection_steps(steps: list[Step], layer: str) -> tuple[list[Step], int]:
    """The steps up to the one producing ``layer`` (unfused when ``layer`` is its Conv2d / Linear), and its index."""
    for index, step in enumerate(steps):
        if layer in step.names:
            if len(step.names) > 1 and layer == step.names[0] and isinstance(step.layer, Affine):
                info = dataclasses.replace(step.info, fused_relu=False, output_rectified=False)
                step = Step((layer,), step.layer, step.rule, info)
            return [*steps[:index], step], index
    names = [name for step in steps for name in step.names]
    raise ValueError(f"unknown layer {layer!r} for injection; valid layers: {', '.join(names)}")


def relevance_from(
    lrp: LRP, inputs: Tensor, layer: str, relevance: Tensor, record: Sequence[str | None]
) -> dict[str | None, Tensor]:
    """The relevance at the outputs of the ``record`` layers (``None``: the input) when the LRP backward pass starts
    at ``layer`` with ``relevance``.

    Parameters
    ----------
    lrp : LRP
        The method (its model and composite).
    inputs : Tensor
        (N, ...) model inputs.
    layer : str
        Walk name of the injection layer (a Conv2d / Linear name injects before its fused ReLU; see the module
        docstring); on a traced model (``lrp.traced``) any module, container or node name of
        :meth:`LRP.attribute`'s ``layer=``.
    relevance : Tensor
        The relevance at ``layer``, shaped like its output (N, ...).
    record : sequence of str or None
        Layers below ``layer`` whose output relevance to return (``None``: the input).

    Returns
    -------
    dict
        Layer name (or None) -> relevance tensor shaped like that layer's output.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch, not {type(inputs).__name__}")
    if lrp.traced:
        return _relevance_from_graph(lrp, inputs, layer, relevance, record)
    steps, _ = _injection_steps(plan(lrp.model, lrp.composite, lrp.batchnorm), layer)
    names_below = [name for step in steps[:-1] for name in step.names]
    bad = [name for name in record if name is not None and name not in names_below]
    if bad:
        raise ValueError(f"record layers {bad} are not below {layer!r}; valid: None, {', '.join(names_below)}")
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        activation, captured = x, {}
        for step in steps:
            activation = step.rule(step.layer, activation, step.info)
            for name in step.names:
                if name in record:
                    captured[name] = activation
        seed = _gradient_seed(relevance, activation, layer)
        wrt = [x if name is None else captured[name] for name in record]
        gradients = torch.autograd.grad(activation, wrt, grad_outputs=seed, allow_unused=True)
    input_space = any(isinstance(s.layer, Affine) and s.rule.input_space and s.info.model_input for s in steps)
    return _relevances(record, wrt, gradients, input_space)


def _relevance_from_graph(
    lrp: LRP, inputs: Tensor, layer: str, relevance: Tensor, record: Sequence[str | None]
) -> dict[str | None, Tensor]:
    """:func:`relevance_from` on a traced model: the graph run up to ``layer``'s node (a convolution / Linear node is
    its pre-activation output already; its rule is run as if no ReLU followed), the gradient seeded there."""
    steps = lrp._plans.steps(lrp.model, lrp.composite, lrp.batchnorm, graph_plan)
    names = layer_nodes(lrp.model, steps)
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r} for injection; valid layers: {', '.join(names)}")
    order = {step.node: index for index, step in enumerate(steps)}
    stop = order[names[layer]]
    below = [name for name, node in names.items() if order[node] < stop]
    bad = [name for name in record if name is not None and name not in below]
    if bad:
        raise ValueError(f"record layers {bad} are not below {layer!r}; valid: None, {', '.join(below)}")
    run = steps[: stop + 1]
    last = run[-1]
    if last.affine is not None and last.info is not None and last.info.output_rectified:
        run[-1] = last.with_info(dataclasses.replace(last.info, output_rectified=False, fused_relu=False))
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        env: dict[str, Any] = {}
        for step in run:
            env[step.node] = x if not env else step.compute(env)
        activation = env[run[-1].node]
        seed = _gradient_seed(relevance, activation, layer)
        wrt = [x if name is None else env[names[name]] for name in record]
        gradients = torch.autograd.grad(activation, wrt, grad_outputs=seed, allow_unused=True)
    input_space = any(s.info is not None and s.info.model_input and s.rule.input_space for s in run if s.rule)
    return _relevances(record, wrt, gradients, input_space)


def _relevances(
    record: Sequence[str | None], wrt: Sequence[Tensor], gradients: Sequence[Tensor | None], input_space: bool
) -> dict[str | None, Tensor]:
    """Relevance per recorded layer: activation x gradient (zero where the layer got no gradient); at the input
    ``None`` the gradient itself when the first rule is an input-space one (flat, w^2, z^B hand back the input
    relevance)."""
    result: dict[str | None, Tensor] = {}
    for key, tensor, gradient in zip(record, wrt, gradients):
        if gradient is None:
            gradient = torch.zeros_like(tensor)
        result[key] = gradient if (key is None and input_space) else tensor.detach() * gradient
    return result


def model_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d and Linear layers of a (nested) ``nn.Sequential``, in forward order."""
    from .engine import walk

    return [name for name, module in walk(model) if isinstance(module, (nn.Conv2d, nn.Linear))]


def _gradient_seed(relevance: Tensor, activation: Tensor, layer: Any) -> Tensor:
    """``relevance / activation`` (0 where the activation is 0): the gradient that, times the activation, is the
    injected relevance; a shape mismatch is an error naming the layer."""
    if relevance.shape != activation.shape:
        raise ValueError(
            f"relevance of shape {tuple(relevance.shape)} does not match the output of {layer!r}, "
            f"{tuple(activation.shape)}"
        )
    out = activation.detach()
    return torch.where(out != 0, relevance.to(out) / torch.where(out != 0, out, 1.0), 0.0)


__all__ = ["model_layers", "relevance_from"]
