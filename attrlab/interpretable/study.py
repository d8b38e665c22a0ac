"""The B-cos study of Böhle (2024, ch. 6) as code: which nets the chapter trains, its result tables and its claims.

The chapter *B-cos networks* (``book/interpretable_networks.md``) trains B-cos nets named by a compact list
(:func:`parse_models`: ``"1.5,2,2.5m"``, a trailing ``m`` for MaxOut), evaluates them with the thesis' GridPG
protocol and keeps one row per (model, method) in a *result table* (:func:`result_rows`). Run by the sweep
``book/regimes/interpretable/bcos-b-sweep.yml`` (a subfolder: ``book/regimes/*.yml`` are the training-dynamics
regimes) with a ``run_dir`` per point, the chapter writes that table into the point's folder; :func:`collect_sweep`
gathers the points into the small committed table ``book/results/bcos_b_sweep.csv`` that the
chapter reads for the thesis' Table 6.1 layout (:func:`accuracy_table`), Fig. 6.5 (:func:`localisation_table`) and
its claims (:func:`check_claims`)::

    attrlab run book/regimes/interpretable/bcos-b-sweep.yml
    python -m attrlab.interpretable.study runs/regimes/bcos-b-sweep book/results/bcos_b_sweep.csv

This module sits in the evaluations layer (it reads result tables of grid evaluations); the rest of
:mod:`attrlab.interpretable` is the models layer, and its ``__init__`` does not import this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from ..models.bcos import THESIS_B
from ..runstore import collect_command, point_tables, write_csv

#: Table 6.1 of the thesis (CIFAR10, the nine-layer simple B-cos net): (B, MaxOut) -> test accuracy in %
THESIS_ACCURACY: dict[tuple[float, bool], float] = {
    (1.0, True): 93.5,
    (1.25, True): 93.8,
    (1.5, True): 93.7,
    (1.75, True): 93.7,
    (2.0, True): 93.2,
    (2.25, True): 92.6,
    (2.5, True): 92.4,
    (2.0, False): 91.5,
}
#: the registry name of the conventional model of the same shape
TWIN = "bcos_relu_twin"
#: columns of a result table, one row per (model, method)
RESULT_COLUMNS = ("model", "b", "maxout", "accuracy", "method", "median", "mean", "n_grids", "epochs", "temperature")
#: the label of the inherent explanation (smoothed by 3x3, as the thesis' CIFAR10 protocol)
INHERENT = "S-B-cos"
#: the registry name of the CoDA net of the temperature ablation, and the label of its inherent explanation
CODA = "coda"
CODA_INHERENT = "S-CoDA"
#: the post-hoc labels of the chapter's protocol
POSTHOC = ("S-IxG", "S-IntGrad", "Grad-CAM")
#: columns of every claims table: the claim (with the thesis' figure or table), its test, what was measured, the verdict
CLAIM_COLUMNS = ("claim", "test", "measured", "holds")
#: the file name a chapter run with a ``run_dir`` writes its result table to
RESULT_FILE = "bcos_results.csv"


def parse_models(text: str) -> list[tuple[float, bool]]:
    """``"1.5,2,2.5m"`` -> ``[(1.5, False), (2.0, False), (2.5, True)]``: B values, a trailing ``m`` for MaxOut.

    Raises a ``ValueError`` naming a bad entry and the valid B (:data:`attrlab.models.bcos.THESIS_B`).
    """
    valid = ", ".join(f"{b:g}" for b in THESIS_B)
    entries = [entry.strip() for entry in str(text).split(",") if entry.strip()]
    if not entries:
        raise ValueError(f"no B given in {text!r}; valid B: {valid} (a trailing m adds MaxOut, as 2m)")
    models = []
    for entry in entries:
        maxout = entry.endswith("m")
        try:
            b = float(entry[:-1] if maxout else entry)
        except ValueError:
            b = math.nan
        if b not in THESIS_B:
            raise ValueError(f"unknown B {entry!r} in {text!r}; valid B: {valid} (a trailing m adds MaxOut, as 2m)")
        if (b, maxout) in models:
            raise ValueError(f"{entry!r} appears twice in {text!r}")
        models.append((b, maxout))
    return models


def parse_temperatures(text: str) -> list[float]:
    """``"0.1,1,10"`` -> ``[0.1, 1.0, 10.0]``: the CoDA nets' loss temperatures (positive; empty text: none)."""
    values = []
    for entry in (entry.strip() for entry in str(text).split(",")):
        if not entry:
            continue
        try:
            value = float(entry)
        except ValueError:
            value = math.nan
        if not value > 0 or math.isinf(value):
            raise ValueError(f"temperature {entry!r} in {text!r} is not a positive number")
        if value in values:
            raise ValueError(f"temperature {entry!r} appears twice in {text!r}")
        values.append(value)
    return values


class Net(NamedTuple):
    """One interpretable net of a chapter run: what to build and train, and how to label it."""

    model: str  #: registry name
    b: float  #: B (NaN for CoDA)
    maxout: bool
    temperature: float  #: of the binary cross-entropy it trains with
    label: str  #: how figures and tables name it
    inherent: str  #: the label of its inherent explanation's MethodSpec ("B-cos" or "CoDA"; "S-" once smoothed)


def plan_nets(b_values: str, coda_temperatures: str, temperature: float) -> list[Net]:
    """The nets of a chapter run: B-cos nets (:func:`parse_models`, at ``temperature``) and CoDA nets, one per
    temperature of :func:`parse_temperatures`. Raises a ``ValueError`` when both lists are empty."""
    nets = [
        Net(model_name(b, maxout), b, maxout, float(temperature), model_label(b, maxout), "B-cos")
        for b, maxout in (parse_models(b_values) if str(b_values).strip() else [])
    ]
    nets += [Net(CODA, math.nan, False, t, f"CoDA, T = {t:g}", "CoDA") for t in parse_temperatures(coda_temperatures)]
    if not nets:
        raise ValueError("no nets to train: give B values (b_values) or CoDA temperatures (coda_temperatures)")
    return nets


def model_name(b: float, maxout: bool) -> str:
    """The registry name of the digits B-cos net with exponent ``b`` (and MaxOut)."""
    return f"bcos_b{b:g}" + ("_maxout" if maxout else "")


def model_label(b: float, maxout: bool) -> str:
    """``"B = 2"`` or ``"B = 2, MaxOut"``: how the chapter's figures name a net."""
    return f"B = {b:g}" + (", MaxOut" if maxout else "")


def result_rows(
    model: str,
    b: float,
    maxout: bool,
    accuracy: float,
    scores: pd.DataFrame,
    n_grids: int,
    epochs: int,
    temperature: float = math.nan,
) -> pd.DataFrame:
    """One model's rows of a result table: its accuracy and each method's median and mean localisation.

    Parameters
    ----------
    model : str
        The registry name.
    b : float
        Its B (NaN for the conventional model).
    maxout : bool
        Whether it has MaxOut units.
    accuracy : float
        Test accuracy in [0, 1].
    scores : pandas.DataFrame
        The score table of :func:`attrlab.grids.evaluate_setting` for this model (columns method, score).
    n_grids : int
        Grids evaluated.
    epochs : int
        Training epochs.
    temperature : float
        The temperature of its training loss (NaN where it has none).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RESULT_COLUMNS`, one row per method.
    """
    by_method = scores.groupby("method", sort=False)["score"]
    frame = pd.DataFrame({"median": by_method.median(), "mean": by_method.mean()}).reset_index()
    frame = frame.assign(
        model=model,
        b=b,
        maxout=bool(maxout),
        accuracy=float(accuracy),
        n_grids=n_grids,
        epochs=epochs,
        temperature=float(temperature),
    )
    return frame[list(RESULT_COLUMNS)]


def _read(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if "temperature" not in frame.columns:  # tables written before the CoDA ablation
        frame["temperature"] = math.nan
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a result table: it lacks columns {missing}")
    return frame


def write_results(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a result table as CSV, atomically (a temporary file, then a rename)."""
    write_csv(frame, path)


def read_results(path: str | Path) -> pd.DataFrame:
    """A result table written by :func:`write_results` (checked for its columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result table at {path}; run the sweep and collect it (see {__name__})")
    return _read(path)


def collect_sweep(output: str | Path) -> pd.DataFrame:
    """The result tables of every finished point of a sweep's ``output`` folder, in one table.

    Each point's folder (its ``run_dir``) holds :data:`RESULT_FILE`. The conventional model is trained and evaluated
    by every point; its rows are averaged over the points (its grids differ with the nets it shares them with).
    """
    frame = point_tables(output, RESULT_FILE, _read)
    nets = frame[frame["model"] != TWIN].drop_duplicates(["model", "temperature", "method"], keep="last")
    twin = frame[frame["model"] == TWIN]
    if len(twin):
        twin = twin.groupby(["model", "method"], as_index=False, sort=False).agg(
            {
                "b": "first",
                "maxout": "first",
                "accuracy": "mean",
                "median": "mean",
                "mean": "mean",
                "n_grids": "sum",
                "epochs": "first",
                "temperature": "first",
            }
        )
    columns = list(RESULT_COLUMNS)
    combined = pd.concat([nets[columns], twin[columns]], ignore_index=True) if len(twin) else nets[columns]
    order = ["maxout", "b", "model", "temperature", "method"]
    return combined.sort_values(order, na_position="last", ignore_index=True)


def _bcos_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of B-cos nets (neither the conventional twin nor CoDA nets)."""
    return results[results["model"].astype(str).str.startswith("bcos_b")]


def accuracy_table(results: pd.DataFrame) -> pd.DataFrame:
    """The thesis' Table 6.1 layout: accuracy (%) against B, with MaxOut and plain, here and on CIFAR10 there."""
    nets = _bcos_rows(results).drop_duplicates("model")
    rows = []
    for b in THESIS_B:
        row: dict[str, object] = {"B": f"{b:g}"}
        for maxout, kind in ((True, "MaxOut"), (False, "plain")):
            here = nets[(nets["b"] == b) & (nets["maxout"] == maxout)]["accuracy"]
            row[f"{kind}, digits here"] = round(100 * float(here.iloc[0]), 1) if len(here) else math.nan
            row[f"{kind}, thesis CIFAR10"] = THESIS_ACCURACY.get((b, maxout), math.nan)
        rows.append(row)
    table = pd.DataFrame(rows).set_index("B")
    return table.dropna(axis=1, how="all").dropna(axis=0, how="all")


def _family(results: pd.DataFrame, maxout: bool | None) -> tuple[pd.DataFrame, bool]:
    """The nets with (or without) MaxOut; ``None``: the family with more rows (the sweep's MaxOut nets)."""
    nets = _bcos_rows(results)
    with_maxout = nets["maxout"].astype(bool)
    if maxout is None:
        maxout = bool(with_maxout.sum() >= (~with_maxout).sum())
    return nets[with_maxout == maxout], maxout


def localisation_table(results: pd.DataFrame, maxout: bool | None = None) -> pd.DataFrame:
    """Fig. 6.5's numbers: per B, the accuracy and each method's median localisation.

    ``maxout`` picks the nets with or without MaxOut; ``None`` the family with more of them.
    """
    nets, maxout = _family(results, maxout)
    if nets.empty:
        raise ValueError(f"the result table has no nets with maxout={maxout}")
    table = nets.pivot_table(index="b", columns="method", values="median")
    table.insert(0, "accuracy", nets.groupby("b")["accuracy"].first())
    return table.sort_index()


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return float(pd.Series(list(x)).corr(pd.Series(list(y)), method="spearman"))


def check_claims(results: pd.DataFrame, rank_threshold: float = 0.5, slow_drop: float = 3.0) -> pd.DataFrame:
    """The thesis' claims of ch. 6 tested on a result table, one row each.

    Parameters
    ----------
    results : pandas.DataFrame
        A result table (:data:`RESULT_COLUMNS`) with MaxOut nets for several B, plain nets and the conventional model.
    rank_threshold : float
        The smallest Spearman correlation of the inherent maps' median localisation with B that counts as "rises".
    slow_drop : float
        The largest drop in accuracy (percentage points) from the best B to the largest B that counts as "slowly".

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CLAIM_COLUMNS`; "holds" is None where the table lacks the data.
    """
    claims: list[tuple[str, str, str, bool | None]] = []
    nets = _bcos_rows(results)
    # the B trend is read on the family with more B values (the sweep's MaxOut nets; plain nets in a default run)
    family, use_maxout = _family(results, None)
    kind = "MaxOut nets" if use_maxout else "nets without MaxOut"
    inherent = family[family["method"] == INHERENT].sort_values("b")
    if len(inherent) >= 3:
        rho = _spearman(inherent["b"], inherent["median"])
        text = ", ".join(f"{b:g}: {m:.3f}" for b, m in zip(inherent["b"], inherent["median"]))
        claims.append(
            (
                "Localisation of the inherent maps rises with B (Fig. 6.5)",
                f"Spearman correlation of the median with B ({kind}) >= {rank_threshold:g}",
                f"{rho:.2f} (medians by B: {text})",
                bool(rho >= rank_threshold),
            )
        )
    else:
        claims.append(("Localisation of the inherent maps rises with B (Fig. 6.5)", "needs 3 or more B", "-", None))
    medians = nets.pivot_table(index="model", columns="method", values="median")
    posthoc = [m for m in POSTHOC if m in medians.columns]
    if INHERENT in medians.columns and posthoc:
        wins = medians[INHERENT] > medians[posthoc].max(axis=1)
        claims.append(
            (
                "Inherent maps beat every post-hoc method on the same B-cos net (Fig. 6.6)",
                f"median {INHERENT} > the best of {', '.join(posthoc)}, on every net",
                f"on {int(wins.sum())} of {len(wins)} nets",
                bool(wins.all()),
            )
        )
    twin = results[results["model"] == TWIN].set_index("method")["median"]
    twin_posthoc = [m for m in POSTHOC if m in twin.index]
    if INHERENT in medians.columns and twin_posthoc:
        best_twin = float(twin[twin_posthoc].max())
        wins = medians[INHERENT] > best_twin
        claims.append(
            (
                "Inherent maps beat every post-hoc method on the conventional model (Fig. 6.6)",
                f"median {INHERENT} of each net > the best post-hoc median on the conventional model",
                f"on {int(wins.sum())} of {len(wins)} nets (conventional best: {best_twin:.3f})",
                bool(wins.all()),
            )
        )
    accuracy = family.drop_duplicates("model").sort_values("b")
    if len(accuracy) >= 3:
        rho = _spearman(accuracy["b"], accuracy["accuracy"])
        drop = 100 * (float(accuracy["accuracy"].max()) - float(accuracy["accuracy"].iloc[-1]))
        claims.append(
            (
                "Accuracy falls slowly with B (Table 6.1: 1.4 points from the best to B = 2.5)",
                f"Spearman correlation of accuracy with B < 0, and at most {slow_drop:g} points from the best to the "
                f"largest B ({kind})",
                f"correlation {rho:.2f}, drop {drop:.1f} points to B = {float(accuracy['b'].iloc[-1]):g}",
                bool(rho < 0 and drop <= slow_drop),
            )
        )
    else:
        claims.append(("Accuracy falls slowly with B (Table 6.1)", "needs 3 or more B", "-", None))
    return pd.DataFrame(claims, columns=list(CLAIM_COLUMNS))


def temperature_table(results: pd.DataFrame) -> pd.DataFrame:
    """The CoDA ablation's numbers: per loss temperature T, the accuracy and each method's median localisation."""
    nets = results[results["model"] == CODA]
    if nets.empty:
        raise ValueError(f"the result table has no {CODA!r} nets")
    table = nets.pivot_table(index="temperature", columns="method", values="median")
    table.insert(0, "accuracy", nets.groupby("temperature")["accuracy"].first())
    return table.sort_index()


def coda_claims(results: pd.DataFrame, rank_threshold: float = 0.5, slow_drop: float = 3.0) -> pd.DataFrame:
    """The thesis' claims of the CoDA temperature ablation (ch. 5) tested on a result table, one row each.

    Parameters
    ----------
    results : pandas.DataFrame
        A result table with ``coda`` nets for several temperatures (and the conventional model).
    rank_threshold : float
        The smallest Spearman correlation of the inherent maps' median localisation with T that counts as "rises".
    slow_drop : float
        The largest drop in accuracy (percentage points) from the best T to the largest T that counts as "slightly".

    Returns
    -------
    pandas.DataFrame
        Columns as :func:`check_claims`.
    """
    nets = results[results["model"] == CODA]
    inherent = nets[nets["method"] == CODA_INHERENT].sort_values("temperature")
    claims: list[tuple[str, str, str, bool | None]] = []
    if len(inherent) >= 3:
        rho = _spearman(inherent["temperature"], inherent["median"])
        text = ", ".join(f"{t:g}: {m:.3f}" for t, m in zip(inherent["temperature"], inherent["median"]))
        claims.append(
            (
                "CoDA: localisation of the inherent maps rises with the temperature T (ch. 5)",
                f"Spearman correlation of the median with T >= {rank_threshold:g}",
                f"{rho:.2f} (medians by T: {text})",
                bool(rho >= rank_threshold),
            )
        )
        accuracy = inherent["accuracy"]
        drop = 100 * (float(accuracy.max()) - float(accuracy.iloc[-1]))
        claims.append(
            (
                "CoDA: accuracy falls only slightly at high T (93.6 % at T = 10, 93.2 % at T = 1000)",
                f"at most {slow_drop:g} points from the best T to the largest",
                f"drop {drop:.1f} points to T = {float(inherent['temperature'].iloc[-1]):g}",
                bool(drop <= slow_drop),
            )
        )
    else:
        claims.append(("CoDA: localisation rises with the temperature T (ch. 5)", "needs 3 or more T", "-", None))
    medians = nets.pivot_table(index="temperature", columns="method", values="median")
    posthoc = [m for m in POSTHOC if m in medians.columns]
    if CODA_INHERENT in medians.columns and posthoc:
        wins = medians[CODA_INHERENT] > medians[posthoc].max(axis=1)
        claims.append(
            (
                "CoDA: inherent maps beat every post-hoc method on the same net (ch. 5)",
                f"median {CODA_INHERENT} > the best of {', '.join(posthoc)}, at every T",
                f"at {int(wins.sum())} of {len(wins)} temperatures",
                bool(wins.all()),
            )
        )
    return pd.DataFrame(claims, columns=list(CLAIM_COLUMNS))


def alignment_claim(matched: Sequence[float], threshold: float = 0.95) -> pd.DataFrame:
    """Fig. 5.4's claim on :func:`attrlab.interpretable.alignment.matched_similarity`'s output, as one claims row."""
    values = [float(v) for v in matched]
    return pd.DataFrame(
        [
            (
                "A rank-3 DAU trained on noisy copies of three digits encodes the clean digits as eigenvectors "
                "(Fig. 5.4)",
                f"cosine similarity of each digit with its eigenvector of A B >= {threshold:g}",
                ", ".join(f"{v:.3f}" for v in values),
                bool(min(values) >= threshold),
            )
        ],
        columns=list(CLAIM_COLUMNS),
    )


#: pixel-removal orders: least relevant first (the thesis' Fig. 5.9) and most relevant first (its App. B.10a)
REMOVAL_ORDERS = ("lerf", "morf")


def removal_curves(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    order: str = "lerf",
    step: int = 8,
    limit: float = 0.25,
    baseline: float = 0.0,
) -> pd.DataFrame:
    """Pixel-removal curves (thesis Fig. 5.9): the mean target probability as pixels are removed in a map's order.

    Each curve is :func:`attrlab.quality.pixel_flipping` (softmax scores, the maps' signed order) on the map, or on its
    negation for ``"lerf"``; the unperturbed images are its first point.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.
    x, y : torch.Tensor
        Images (N, C, H, W) and their explained classes (N,).
    maps : mapping of str to torch.Tensor
        Method label -> maps (N, 1, H, W) of ``x`` for ``y``.
    order : str
        ``"lerf"`` (least relevant first) or ``"morf"`` (most relevant first).
    step : int
        Pixels removed per step.
    limit : float
        The largest fraction of the pixels removed that the table keeps (the thesis plots up to 25 %).
    baseline : float
        The value a removed pixel gets (0: the middle of attrlab's [-1, 1] range).

    Returns
    -------
    pandas.DataFrame
        Columns method, order, fraction, probability: one row per point of each curve.
    """
    from ..quality import pixel_flipping

    if order not in REMOVAL_ORDERS:
        raise ValueError(f"unknown removal order {order!r}; valid orders: {', '.join(REMOVAL_ORDERS)}")
    if not 0 < limit <= 1:
        raise ValueError(f"limit must lie in (0, 1], got {limit!r}")
    pixels = x[0, 0].numel()
    with torch.no_grad():
        start = float(model.eval()(x).softmax(1).gather(1, y[:, None]).mean())
    frames = []
    for label, a in maps.items():
        ordered = -a if order == "lerf" else a
        curves = pixel_flipping(model, x, y, ordered, features_in_step=step, baseline=baseline, normalise="none")
        removed = torch.arange(1, curves.shape[1] + 1).clamp(max=math.ceil(pixels / step)) * step
        fraction = (removed.clamp(max=pixels) / pixels).tolist()
        points = [(0.0, start)] + [(f, float(p)) for f, p in zip(fraction, curves.mean(0).tolist()) if f <= limit]
        frames.append(pd.DataFrame(points, columns=["fraction", "probability"]).assign(method=label, order=order))
    return pd.concat(frames, ignore_index=True)[["method", "order", "fraction", "probability"]]


def removal_claims(curves: pd.DataFrame, inherent: str) -> pd.DataFrame:
    """The thesis' pixel-removal claims (Fig. 5.9, App. B.10a) on one net's :func:`removal_curves`, one row each.

    Removing the least relevant pixels first keeps the target probability higher, and removing the most relevant
    first lowers it faster, for the inherent maps (label ``inherent``) than for every other method; each curve is
    summarised by its mean probability.
    """
    means = curves.groupby(["order", "method"])["probability"].mean()
    claims = []
    claim_texts = {
        "lerf": "Removing the least relevant pixels first keeps the probability higher for the inherent maps than for "
        "post-hoc methods (Fig. 5.9)",
        "morf": "Removing the most relevant pixels first lowers the probability faster for the inherent maps than for "
        "post-hoc methods (App. B.10a)",
    }
    for order, better, text in (("lerf", max, "higher"), ("morf", min, "lower")):
        if order not in means.index.get_level_values("order"):
            continue
        part = means.loc[order]
        others = part.drop(inherent)
        best_other = better(others.items(), key=lambda item: item[1])
        holds = part[inherent] > best_other[1] if order == "lerf" else part[inherent] < best_other[1]
        claims.append(
            (
                claim_texts[order],
                f"mean probability of the {inherent} curve {text} than of every other method's",
                f"{inherent} {part[inherent]:.3f}, best other {best_other[0]} {best_other[1]:.3f}",
                bool(holds),
            )
        )
    return pd.DataFrame(claims, columns=list(CLAIM_COLUMNS))


def convergence(steps: Sequence[int], maps: np.ndarray | torch.Tensor) -> pd.DataFrame:
    """How close a method's maps are, at every snapshot step, to its maps at the end of training.

    Parameters
    ----------
    steps : sequence of int
        The snapshot steps (increasing), as :func:`attrlab.track.load_snapshots` returns them.
    maps : array
        (steps, images, H, W) maps at those steps.

    Returns
    -------
    pandas.DataFrame
        Columns step and similarity: the mean over images of the cosine similarity of each image's map with its
        map at the last step (1 at the last step; maps that are all zero count as similarity 0).
    """
    tensor = torch.as_tensor(np.asarray(maps), dtype=torch.float64).flatten(2)  # (steps, images, pixels)
    if tensor.shape[0] != len(steps) or len(steps) == 0:
        raise ValueError(f"maps hold {tensor.shape[0]} steps but {len(steps)} steps were given")
    final = tensor[-1:]
    norms = tensor.norm(dim=2) * final.norm(dim=2)
    cosine = (tensor * final).sum(2) / torch.where(norms > 0, norms, torch.ones_like(norms))
    return pd.DataFrame({"step": list(steps), "similarity": cosine.mean(1).tolist()})


def convergence_step(frame: pd.DataFrame, level: float = 0.9) -> int:
    """The first step from which a :func:`convergence` table's similarity stays at or above ``level`` to the end."""
    below = frame.index[frame["similarity"] < level]
    if len(below) == 0:
        return int(frame["step"].iloc[0])
    after = frame.loc[below[-1] + 1 :, "step"] if below[-1] + 1 in frame.index else frame["step"].iloc[-1:]
    return int(after.iloc[0])


def convergence_claim(inherent: pd.DataFrame, posthoc: pd.DataFrame, level: float = 0.9) -> pd.DataFrame:
    """Whether the inherent maps converge earlier than the post-hoc ones, by :func:`convergence_step` as a fraction
    of each run's training (the runs may differ in length), as one claims row."""
    fractions = {}
    for name, frame in (("inherent", inherent), ("post-hoc", posthoc)):
        frame = frame.reset_index(drop=True)
        fractions[name] = convergence_step(frame, level) / int(frame["step"].iloc[-1])
    return pd.DataFrame(
        [
            (
                "Beyond the thesis: inherent explanations converge earlier in training than post-hoc ones",
                f"first step from which the maps' mean cosine similarity with the final maps stays >= {level:g}, as a "
                "fraction of training: B-cos contributions earlier than LRP on the conventional model",
                f"B-cos at {fractions['inherent']:.0%}, LRP at {fractions['post-hoc']:.0%} of training",
                bool(fractions["inherent"] < fractions["post-hoc"]),
            )
        ],
        columns=list(CLAIM_COLUMNS),
    )


#: Fig. 6.13's normalisation layers, in the thesis' order, and how the chapter names them
NORM_LABELS = {
    "batch": "BatchNorm",
    "layer": "LayerNorm",
    "instance": "InstanceNorm",
    "position": "PositionNorm",
    "all": "AllNorm",
}


def bias_share_frame(shares: Mapping[str, np.ndarray | torch.Tensor]) -> pd.DataFrame:
    """Long table of Fig. 6.13: one row per (net, image) with the bias share of its top-2 logit difference.

    ``shares`` maps a net's label to its per-image :func:`attrlab.interpretable.bias.bias_share` values; images whose
    top-2 logits tie (NaN) are dropped.
    """
    frames = []
    for label, values in shares.items():
        array = torch.as_tensor(np.asarray(values), dtype=torch.float64).flatten().numpy()
        frames.append(pd.DataFrame({"net": label, "share": array[~np.isnan(array)]}))
    if not frames:
        raise ValueError("no nets given")
    return pd.concat(frames, ignore_index=True)


def bias_share_table(frame: pd.DataFrame, decisive: float = 0.5) -> pd.DataFrame:
    """Per net: the median, mean and quartiles of the bias share, the fraction of images where it is at least
    ``decisive`` (the biases make at least that part of the top-2 difference), and its largest magnitude."""
    grouped = frame.groupby("net", sort=False)["share"]
    table = pd.DataFrame(
        {
            "median": grouped.median(),
            "mean": grouped.mean(),
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
            f"share >= {decisive:g}": grouped.apply(lambda s: float((s >= decisive).mean())),
            "max |share|": grouped.apply(lambda s: float(s.abs().max())),
            "images": grouped.size(),
        }
    )
    table.index.name = "net"
    return table


def bias_claims(table: pd.DataFrame, biased: Mapping[str, str], bias_free: str, decisive: float = 0.5) -> pd.DataFrame:
    """The thesis' claims of Fig. 6.13 tested on :func:`bias_share_table`'s rows, one row each.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`bias_share_table`'s output.
    biased : mapping of str to str
        Normalisation kind (``"batch"``, ``"layer"``, ...) -> the label of its net with biases in ``table``.
    bias_free : str
        The label of a net with bias-free norms.
    decisive : float
        The median share from which the biases "account for most of the difference".

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CLAIM_COLUMNS`; "holds" is None where the table lacks the net.
    """
    claims: list[tuple[str, str, str, bool | None]] = []

    def median(kind: str) -> float | None:
        label = biased.get(kind)
        return float(table.loc[label, "median"]) if label in table.index else None

    known = {kind: median(kind) for kind in ("batch", "instance")}
    measured = ", ".join(f"{NORM_LABELS[k]} {v:.3f}" for k, v in known.items() if v is not None) or "-"
    complete = all(v is not None for v in known.values())
    claims.append(
        (
            "With BatchNorm and InstanceNorm (with biases) the bias term accounts for most of the top-2 logit "
            "difference (Fig. 6.13)",
            f"median share >= {decisive:g} for each",
            measured,
            bool(all(v is not None and v >= decisive for v in known.values())) if complete else None,
        )
    )
    layer = median("layer")
    claims.append(
        (
            "With LayerNorm the bias term is not decisive (Fig. 6.13)",
            f"median share < {decisive:g}",
            "-" if layer is None else f"{layer:.3f}",
            None if layer is None else bool(layer < decisive),
        )
    )
    label = biased.get("position")
    mean = float(table.loc[label, "mean"]) if label in table.index else None
    claims.append(
        (
            "With PositionNorm the bias term on average favours the second class (Fig. 6.13)",
            "mean share < 0",
            "-" if mean is None else f"{mean:.3f}",
            None if mean is None else bool(mean < 0),
        )
    )
    exact: bool | None = None
    measured = "-"
    if bias_free in table.index:
        row = table.loc[bias_free]
        exact = bool(row["max |share|"] == 0)
        measured = f"largest |share| {row['max |share|']:.3g} over {int(row['images'])} images"
    claims.append(
        (
            "Bias-free normalisation makes b(x) = 0, so the contributions explain the whole decision (eq. 6.27)",
            "bias share exactly 0 on every image",
            measured,
            exact,
        )
    )
    return pd.DataFrame(claims, columns=list(CLAIM_COLUMNS))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attrlab.interpretable.study OUTPUT TABLE``: collect a sweep's points into one result table."""
    return collect_command(
        argv,
        "Collect the B-cos sweep's result tables into one CSV.",
        "book/results/bcos_b_sweep.csv",
        collect_sweep,
        write_results,
        "model",
    )


__all__ = [
    "CLAIM_COLUMNS",
    "NORM_LABELS",
    "bias_claims",
    "bias_share_frame",
    "bias_share_table",
    "CODA",
    "CODA_INHERENT",
    "INHERENT",
    "Net",
    "POSTHOC",
    "RESULT_COLUMNS",
    "REMOVAL_ORDERS",
    "RESULT_FILE",
    "THESIS_ACCURACY",
    "TWIN",
    "accuracy_table",
    "alignment_claim",
    "check_claims",
    "coda_claims",
    "collect_sweep",
    "convergence",
    "convergence_claim",
    "convergence_step",
    "localisation_table",
    "main",
    "model_label",
    "model_name",
    "parse_models",
    "plan_nets",
    "parse_temperatures",
    "read_results",
    "removal_claims",
    "removal_curves",
    "result_rows",
    "temperature_table",
    "write_results",
]

if __name__ == "__main__":
    raise SystemExit(main())
