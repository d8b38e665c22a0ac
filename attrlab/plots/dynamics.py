"""Training-dynamics plots: tracked attribution summaries over steps, their trends against performance, and tables.

Inputs are the run's ``metrics`` table and the tracker's ``attributions`` table (:func:`attrlab.track.tracked_frame`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis import PERFORMANCE, SUMMARY_LABELS, trend
from .style import book_figure

_HALF_COLORS = {"": "black", "_train": "tab:green", "_test": "tab:purple"}


@book_figure
def plot_summary_curves(
    tracked: pd.DataFrame, methods: Sequence[str], summaries: Mapping[str, str] = SUMMARY_LABELS
) -> Figure:
    """One panel per (method, summary): the per-step mean over the attribution set and over its train/test halves."""
    figure, axes = plt.subplots(
        len(methods),
        len(summaries),
        figsize=(3.1 * len(summaries), 2.4 * len(methods)),
        layout="constrained",
        squeeze=False,
    )
    for row, method in enumerate(methods):
        frame = tracked[tracked["method"] == method]
        if frame.empty:
            raise ValueError(f"no tracked rows for method {method!r}; tracked: {sorted(tracked['method'].unique())}")
        for col, (label, column) in enumerate(summaries.items()):
            ax = axes[row, col]
            for suffix, color in _HALF_COLORS.items():
                name = {"": "all", "_train": "train half", "_test": "test half"}[suffix]
                ax.plot(
                    frame["step"],
                    frame[f"{column}{suffix}"],
                    color=color,
                    linewidth=1.2 if not suffix else 0.8,
                    alpha=1.0 if not suffix else 0.7,
                    label=name,
                )
            nan_column = f"{column}_nan"
            if nan_column in frame and frame[nan_column].sum() > 0:
                ax.set_title(f"{label}\n({int(frame[nan_column].max())} undefined at most)", fontsize="small")
            else:
                ax.set_title(label, fontsize="small")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(method)
            if row == len(methods) - 1:
                ax.set_xlabel("optimiser step")
    axes[0, -1].legend(fontsize="small")
    return figure


@book_figure
def plot_trends(
    metrics: pd.DataFrame,
    tracked_method: pd.DataFrame,
    title: str,
    performance: Mapping[str, str] = PERFORMANCE,
    summaries: Mapping[str, str] = SUMMARY_LABELS,
) -> Figure:
    """Seed Fig. 2/3/10-21: rows performance series, columns summaries; normalised expanding means of both."""
    figure, axes = plt.subplots(
        len(performance),
        len(summaries),
        figsize=(2.6 * len(summaries), 1.7 * len(performance)),
        sharex=True,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    by_step = metrics.set_index("step")
    for row, (performance_label, performance_column) in enumerate(performance.items()):
        performance_curve = trend(by_step[performance_column])
        for col, (summary_label, summary_column) in enumerate(summaries.items()):
            ax = axes[row, col]
            ax.plot(performance_curve.index, performance_curve, color="tab:blue", label="performance")
            summary_curve = trend(tracked_method[summary_column])
            ax.plot(summary_curve.index, summary_curve, color="tab:red", label="summary")
            if row == 0:
                ax.set_title(summary_label, fontsize="small")
            if col == 0:
                ax.set_ylabel(performance_label, fontsize="small")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.supxlabel("optimiser step (curves: expanding mean, min-max normalised)", fontsize="small")
    return figure


@book_figure
def plot_correlation_heatmap(tables: Mapping[str, pd.DataFrame], value_range: float = 1.0) -> Figure:
    """Side-by-side heatmaps of Tables 2-9 style rho tables, one per method, annotated with the coefficients."""
    figure, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.4), layout="constrained", squeeze=False)
    image = None
    for ax, (name, table) in zip(axes[0], tables.items()):
        values = table.to_numpy(float)
        image = ax.imshow(values, cmap="RdBu_r", vmin=-value_range, vmax=value_range)
        ax.set_xticks(range(table.shape[1]), table.columns, rotation=35, ha="right", fontsize="small")
        ax.set_yticks(range(table.shape[0]), table.index, fontsize="small")
        for (i, j), rho in np.ndenumerate(values):
            text = "n/a" if np.isnan(rho) else f"{rho:.2f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize="small",
                fontweight="bold" if abs(rho) > 0.5 else "normal",
            )
        ax.set_title(name, fontsize="medium")
    assert image is not None  # plt.subplots refuses zero columns, so the loop ran at least once
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="Spearman's rho")
    return figure
