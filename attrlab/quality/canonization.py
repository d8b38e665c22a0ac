"""The canonization study of Pahde et al. (2023, Table 1, section 4.5): every metric of three LRP composites with
BatchNorm propagated by its gradient (not canonized) against BatchNorm folded into its neighbour (canonized).

The methods are zennit's composites as Pahde et al. ran them (:data:`STUDY_METHODS`): Excitation Backprop (z+ on every
Conv2d and Linear), LRP-alpha2-beta1 (zennit's ``EpsilonAlpha2Beta1``: epsilon on Linear, alpha2-beta1 on Conv2d) and
LRP-epsilon-plus (``EpsilonPlus``: epsilon on Linear, z+ on Conv2d, no special first layer). A fully convolutional
model's 1x1 head counts as its dense layers (without that, Excitation Backprop and LRP-epsilon-plus coincide on it);
any other model's dense layers are its Linear layers (:func:`study_dense_layers`: ``fc`` of ``resnet_small``,
``classifier`` of ``densenet_small``, ``fc1``/``fc2`` of ``deep_bn``), and its convolutions, also those inside residual
and dense blocks, get the convolution rule by type; the traced LRP engine (:mod:`attrlab.lrp.graph`) runs the residual
and dense models with the same composites and BatchNorm modes. Uncanonized, zennit applies no rule to BatchNorm, which
is the layer's gradient (``batchnorm="gradient"``). Scores are per image (:func:`run_canonization_study`, one
(model, method, canonized) job at a time: :func:`study_job`); :func:`summarise_study` gives means with bootstrap
intervals (``scipy.stats``) and the paired canonized-minus-original difference with its interval;
:func:`check_canonization_claims` computes the section 4.5 claims on that summary, over all models or per model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from torch import nn

from ..lrp import LRP, AlphaBeta, Composite, Epsilon, ExcitationBackprop, ZPlus
from ..lrp.engine import BatchNormMode
from .battery import METRICS, BatterySettings, evaluate_battery
from .gamma import LAYER_GROUPS
from .setup import ImageSet

#: method label -> a function of the model's dense layers' names building its composite (zennit 0.5's composites,
#: epsilon 1e-6); the names let a fully convolutional model's 1x1 head count as its dense layers
STUDY_METHODS: dict[str, Callable[[Sequence[str]], Composite]] = {
    "EB": lambda dense: ExcitationBackprop(),
    "LRP-α2β1": lambda dense: Composite(
        layer_map=[(nn.Linear, Epsilon(1e-6)), (nn.Conv2d, AlphaBeta(2.0, 1.0))],
        name_map={name: Epsilon(1e-6) for name in dense},
    ),
    "LRP-ε+": lambda dense: Composite(
        layer_map=[(nn.Linear, Epsilon(1e-6)), (nn.Conv2d, ZPlus())], name_map={name: Epsilon(1e-6) for name in dense}
    ),
}
#: canonized? -> the LRP engine's BatchNorm mode (Table 1's "no": BatchNorm by its gradient, as zennit without canonizer)
BATCHNORM_MODES: dict[bool, BatchNormMode] = {False: "gradient", True: "canonize"}
#: the metric families of the claims
FAMILIES: dict[str, tuple[str, ...]] = {
    "complexity": ("sparseness", "complexity"),
    "faithfulness": ("aopc", "pixel_flipping", "faithfulness_correlation"),
    "localisation": ("rra", "rma"),
    "robustness": ("avg_sensitivity", "max_sensitivity"),
    "randomisation": ("random_logit",),
}


def study_dense_layers(model_name: str, model: nn.Module) -> tuple[str, ...]:
    """The layers that get the composites' dense-layer rule: the "head" group of :data:`attrlab.quality.gamma.LAYER_GROUPS`
    where the model has one (``vgg_small_bn``'s 1x1 convolutional head), else every ``nn.Linear`` of the model.

    Parameters
    ----------
    model_name : str
        The model's registry name.
    model : nn.Module
        The model.

    Returns
    -------
    tuple of str
        Module names.
    """
    if model_name in LAYER_GROUPS:
        return LAYER_GROUPS[model_name]["head"]
    dense = tuple(name for name, module in model.named_modules() if isinstance(module, nn.Linear))
    if not dense:
        raise ValueError(
            f"model {model_name!r} has no nn.Linear layer and no head group in LAYER_GROUPS "
            f"({', '.join(LAYER_GROUPS)}): the study cannot tell which layers are its dense layers"
        )
    return dense


def study_job(
    model_name: str,
    model: nn.Module,
    method: str,
    canonized: bool,
    images: ImageSet,
    settings: BatterySettings,
    metrics: Sequence[str] = tuple(METRICS),
) -> pd.DataFrame:
    """Every metric of one (model, method, canonized) on every image.

    Parameters
    ----------
    model_name : str
        The model's registry name (:func:`study_dense_layers`).
    model : nn.Module
        The trained model, on the images' device, in eval mode.
    method : str
        A label of :data:`STUDY_METHODS`.
    canonized : bool
        BatchNorm folded (True) or propagated by its gradient (False).
    images : ImageSet
        The images, their classes and box masks.
    settings : BatterySettings
        The metrics' parameters.
    metrics : sequence of str
        Metrics of :data:`attrlab.quality.battery.METRICS`.

    Returns
    -------
    pandas.DataFrame
        Long table with columns ``model, method, canonized, metric, image, value``.
    """
    if method not in STUDY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid choices: {', '.join(STUDY_METHODS)}")
    composite = STUDY_METHODS[method](study_dense_layers(model_name, model))
    lrp = LRP(model, composite, batchnorm=BATCHNORM_MODES[bool(canonized)])
    scores = evaluate_battery(model, images.x, images.y, images.masks, lrp, settings, metrics)
    frames = [
        pd.DataFrame(
            {
                "model": model_name,
                "method": method,
                "canonized": bool(canonized),
                "metric": metric,
                "image": np.arange(len(values)),
                "value": values.detach().cpu().double().numpy(),
            }
        )
        for metric, values in scores.items()
    ]
    return pd.concat(frames, ignore_index=True)


def run_canonization_study(
    models: Mapping[str, nn.Module],
    images: ImageSet,
    settings: BatterySettings,
    methods: Sequence[str] = tuple(STUDY_METHODS),
    metrics: Sequence[str] = tuple(METRICS),
    progress: bool = False,
) -> pd.DataFrame:
    """Every metric of every (model, method, canonized) on every image.

    Parameters
    ----------
    models : mapping of str to nn.Module
        Trained BatchNorm models by registry name (on the images' device); the layers of :func:`study_dense_layers`
        get the composites' dense-layer rule, so the 1x1 convolutional head of ``vgg_small_bn`` is treated as the
        fully connected head of Pahde et al.'s VGG.
    images : ImageSet
        The images, their classes and box masks.
    settings : BatterySettings
        The metrics' parameters.
    methods : sequence of str
        Labels of :data:`STUDY_METHODS`.
    metrics : sequence of str
        Metrics of :data:`attrlab.quality.battery.METRICS`.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
        Long table with columns ``model, method, canonized, metric, image, value``.
    """
    from tqdm.auto import tqdm

    unknown = [m for m in methods if m not in STUDY_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; valid choices: {', '.join(STUDY_METHODS)}")
    jobs = [(name, method, canonized) for name in models for method in methods for canonized in (False, True)]
    frames = [
        study_job(name, models[name], method, canonized, images, settings, metrics)
        for name, method, canonized in tqdm(jobs, desc="canonization study", disable=not progress)
    ]
    return pd.concat(frames, ignore_index=True)


def _interval(values: np.ndarray, n_resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < 2 or np.ptp(values) == 0:
        mean = float(values.mean()) if len(values) else float("nan")
        return mean, mean
    result = stats.bootstrap(
        (values,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarise_study(
    scores: pd.DataFrame, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """Mean and bootstrap interval of each (model, method, metric) not canonized and canonized, and of their paired
    difference (canonized minus not, image by image).

    Parameters
    ----------
    scores : pandas.DataFrame
        :func:`run_canonization_study`'s table.
    n_resamples : int
        Bootstrap resamples (percentile intervals, ``scipy.stats.bootstrap``).
    confidence : float
        Confidence level of the intervals.
    seed : int
        Seed of the resampling.

    Returns
    -------
    pandas.DataFrame
        One row per (model, method, metric): ``orig, orig_low, orig_high, canon, canon_low, canon_high, diff,
        diff_low, diff_high, improves`` (``improves``: the canonized mean is better in the metric's direction).
    """
    rows = []
    wide = scores.pivot_table(index=["model", "method", "metric", "image"], columns="canonized", values="value")
    for (model, method, metric), part in wide.groupby(level=["model", "method", "metric"], sort=False):
        orig, canon = part[False].to_numpy(), part[True].to_numpy()
        diff = canon - orig
        row: dict = {"model": model, "method": method, "metric": metric}
        for label, values in (("orig", orig), ("canon", canon), ("diff", diff)):
            low, high = _interval(values, n_resamples, seed, confidence)
            row |= {label: float(np.nanmean(values)), f"{label}_low": low, f"{label}_high": high}
        higher_better = METRICS[metric][0]
        row["improves"] = bool(row["diff"] > 0) if higher_better else bool(row["diff"] < 0)
        rows.append(row)
    return pd.DataFrame(rows)


def table_one(summary: pd.DataFrame, metrics: Sequence[str] | None = None, digits: int = 2) -> pd.DataFrame:
    """Pahde et al.'s Table 1 layout: one row per (model, method), per metric the cell ``"orig / canon"``."""
    metrics = list(metrics) if metrics is not None else [m for m in METRICS if m in set(summary.metric)]
    cells = summary.assign(cell=[f"{o:.{digits}f} / {c:.{digits}f}" for o, c in zip(summary.orig, summary.canon)])
    table = cells.pivot(index=["model", "method"], columns="metric", values="cell")
    return table[[m for m in metrics if m in table.columns]]


def _claims(summary: pd.DataFrame) -> list[dict]:
    rows = []
    for number, family in enumerate(("complexity", "faithfulness", "localisation"), start=1):
        cells = summary[summary.metric.isin(FAMILIES[family])]
        if cells.empty:
            continue
        better = int(cells.improves.sum())
        rows.append(
            {
                "claim": f"({number}) canonization mostly improves {family}",
                "measured": f"better in {better} of {len(cells)} cells",
                "holds": better > len(cells) / 2,
            }
        )
    cells = summary[summary.metric == "random_logit"]
    if not cells.empty:
        rises = int((cells["diff"] > 0).sum())
        rows.append(
            {
                "claim": "(4) Random Logit scores rise (worse) with canonization",
                "measured": f"higher in {rises} of {len(cells)} cells",
                "holds": rises > len(cells) / 2,
            }
        )
    dense = summary[summary.model.str.contains("densenet") & (summary.metric == "sparseness")]
    lower = int((dense["diff"] < 0).sum())
    rows.append(
        {
            "claim": "(5) DenseNet maps get less sparse when canonized",
            "measured": (
                f"sparseness lower in {lower} of {len(dense)} methods" if not dense.empty else "no DenseNet here"
            ),
            "holds": bool(lower > len(dense) / 2) if not dense.empty else None,
        }
    )
    return rows


def check_canonization_claims(summary: pd.DataFrame, by_model: bool = False) -> pd.DataFrame:
    """Pahde et al.'s section 4.5 claims computed on :func:`summarise_study`'s table.

    Claims: canonization mostly improves (1) complexity, (2) faithfulness and (3) localisation -- "mostly" read as
    in more than half of the (model, method, metric) cells of the family; (4) randomisation scores rise (get worse)
    with canonization in most cells; (5) DenseNet maps get less sparse when canonized: Sparseness falls for most
    methods of a model whose name holds "densenet" (otherwise reported as not tested).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`summarise_study`'s table.
    by_model : bool
        Compute every claim on each model's cells alone (a ``model`` column first) instead of on all cells.

    Returns
    -------
    pandas.DataFrame
        Columns ``claim, measured, holds`` (``holds`` None when not tested), after ``model`` when ``by_model``.
    """
    if not by_model:
        return pd.DataFrame(_claims(summary), columns=["claim", "measured", "holds"])
    rows = [{"model": model, **row} for model, part in summary.groupby("model", sort=False) for row in _claims(part)]
    return pd.DataFrame(rows, columns=["model", "claim", "measured", "holds"])


#: how a claim's ``holds`` value reads in a table
VERDICTS: dict[bool | None, str] = {True: "holds", False: "does not hold", None: "not tested"}


def claims_by_model(
    summary: pd.DataFrame, models: Sequence[str] | None = None, overall: str | None = "all models"
) -> pd.DataFrame:
    """The claims of :func:`check_canonization_claims` computed per model, one row per claim, one column per model
    (and one for all models together).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`summarise_study`'s table.
    models : sequence of str, optional
        The columns' order (default: the summary's).
    overall : str, optional
        The name of a last column with the claims on every model's cells together (None: no such column).

    Returns
    -------
    pandas.DataFrame
        Cells ``"holds (better in 5 of 7 cells)"``, ``"does not hold (...)"`` or ``"not tested"``.
    """
    claims = check_canonization_claims(summary, by_model=True)
    models = list(models) if models is not None else list(dict.fromkeys(claims.model))
    if overall is not None:
        claims = pd.concat([claims, check_canonization_claims(summary).assign(model=overall)], ignore_index=True)
        models.append(overall)
    cells = [
        VERDICTS[holds] if holds is None else f"{VERDICTS[bool(holds)]} ({measured})"
        for holds, measured in zip(claims.holds, claims.measured)
    ]
    table = claims.assign(cell=cells).pivot(index="claim", columns="model", values="cell")
    return table[models].rename_axis(columns=None)


__all__ = [
    "BATCHNORM_MODES",
    "FAMILIES",
    "STUDY_METHODS",
    "VERDICTS",
    "check_canonization_claims",
    "claims_by_model",
    "run_canonization_study",
    "study_dense_layers",
    "study_job",
    "summarise_study",
    "table_one",
]
