"""The autograd plumbing of the LRP rules: a layer output carrying a hand-written backward map, hook-free.

A rule computes a layer's true output and, in the same no-graph forward, the map its backward pass applies to the
output gradient (:func:`propagation`, a small ``torch.autograd.Function``): the true output and the rule's
denominators come from one call, and the backward needs only the transposed call. :func:`reroute` is the
``value + (f - stop_grad(f)) * scale`` form for layers whose rule is a rescaled gradient. With several targets the
engine runs one backward pass per target column through the same graph: inside :func:`reusable_backward` the
backward maps are kept for the next pass instead of being freed after the first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

import torch
from torch import Tensor

#: a rule's backward map: output gradient -> input gradient
Backward = Callable[[Tensor], Tensor]


def reroute(value: Tensor, differentiable: Tensor, scale: Tensor) -> Tensor:
    """``value`` exactly, with the gradient of ``differentiable * scale`` (``scale`` and ``value`` are constants).

    Parameters
    ----------
    value : torch.Tensor
        The forward value (no graph needed).
    differentiable : torch.Tensor
        A tensor with a graph to the layer's input, shaped like ``value``.
    scale : torch.Tensor
        Constants multiplying the gradient that flows through ``differentiable``.

    Returns
    -------
    torch.Tensor
    """
    return value + (differentiable - differentiable.detach()) * scale


_reuse = threading.local()


@contextlib.contextmanager
def reusable_backward():
    """Keep the backward maps of the propagations recorded inside for several backward passes (one per target).

    Read when a propagation is recorded (its forward, in the caller's thread), not when the autograd engine runs it.
    """
    previous = getattr(_reuse, "active", False)
    _reuse.active = True
    try:
        yield
    finally:
        _reuse.active = previous


class _Propagation(torch.autograd.Function):
    """Forward: ``propagate(x) -> (output, backward)`` without recording a graph; backward: ``backward(grad)``."""

    @staticmethod
    def forward(ctx, x: Tensor, propagate: Callable[[Tensor], tuple[Tensor, Backward]]) -> Tensor:
        output, ctx.backward_map = propagate(x)
        ctx.reusable = getattr(_reuse, "active", False)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor):
        backward = ctx.backward_map
        if not ctx.reusable:
            ctx.backward_map = None  # free the saved tensors at once
        return backward(grad), None


def propagation(x: Tensor, propagate: Callable[[Tensor], tuple[Tensor, Backward]]) -> Tensor:
    """The output of ``propagate(x)`` carrying the backward map it returns.

    Parameters
    ----------
    x : torch.Tensor
        The layer's input (with a graph).
    propagate : callable
        ``propagate(x) -> (output, backward)``, run without recording a graph; ``backward(grad_output)`` returns
        the gradient the rule passes to ``x``.

    Returns
    -------
    torch.Tensor
        ``output``, whose backward pass applies ``backward``.
    """
    return _Propagation.apply(x, propagate)


__all__ = ["Backward", "propagation", "reroute", "reusable_backward"]
