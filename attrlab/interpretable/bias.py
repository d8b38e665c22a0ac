"""The bias term of a B-cos network's logits, ``y(x) = W(x) x + b(x)``, and its share of the top-2 logit difference.

With conventional normalisation layers (:class:`~attrlab.interpretable.bcos.BiasedNorm`: β, and the running mean of
the batch norms at inference) a B-cos network is no longer dynamic linear but dynamic *affine* (thesis eq. 6.31): the
inherent contributions ``W(x)^T ⊙ x`` sum to ``W(x) x`` only, and ``b(x)`` collects what the biases add. The thesis'
Fig. 6.13 shows, per normalisation, the ratio of the bias difference to the logit difference of each image's top-2
classes c1 and c2, ``(b_c1 - b_c2) / (y_c1 - y_c2)``: near 1 the biases decide between the two classes, near 0 the
explanation does, below 0 the biases favour c2.

The two parts are computed independently, so that their sum checking out against the logit is a real test:
``W(x) x`` as the sum of the inherent contributions (:class:`~attrlab.interpretable.inherent.InherentContributions`),
``b(x)`` as the gradient of the logit with respect to the probes by which
:func:`~attrlab.interpretable.bcos.bias_probes` multiplies every additive term (with the dynamic factors detached,
each layer's additive term reaches the logit through a linear map, and the gradient is its image there). A
bias-free network has no probes, so its ``b(x)`` is exactly 0. Everything is in eval semantics (running statistics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..attribution.model_state import eval_semantics
from .bcos import bias_probes
from .dynamic import dynamic_linear
from .inherent import InherentContributions


class Decomposition(NamedTuple):
    """Each image's explained logit (or difference of logits) split into its dynamic-linear part and its bias."""

    linear: torch.Tensor  #: (N,) ``W(x) x``: the sum of the inherent contributions
    bias: torch.Tensor  #: (N,) ``b(x)``: what the biases add
    logit: torch.Tensor  #: (N,) the model's own output


def _weights(target: torch.Tensor, classes: int) -> torch.Tensor:
    """(N, T) or (N,) target -> (N, classes) weights: +1 on column 0, -1 on column 1 (a difference), else one-hot."""
    target = target.view(target.shape[0], -1)
    if target.shape[1] > 2:
        raise ValueError(f"target must give one class or two (a difference) per image, got {target.shape[1]}")
    weights = torch.zeros(target.shape[0], classes, device=target.device)
    weights.scatter_(1, target[:, :1], 1.0)
    if target.shape[1] == 2:
        weights.scatter_add_(1, target[:, 1:], -torch.ones_like(target[:, 1:], dtype=weights.dtype))
    return weights


def logit_decomposition(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Decomposition:
    """``y = W(x) x + b(x)`` for each image's target logit, or for the difference of two logits.

    Parameters
    ----------
    model : nn.Module
        A B-cos network (biased norm layers allowed); run in eval semantics and left as it was.
    x : torch.Tensor
        (N, C, H, W) images.
    target : torch.Tensor
        (N,) classes, or (N, 2) pairs (c1, c2) for the difference ``y_c1 - y_c2``.

    Returns
    -------
    Decomposition
        ``linear``, ``bias`` and ``logit``, each (N,).
    """
    target = torch.as_tensor(target, device=x.device).long()
    if target.dim() not in (1, 2) or target.shape[0] != x.shape[0]:
        raise ValueError(f"target must be (N,) or (N, 2) for {x.shape[0]} images, got shape {tuple(target.shape)}")
    pair = target.view(x.shape[0], -1)
    explanation = InherentContributions(model).explain(x, target=pair)
    contributions = explanation.attribution.flatten(2).sum(2)  # (N, T)
    linear = contributions[:, 0] - contributions[:, 1] if pair.shape[1] == 2 else contributions[:, 0]
    with eval_semantics(model), dynamic_linear(model), torch.enable_grad():
        with bias_probes(model, x.shape[0], x.device) as probes:
            logits = model(x.detach())
            weights = _weights(pair, logits.shape[1])
            explained = (logits * weights).sum(1)
            if probes:
                grads = torch.autograd.grad(explained.sum(), probes)
                bias = torch.stack([g.view(-1) for g in grads]).sum(0)
            else:
                bias = torch.zeros_like(explained)
    return Decomposition(linear.detach(), bias.detach(), explained.detach())


def top2(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, 2): each image's two highest-scoring classes (c1, c2), in eval semantics."""
    with eval_semantics(model), torch.no_grad():
        return model(x).topk(2, dim=1).indices


def bias_share(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N,): ``(b_c1 - b_c2) / (y_c1 - y_c2)`` for each image's top-2 classes c1, c2 (the thesis' Fig. 6.13).

    Exactly 0 for a network without biases; 1 where the biases alone make the difference. An image whose two top
    logits tie (a zero difference) gets NaN.
    """
    parts = logit_decomposition(model, x, top2(model, x))
    return torch.where(parts.logit != 0, parts.bias / parts.logit, torch.full_like(parts.logit, float("nan")))


__all__ = ["Decomposition", "bias_share", "logit_decomposition", "top2"]
