"""Every composite of the composite table on one model, in every BatchNorm mode: maps, their agreement, conservation.

What the chapter ``lrp_any_model`` shows for a residual and a dense network: each (composite, BatchNorm mode) pair
explains the same images once (:func:`explain_all`, one batched LRP call per pair), :func:`mode_agreement` says how
far the uncanonized baselines (``"gradient"``, ``"pass"``) are from the canonized maps, and :func:`conservation`
compares each map's relevance sum with the explained logit, which LRP starts from (``start="logit"``). With every
bias zero (:func:`zero_bias_copy`) the conserving rules (LRP-0/epsilon up to its stabilizer, z+, alpha-beta with
alpha - beta = 1, gamma, flat, w^2, z^B) and the node rules (addition, concatenation, pooling) lose nothing, so the
sum equals the logit up to the stabilizers; biases (also those folded in from BatchNorm) absorb a part of it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..attribution.base import Explanation, Target
from .composites import COMPOSITES
from .engine import BATCHNORM_MODES, LRP, check_batchnorm_mode

Pair = tuple[str, str]  # (composite name, BatchNorm mode)


def explain_all(
    model: nn.Module,
    x: Tensor,
    target: Target,
    composites: Sequence[str] | None = None,
    modes: Sequence[str] = BATCHNORM_MODES,
) -> dict[Pair, Explanation]:
    """Input relevances of ``x`` under every composite in every BatchNorm mode (the model in eval semantics).

    Parameters
    ----------
    model : nn.Module
        Any model attrlab's LRP explains (``nn.Sequential`` or traceable).
    x : Tensor
        (N, C, H, W) inputs.
    target : int, Tensor or None
        The explained logits, as :meth:`attrlab.attribution.base.Attribution.attribute` takes them (one per image).
    composites : sequence of str, optional
        Names of :data:`attrlab.lrp.composites.COMPOSITES` (default: all of them, in the table's order), each with
        its default settings.
    modes : sequence of str
        BatchNorm modes of :data:`attrlab.lrp.engine.BATCHNORM_MODES`.

    Returns
    -------
    dict
        {(composite, mode): Explanation}, in the order composites x modes.
    """
    names = list(COMPOSITES) if composites is None else list(composites)
    unknown = [name for name in names if name not in COMPOSITES]
    if unknown:
        raise ValueError(f"unknown composites {unknown}; valid names: {', '.join(COMPOSITES)}")
    if not names or not modes:
        raise ValueError("explain_all needs at least one composite and one BatchNorm mode")
    for mode in modes:
        check_batchnorm_mode(mode)
    return {
        (name, mode): LRP(model, name, batchnorm=mode).explain(x, target)  # type: ignore[arg-type]
        for name in names
        for mode in modes
    }


def conservation(explanations: dict[Pair, Explanation]) -> pd.DataFrame:
    """Each pair's relevance sums against the explained logits.

    Parameters
    ----------
    explanations : dict
        {(composite, mode): Explanation} from :func:`explain_all`.

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``composite``, ``batchnorm``, ``logit`` and ``relevance`` (the means over images),
        ``max_deviation`` (the largest ``|relevance sum / logit - 1|`` over the images).
    """
    rows = []
    for (name, mode), explanation in explanations.items():
        sums = explanation.attribution.flatten(1).sum(1)
        logits = explanation.logits.gather(1, explanation.target.view(-1, 1))[:, 0]
        deviation = (sums / logits - 1).abs()
        rows.append(
            {
                "composite": name,
                "batchnorm": mode,
                "logit": float(logits.mean()),
                "relevance": float(sums.mean()),
                "max_deviation": float(deviation.max()),
            }
        )
    return pd.DataFrame(rows)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    a, b = a.flatten(1).double(), b.flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms.clamp(min=1e-300), torch.nan)


def mode_agreement(explanations: dict[Pair, Explanation], reference: str = "canonize") -> pd.DataFrame:
    """How similar each composite's maps in the other BatchNorm modes are to its maps in ``reference`` mode.

    Parameters
    ----------
    explanations : dict
        {(composite, mode): Explanation} from :func:`explain_all`, ``reference`` among the modes.
    reference : str
        The BatchNorm mode compared against.

    Returns
    -------
    pandas.DataFrame
        One row per composite, one column per other mode: the median over images of the cosine similarity between
        the two input relevances (1: the same map up to scale).
    """
    modes = list(dict.fromkeys(mode for _, mode in explanations))
    if reference not in modes:
        raise ValueError(f"reference mode {reference!r} is not among the explained modes {modes}")
    rows: dict[str, dict[str, float]] = {}
    for (name, mode), explanation in explanations.items():
        if mode == reference:
            continue
        cosine = _cosine(explanation.attribution, explanations[(name, reference)].attribution)
        rows.setdefault(name, {})[mode] = float(cosine.nanmedian())
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("composite")


def zero_bias_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every bias zero: Conv/Linear biases, and BatchNorm shifts and running means.

    Each BatchNorm then scales its input, ``y = weight * x / sqrt(running_var + eps)``, so a canonized model has zero
    biases too. The copy keeps the train/eval flag; ``model`` is left unchanged.

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    nn.Module
    """
    result = copy.deepcopy(model)
    with torch.no_grad():
        for module in result.modules():
            bias: Any = getattr(module, "bias", None)
            if isinstance(bias, Tensor):
                bias.zero_()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.zero_()
    return result


__all__ = ["conservation", "explain_all", "mode_agreement", "zero_bias_copy"]
