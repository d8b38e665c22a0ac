"""Correlation analysis of tracked attribution summaries against performance: the seed's Spearman tables, with CIs.

Spearman's rho and its p-value come from :func:`scipy.stats.spearmanr`. The per-step series of a training run are
strongly autocorrelated (step t+1 is step t plus one small update), so the p-value, which assumes independent pairs,
overstates significance badly. Next to it every coefficient gets a moving-block bootstrap confidence interval
(Kunsch 1989): blocks of consecutive steps are resampled with replacement, which keeps the short-range dependence
inside each block; the default block length grows like n^(1/3).

Layouts: :func:`method_table` is seed 000's Tables 2-9 (rows: performance series, columns: summaries, one table per
method and run); :func:`loss_table` is its Table 1 (rows: method x loss, columns: run x {norm, entropy}). For the
prose of a chapter, :func:`rho_text` states one coefficient with its interval and :func:`change_phrase` how a
summary moved between the first and the last tenth of the tracked steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

#: seed 000's performance rows -> metric columns of the trainer
PERFORMANCE = {
    "test loss": "test_loss",
    "train loss": "train_loss",
    "attribution loss": "attr_loss",
    "test accuracy": "test_acc",
    "train accuracy": "train_acc",
    "attribution accuracy": "attr_acc",
}
#: seed 000's summary columns -> tracker columns
SUMMARY_LABELS = {
    "positive norm": "norm_pos",
    "negative norm": "norm_neg",
    "positive entropy": "entropy_pos",
    "negative entropy": "entropy_neg",
}


def aligned(
    metrics: pd.DataFrame, tracked: pd.DataFrame, performance: str, summary: str
) -> tuple[np.ndarray, np.ndarray]:
    """The two series on the steps where both are defined (``tracked`` holds one method, indexed or keyed by step)."""
    left = metrics.set_index("step")[performance] if "step" in metrics.columns else metrics[performance]
    right = tracked.set_index("step")[summary] if "step" in tracked.columns else tracked[summary]
    both = pd.concat([left, right], axis=1, join="inner").dropna()
    return both.iloc[:, 0].to_numpy(float), both.iloc[:, 1].to_numpy(float)


def _rank_rows(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values, axis=1)


def block_bootstrap_ci(
    x: np.ndarray,
    y: np.ndarray,
    block: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of Spearman's rho under a moving-block bootstrap of the paired series (all resamples at once)."""
    n = len(x)
    if n != len(y):
        raise ValueError(f"the series differ in length: {n} and {len(y)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    if n < 4:
        return (math.nan, math.nan)
    block = block or max(1, round(n ** (1 / 3)))
    if not 1 <= block <= n:
        raise ValueError(f"block length must be between 1 and the series length {n}, got {block}")
    rng = np.random.default_rng(seed)
    blocks = -(-n // block)
    starts = rng.integers(0, n - block + 1, size=(resamples, blocks))
    index = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    rx, ry = _rank_rows(x[index]), _rank_rows(y[index])
    rx -= rx.mean(1, keepdims=True)
    ry -= ry.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    rho = rho[np.isfinite(rho)]
    if rho.size == 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    low, high = np.quantile(rho, [tail, 1 - tail])
    return float(low), float(high)


def correlations(
    metrics: pd.DataFrame,
    tracked: pd.DataFrame,
    performance: Mapping[str, str] = PERFORMANCE,
    summaries: Mapping[str, str] = SUMMARY_LABELS,
    bootstrap: bool = True,
    **bootstrap_options,
) -> pd.DataFrame:
    """Long table: one row per (performance, summary) with rho, p, the bootstrap CI and the number of steps used."""
    missing = [c for c in performance.values() if c not in metrics.columns]
    missing += [c for c in summaries.values() if c not in tracked.columns]
    if missing:
        raise ValueError(f"columns not found: {missing}")
    rows = []
    for performance_label, performance_column in performance.items():
        for summary_label, summary_column in summaries.items():
            x, y = aligned(metrics, tracked, performance_column, summary_column)
            if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                result = stats.spearmanr(x, y)
                rho, p = float(result.statistic), float(result.pvalue)
            else:  # a constant or too short series has no rank correlation
                rho, p = math.nan, math.nan
            low, high = block_bootstrap_ci(x, y, **bootstrap_options) if bootstrap else (math.nan, math.nan)
            rows.append(
                {
                    "performance": performance_label,
                    "summary": summary_label,
                    "rho": rho,
                    "p": p,
                    "ci_low": low,
                    "ci_high": high,
                    "steps": len(x),
                }
            )
    return pd.DataFrame(rows)


def method_table(long: pd.DataFrame, value: str = "rho") -> pd.DataFrame:
    """Seed Tables 2-9 layout: performance rows x summary columns, in the seed's order."""
    table = long.pivot(index="performance", columns="summary", values=value)
    rows = [r for r in PERFORMANCE if r in table.index] + [r for r in table.index if r not in PERFORMANCE]
    columns = [c for c in SUMMARY_LABELS if c in table.columns] + [c for c in table.columns if c not in SUMMARY_LABELS]
    return table.loc[rows, columns]


def loss_table(results: Mapping[str, Mapping[str, pd.DataFrame]]) -> pd.DataFrame:
    """Seed Table 1 layout from ``{run label: {method: correlations(...) long table}}``.

    Rows (method, test loss / train loss); columns (run, norm / entropy) with the positive-part summaries.
    """
    pieces: dict[tuple[str, str], dict[tuple[str, str], float]] = {}
    for run_label, by_method in results.items():
        for method, long in by_method.items():
            chosen = long[long["performance"].isin(["test loss", "train loss"])]
            chosen = chosen[chosen["summary"].isin(["positive norm", "positive entropy"])]
            for _, row in chosen.iterrows():
                column = (run_label, row["summary"].split()[1])
                pieces.setdefault(column, {})[(method, row["performance"])] = row["rho"]
    table = pd.DataFrame(pieces)
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["run", "summary"])
    table.index = pd.MultiIndex.from_tuples(table.index, names=["method", "performance"])
    return table


def trend(series: pd.Series, normalise: bool = True) -> pd.Series:
    """The seed figures' trend curve: the expanding mean of a series, min-max normalised to [0, 1] if asked."""
    curve = series.dropna().expanding().mean()
    if normalise:
        span = curve.max() - curve.min()
        curve = (curve - curve.min()) / span if span > 0 else curve * 0.0
    return curve


def first_last_means(series: pd.Series, parts: int = 10) -> tuple[float, float]:
    """The means of the first and of the last ``1/parts`` of a series' defined values (at least one value each).

    Parameters
    ----------
    series : pandas.Series
        A per-step series (NaNs are dropped first).
    parts : int
        The share of the series averaged at each end is ``1/parts`` (10: the first and last tenth).

    Returns
    -------
    (float, float)
        The mean at the start and at the end.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    values = series.dropna()
    if values.empty:
        raise ValueError(f"series {series.name!r} has no defined value")
    count = max(1, len(values) // parts)
    return float(values.iloc[:count].mean()), float(values.iloc[-count:].mean())


def change_phrase(series: pd.Series, parts: int = 10) -> str:
    """How a series moved, for prose: "grows from 0.12 to 3.4" or "falls from ..." (:func:`first_last_means`)."""
    start, end = first_last_means(series, parts)
    direction = "grows" if end > start else "falls"
    return f"{direction} from {start:.3g} to {end:.3g}"


def correlation_row(long: pd.DataFrame, performance: str, summary: str) -> pd.Series:
    """The row of a :func:`correlations` table for one performance series and one summary.

    Parameters
    ----------
    long : pandas.DataFrame
        A :func:`correlations` table.
    performance, summary : str
        Row labels, e.g. "test loss" and "positive norm".

    Returns
    -------
    pandas.Series
        rho, p, ci_low, ci_high and steps of that pair.
    """
    chosen = long[(long["performance"] == performance) & (long["summary"] == summary)]
    if chosen.empty:
        raise ValueError(
            f"no correlation of {performance!r} with {summary!r}; performance series: "
            f"{', '.join(dict.fromkeys(long['performance']))}; summaries: {', '.join(dict.fromkeys(long['summary']))}"
        )
    return chosen.iloc[0]


def rho_text(long: pd.DataFrame, performance: str, summary: str, level: float = 0.95) -> str:
    """One coefficient with its block-bootstrap interval (computed at ``level``), for prose; a constant series
    has none."""
    row = correlation_row(long, performance, summary)
    if np.isnan(row["rho"]):
        return "undefined (a constant series)"
    return f"{row['rho']:.2f} ({level:.0%} block-bootstrap interval {row['ci_low']:.2f} to {row['ci_high']:.2f})"
