"""Reading a gamma search: per-group marginal curves (Pahde et al.'s Fig. 2), best and worst configurations (Fig. 3),
the Pareto front across the metrics, and their section 4.6 claims computed on the table.

Every function takes the search table (:func:`attrlab.quality.search.read_results`: one row per configuration with
the columns ``low, middle, high, head, canonized`` and one column per metric) and returns a table or a bool; the
direction of each metric (higher or lower is better) comes from :data:`attrlab.quality.battery.METRICS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .battery import METRICS
from .gamma import GAMMAS, GROUPS

#: the metric families of the claims: robustness, randomisation, faithfulness
ROBUSTNESS, RANDOMISATION, FAITHFULNESS = "avg_sensitivity", "random_logit", "aopc"


#: the grids a stored search is read as, largest first: the full grid, then the coarser grid run first
SUBGRIDS: tuple[tuple[float, ...], ...] = (GAMMAS, (0.0, 0.25, 1.0, 50.0))


def complete_grid(table: pd.DataFrame, gammas: Sequence[float]) -> pd.DataFrame | None:
    """The rows of ``table`` whose four gammas all lie in ``gammas``, when every such configuration is there
    (``len(gammas) ** 4`` per canonization state, both states); None otherwise.
    """
    if table.empty:
        return None
    inside = table[list(GROUPS)].isin([float(g) for g in gammas]).all(axis=1)
    part = table[inside].drop_duplicates([*GROUPS, "canonized"])
    expected = len(set(gammas)) ** len(GROUPS) * 2
    return part.reset_index(drop=True) if len(part) == expected else None


def largest_complete_grid(
    table: pd.DataFrame, grids: Sequence[Sequence[float]] = SUBGRIDS
) -> tuple[pd.DataFrame, tuple[float, ...]] | None:
    """The first of ``grids`` that ``table`` holds completely, with its gammas; None when it holds none.

    A search interrupted before its end still gives complete marginal curves on a coarser grid that it finished.
    """
    for gammas in grids:
        part = complete_grid(table, gammas)
        if part is not None:
            return part, tuple(float(g) for g in gammas)
    return None


def _metrics_of(table: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    found = [m for m in METRICS if m in table.columns] if metrics is None else list(metrics)
    unknown = [m for m in found if m not in METRICS or m not in table.columns]
    if unknown or not found:
        raise ValueError(
            f"metrics {unknown or found} are not in the table; valid: {[m for m in METRICS if m in table]}"
        )
    return found


def oriented(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The metric columns signed so that higher is better (lower-is-better metrics negated)."""
    metrics = _metrics_of(table, metrics)
    return pd.DataFrame({m: table[m] if METRICS[m][0] else -table[m] for m in metrics}, index=table.index)


def marginal_curves(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Each metric against the gamma of one group, averaged over the gammas of the other groups (Fig. 2).

    Parameters
    ----------
    table : pandas.DataFrame
        The search table.
    metrics : sequence of str, optional
        The metrics (default: every metric column).

    Returns
    -------
    pandas.DataFrame
        Columns ``metric, group, gamma, canonized, value``.
    """
    metrics = _metrics_of(table, metrics)
    parts = []
    for group in GROUPS:
        means = table.groupby(["canonized", group])[metrics].mean().reset_index()
        long = means.melt(id_vars=["canonized", group], var_name="metric", value_name="value")
        parts.append(long.rename(columns={group: "gamma"}).assign(group=group))
    out = pd.concat(parts, ignore_index=True)
    return out[["metric", "group", "gamma", "canonized", "value"]]


def group_effects(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """How much each group's gamma moves each metric: the range (max - min) of its marginal curve.

    Returns
    -------
    pandas.DataFrame
        Index (metric, canonized), one column per group.
    """
    curves = marginal_curves(table, metrics)
    ranges = curves.groupby(["metric", "canonized", "group"])["value"].agg(lambda v: v.max() - v.min())
    return ranges.unstack("group")[list(GROUPS)]


def best_and_worst(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The best and the worst configuration of each metric (Fig. 3), over both canonization states.

    Returns
    -------
    pandas.DataFrame
        Columns ``metric, which ("best"/"worst"), low, middle, high, head, canonized, value``.
    """
    metrics = _metrics_of(table, metrics)
    signed = oriented(table, metrics)
    rows = []
    for metric in metrics:
        for which, index in (("best", signed[metric].idxmax()), ("worst", signed[metric].idxmin())):
            row = table.loc[index]
            rows.append(
                {"metric": metric, "which": which, **{g: row[g] for g in GROUPS}, "canonized": bool(row["canonized"])}
                | {"value": row[metric]}
            )
    return pd.DataFrame(rows)


def pareto_front(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.Series:
    """Which configurations are Pareto-optimal across ``metrics``: no other is at least as good in every metric and
    better in one.

    Parameters
    ----------
    table : pandas.DataFrame
        The search table.
    metrics : sequence of str, optional
        The metrics (default: every metric column).

    Returns
    -------
    pandas.Series
        Boolean, aligned with ``table``'s index.
    """
    values = oriented(table, metrics).to_numpy(dtype=float)
    n = len(values)
    dominated = np.zeros(n, dtype=bool)
    chunk = 256  # rows compared against all others at once: n x chunk x metrics booleans
    for start in range(0, n, chunk):
        block = values[start : start + chunk]
        at_least = (values[None, :, :] >= block[:, None, :]).all(2)
        better = (values[None, :, :] > block[:, None, :]).any(2)
        dominated[start : start + chunk] = (at_least & better).any(1)
    return pd.Series(~dominated, index=table.index, name="pareto")


def check_search_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Pahde et al.'s section 4.6 claims, each computed on the search table and marked as holding or not.

    Claims: (1) robustness (Average Sensitivity) depends mainly on the gamma of the low layers; (2) randomisation
    (Random Logit) mainly on the gamma of the head; (3) canonization shifts the faithfulness-optimal (AOPC) low-layer
    gamma; (4) a high gamma (10 or more) in the low layers beats gamma = 0 there for every metric. "Mainly" is read as
    "the group whose gamma moves the metric's marginal curve the most", in each canonization state.

    Returns
    -------
    pandas.DataFrame
        Columns ``claim, measured, holds``.
    """
    effects = group_effects(table)
    curves = marginal_curves(table)
    rows = []
    for number, (metric, group, text) in enumerate(
        (
            (ROBUSTNESS, "low", "robustness depends mainly on the low layers' gamma"),
            (RANDOMISATION, "head", "randomisation depends mainly on the head's gamma"),
        ),
        start=1,
    ):
        if metric not in effects.index.get_level_values("metric"):
            continue
        strongest = effects.loc[metric].idxmax(axis=1)
        rows.append(
            {
                "claim": f"({number}) {text}",
                "measured": "; ".join(
                    f"{'canonized' if c else 'not canonized'}: {strongest[c]}" for c in strongest.index
                ),
                "holds": bool((strongest == group).all()),
            }
        )
    if FAITHFULNESS in effects.index.get_level_values("metric"):
        low = curves[(curves.metric == FAITHFULNESS) & (curves.group == "low")]
        best = {bool(c): float(part.loc[part.value.idxmax(), "gamma"]) for c, part in low.groupby("canonized")}
        if len(best) == 2:
            rows.append(
                {
                    "claim": "(3) canonization shifts the faithfulness-optimal low-layer gamma",
                    "measured": f"best low gamma for AOPC: not canonized {best[False]:g}, canonized {best[True]:g}",
                    "holds": best[False] != best[True],
                }
            )
    low = curves[curves.group == "low"]
    wins, total = [], 0
    for (metric, canonized), part in low.groupby(["metric", "canonized"]):
        sign = 1.0 if METRICS[metric][0] else -1.0
        values = part.set_index("gamma")["value"] * sign
        high = values[values.index >= 10].max()
        total += 1
        if high > values.loc[0.0]:
            wins.append(f"{metric} ({'canon.' if canonized else 'orig.'})")
    if total:
        rows.append(
            {
                "claim": "(4) a high gamma in the low layers beats gamma = 0 there for every metric",
                "measured": f"{len(wins)} of {total} (metric, canonization) pairs",
                "holds": len(wins) == total,
            }
        )
    return pd.DataFrame(rows, columns=["claim", "measured", "holds"])


__all__ = [
    "SUBGRIDS",
    "best_and_worst",
    "complete_grid",
    "largest_complete_grid",
    "check_search_claims",
    "group_effects",
    "marginal_curves",
    "oriented",
    "pareto_front",
]
