"""Eval-mode semantics for one call: the train/eval flag of every sub-module is restored exactly afterwards.

Every attribution method and every evaluation pass of a model that may be training (``train.evaluate``,
``grids.confident_images``) runs through this one helper. Attributions are defined on the model in eval mode
(dropout off, BatchNorm with running statistics, nothing written to running buffers). A tracker calls methods on a
model that is training, possibly between a training forward and its backward; switching the flags does not touch a
pending autograd graph, so flipping them for the call and restoring each module's own flag (not just the root's: a
user may freeze some BatchNorms in eval) is safe and leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_semantics(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the ``with`` block, then restore every sub-module's ``training`` flag.

    Parameters
    ----------
    model : nn.Module
        The model; ``model.train(was_training)`` would instead reset every sub-module to the root's flag (a
        BatchNorm frozen in eval inside a training model would start training again).

    Yields
    ------
    nn.Module
        ``model`` itself, in eval mode.
    """
    flags = [(module, module.training) for module in model.modules()]
    if not any(training for _, training in flags):
        yield model
        return
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training
