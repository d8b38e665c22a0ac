"""CSC, the cosine similarity convergence of Sixt et al. (2020, eq. 9): do random starts at a layer end up parallel?

At an injection layer k every image gets ``vectors`` Gaussian vectors ``v`` (the shape of layer k's output) as its
relevance (LRP family, :func:`attrlab.lrp.inject.relevance_from`) or gradient (gradient family:
:func:`gradient_from`); each is propagated down with the method's own rules. At each lower layer l the ``|cosine|``
between the propagations of every pair of vectors is taken per spatial location over the channels (dense layers: one
location), NaNs from zero vectors are dropped, and the median over images x locations x pairs is the CSC of (k, l).
The baseline is the median ``|cosine|`` of pairs of Gaussian vectors with layer l's channel dimension (the authors' code;
the arXiv v1 text says the mean cosine similarity, whose value 0 would be no baseline for ``|cos|``).

All vectors of all images go through ONE batched backward pass per injection layer (the images are repeated along
the batch, vector-major). On ``nn.Sequential`` models the gradient family runs the layers functionally (no hooks);
other models (the residual one of the chapter) are read with forward hooks removed before returning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..attribution.layer_split import Substitutes
from ..attribution.model_state import eval_semantics
from ..lrp.engine import LRP, walk
from ..lrp.inject import relevance_from
from .methods import SanityMethod


def _run_capturing(model: nn.Module, x: Tensor, names: Sequence[str], substitutes: Substitutes) -> dict[str, Tensor]:
    """Outputs of the named modules in one forward pass (with ``substitutes``); graph kept."""

    def substitute(module: nn.Module):
        return next((f for kind, f in substitutes.items() if isinstance(module, kind)), None)

    captured: dict[str, Tensor] = {}
    wanted = set(names)
    if isinstance(model, nn.Sequential):
        try:
            leaves = walk(model)
        except TypeError:
            leaves = None
        if leaves is not None:
            value = x
            for name, module in leaves:
                function = substitute(module)
                value = function(value) if function is not None else module(value)
                if name in wanted:
                    captured[name] = value
                if len(captured) == len(wanted):
                    break  # nothing above the injection layer is needed
            return captured
    handles = []
    modules = dict(model.named_modules())
    try:
        for module in modules.values():
            function = substitute(module)
            if function is not None:
                handles.append(module.register_forward_hook(lambda _m, args, _o, f=function: f(args[0])))
        for name in wanted:
            handles.append(
                modules[name].register_forward_hook(lambda _m, _a, output, n=name: captured.__setitem__(n, output))
            )
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def gradient_from(
    model: nn.Module,
    inputs: Tensor,
    layer: str,
    gradient: Tensor,
    record: Sequence[str | None],
    substitutes: Substitutes | None = None,
) -> dict[str | None, Tensor]:
    """The gradient at the outputs of the ``record`` layers (``None``: the input) when the backward pass starts at
    ``layer``'s output with ``gradient`` (the model's modules replaced by ``substitutes``, e.g. Guided Backprop's).

    Parameters
    ----------
    model : nn.Module
        The model (not changed; run in eval semantics).
    inputs : Tensor
        (N, ...) inputs.
    layer : str
        The injection layer's module name.
    gradient : Tensor
        The gradient at ``layer``'s output, shaped like it.
    record : sequence of str or None
        Module names below ``layer`` (``None``: the input).
    substitutes : mapping, optional
        Module type -> replacement forward function (the method's ``substitutes``).

    Returns
    -------
    dict
        Layer name (or None) -> gradient shaped like that layer's output.
    """
    modules = dict(model.named_modules())
    unknown = [name for name in [layer, *record] if name is not None and name not in modules]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; valid layers: {', '.join(n for n in modules if n)}")
    with eval_semantics(model), torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        captured = _run_capturing(model, x, [layer, *[n for n in record if n is not None]], substitutes or {})
        out = captured[layer]
        if gradient.shape != out.shape:
            raise ValueError(
                f"gradient of shape {tuple(gradient.shape)} does not match {layer!r}'s output {tuple(out.shape)}"
            )
        wrt = [x if name is None else captured[name] for name in record]
        grads = torch.autograd.grad(out, wrt, grad_outputs=gradient.to(out), allow_unused=True)
    return {name: torch.zeros_like(t) if g is None else g for name, t, g in zip(record, wrt, grads)}


def propagate_from(
    method: SanityMethod, model: nn.Module, inputs: Tensor, layer: str, start: Tensor, record: Sequence[str | None]
) -> dict[str | None, Tensor]:
    """Relevance (LRP family) or gradient (gradient family) at ``record`` when ``method`` starts at ``layer``."""
    if method.family == "none":
        raise ValueError(f"method {method.label!r} has no injection (family 'none'); it is not part of CSC")
    attribution = method.build(model)
    if method.family == "lrp":
        if not isinstance(attribution, LRP):
            raise TypeError(f"method {method.label!r} is in the LRP family but builds a {type(attribution).__name__}")
        return relevance_from(attribution, inputs, layer, start, record)
    substitutes = getattr(attribution, "substitutes", None)
    if substitutes is None:
        raise TypeError(
            f"method {method.label!r} ({type(attribution).__name__}) does not say how it modifies the "
            "backward pass (no `substitutes`); give it family 'none'"
        )
    return gradient_from(model, inputs, layer, start, record, substitutes)


def pairwise_abs_cosine(propagated: Tensor, vectors: int) -> Tensor:
    """``|cos|`` over channels between every pair of the ``vectors`` propagations of each image, per location.

    ``propagated`` is (vectors * N, C, ...) vector-major; returns the flat values (images x pairs x locations)
    with NaNs (a zero vector) dropped.
    """
    values = propagated.reshape(vectors, -1, propagated.shape[1], int(np.prod(propagated.shape[2:], dtype=int)))
    unit = values.to(torch.float64)
    unit = unit / unit.norm(dim=2, keepdim=True)  # zero vectors -> NaN
    # (N, locations, vectors, C) @ its transpose: every pair's cosine in one batched matrix product
    arranged = unit.permute(1, 3, 0, 2)
    gram = arranged @ arranged.transpose(-1, -2)
    first, second = torch.triu_indices(vectors, vectors, offset=1, device=gram.device)
    cosine = gram[..., first, second].abs().flatten()
    return cosine[~cosine.isnan()]


def cosine_baseline(channels: int, samples: int = 1000, seed: int = 0) -> float:
    """The median ``|cos|`` between ``samples`` x ``samples`` pairs of N(0, I) vectors of dimension ``channels``."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(samples, channels, generator=generator, dtype=torch.float64)
    w = torch.randn(samples, channels, generator=generator, dtype=torch.float64)
    u, w = u / u.norm(dim=1, keepdim=True), w / w.norm(dim=1, keepdim=True)
    return float((u @ w.T).abs().median())


def csc(
    model: nn.Module,
    method: SanityMethod,
    inputs: Tensor,
    injection_layers: Sequence[str],
    record: Sequence[str | None],
    vectors: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """CSC of ``method`` for each injection layer k and every recorded layer l below it.

    Parameters
    ----------
    model : nn.Module
        The classifier.
    method : SanityMethod
        A row of :data:`attrlab.sanity.methods.SIXT_METHODS` with family ``lrp`` or ``gradient``.
    inputs : Tensor
        (N, C, H, W) images.
    injection_layers : sequence of str
        Layers k to start at (module names).
    record : sequence of str or None
        Layers l to measure at, in forward order (``None``: the input); only those below each k are used.
    vectors : int
        Gaussian vectors per image (the code's 5: 10 pairs).
    seed : int
        Seed of the vectors (the same for every method, so methods see the same starts).

    Returns
    -------
    pandas.DataFrame
        One row per (injection layer, layer): ``method``, ``injection``, ``layer``, ``position`` (index in
        ``record``), ``median``, ``values`` (count of non-NaN ``|cos|``), ``dropped`` (NaN count), ``channels``.
    """
    if vectors < 2:
        raise ValueError(f"vectors must be >= 2 (pairs are compared), got {vectors}")
    order = list(record)
    rows = []
    repeated = inputs.repeat(vectors, *[1] * (inputs.dim() - 1))  # vector-major: row j * N + i
    for k_index, layer in enumerate(injection_layers):
        below = _below(model, order, layer)
        with torch.no_grad():
            shape = _output_shape(model, inputs[:1], layer)
        generator = torch.Generator().manual_seed(seed + k_index)
        start = torch.randn((vectors * inputs.shape[0], *shape[1:]), generator=generator).to(inputs)
        propagated = propagate_from(method, model, repeated, layer, start, below)
        for name in below:
            value = propagated[name]
            cosines = pairwise_abs_cosine(value, vectors)
            total = vectors * (vectors - 1) // 2 * inputs.shape[0] * int(np.prod(value.shape[2:], dtype=int))
            rows.append(
                (
                    method.label,
                    layer,
                    "input" if name is None else name,
                    order.index(name),
                    float(cosines.median()) if cosines.numel() else float("nan"),
                    int(cosines.numel()),
                    total - int(cosines.numel()),
                    int(value.shape[1]),
                )
            )
    return pd.DataFrame(
        rows, columns=["method", "injection", "layer", "position", "median", "values", "dropped", "channels"]
    )


def _below(model: nn.Module, order: list[str | None], layer: str) -> list[str | None]:
    names = [name for name, _ in model.named_modules()]
    if layer not in names:
        raise ValueError(f"unknown injection layer {layer!r}; valid layers: {', '.join(n for n in names if n)}")
    bad = [name for name in order if name is not None and name not in names]
    if bad:
        raise ValueError(f"unknown record layers {bad}; valid layers: {', '.join(n for n in names if n)}")
    position = names.index(layer)
    return [name for name in order if name is None or names.index(name) < position]


def _output_shape(model: nn.Module, x: Tensor, layer: str) -> torch.Size:
    with eval_semantics(model):
        return _run_capturing(model, x, [layer], {})[layer].shape


__all__ = ["cosine_baseline", "csc", "gradient_from", "pairwise_abs_cosine", "propagate_from"]
