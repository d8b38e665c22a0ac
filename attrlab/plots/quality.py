"""Figures of the explanation-quality chapter: canonization effects, gamma-search curves, best/worst maps, Pareto front."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..quality.battery import METRICS
from ..quality.gamma import GROUPS
from ..quality.setup import ImageSet
from .style import book_figure

#: short axis labels of the metrics
METRIC_LABELS = {
    "sparseness": "Sparseness ↑",
    "complexity": "Complexity ↓",
    "aopc": "AOPC (blur) ↑",
    "pixel_flipping": "Pixel flipping ↓",
    "faithfulness_correlation": "Faithf. corr. ↑",
    "rra": "RRA ↑",
    "rma": "RMA ↑",
    "avg_sensitivity": "Avg. sensitivity ↓",
    "max_sensitivity": "Max. sensitivity ↓",
    "random_logit": "Random logit ↓",
}


@book_figure
def plot_canvases(images: ImageSet, count: int = 8) -> Figure:
    """The first ``count`` canvases of an image set, each with its class and the outline of its digit's box."""
    count = min(count, len(images))
    fig, axes = plt.subplots(1, count, figsize=(7.5, 7.5 / count + 0.4), squeeze=False)
    for ax, x, y, mask in zip(axes[0], images.x[:count], images.y[:count], images.masks[:count]):
        ax.imshow(x[0].cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.contour(mask.cpu().numpy().astype(float), levels=[0.5], colors="tab:orange", linewidths=1)
        ax.set_title(f"class {int(y)}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


@book_figure
def plot_canonization_effects(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> Figure:
    """The canonized-minus-original difference of each metric with its bootstrap interval, per model and method.

    A point right of zero is an increase; the metric's arrow says whether that is better.
    """
    metrics = list(metrics) if metrics is not None else [m for m in METRICS if m in set(summary.metric)]
    keys = summary[["model", "method"]].drop_duplicates().apply(tuple, axis=1).tolist()
    columns = 5
    rows = int(np.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(7.5, 0.3 * len(keys) * rows + 1.0), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")(np.arange(10))
    methods = list(dict.fromkeys(summary.method))
    for ax, metric in zip(axes.flat, metrics):
        part = summary[summary.metric == metric].set_index(["model", "method"])
        for position, key in enumerate(keys):
            if key not in part.index:
                continue
            row = part.loc[key]
            colour = colours[methods.index(key[1]) % 10]
            ax.errorbar(
                row["diff"],
                position,
                xerr=[[row["diff"] - row["diff_low"]], [row["diff_high"] - row["diff"]]],
                fmt="o",
                color=colour,
                markersize=4,
            )
        ax.axvline(0.0, color="0.5", linewidth=0.8)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize="small")
        ax.tick_params(axis="x", labelsize="small")
        ax.xaxis.set_major_locator(plt.MaxNLocator(3, symmetric=True))  # few ticks: the panels are narrow
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_yticks(range(len(keys)), [f"{model}  {method}" for model, method in keys], fontsize="small")
        ax.invert_yaxis()
    fig.supxlabel("canonized − not canonized (mean over images, 95 % bootstrap interval)", fontsize="small")
    fig.tight_layout()
    return fig


@book_figure
def plot_marginal_curves(curves: pd.DataFrame, metrics: Sequence[str] | None = None) -> Figure:
    """Pahde et al.'s Fig. 2: each metric (rows) against the gamma of one layer group (columns), averaged over the
    gammas of the other groups; solid canonized, dashed not."""
    metrics = list(metrics) if metrics is not None else list(dict.fromkeys(curves.metric))
    gammas = sorted(set(curves.gamma))
    fig, axes = plt.subplots(
        len(metrics), len(GROUPS), figsize=(7.5, 1.35 * len(metrics) + 0.6), sharex=True, sharey="row", squeeze=False
    )
    colours = plt.get_cmap("tab10")(np.arange(len(GROUPS)))
    for r, metric in enumerate(metrics):
        for c, group in enumerate(GROUPS):
            ax = axes[r, c]
            for canonized, style in ((True, "-"), (False, "--")):
                part = curves[(curves.metric == metric) & (curves.group == group) & (curves.canonized == canonized)]
                part = part.sort_values("gamma")
                ax.plot(
                    [gammas.index(g) for g in part.gamma],
                    part.value,
                    style,
                    color=colours[c],
                    marker="o",
                    markersize=3,
                    label="canonized" if canonized else "not canonized",
                )
            if r == 0:
                ax.set_title(f"{group} layers", fontsize="small")
            if c == 0:
                ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize="small")
            ax.tick_params(labelsize="small")
    for ax in axes[-1]:
        ax.set_xticks(range(len(gammas)), [f"{g:g}" for g in gammas], rotation=90)
        ax.set_xlabel("γ", fontsize="small")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncols=2, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


@book_figure
def plot_best_worst_maps(configs: pd.DataFrame, maps: torch.Tensor, images: torch.Tensor) -> Figure:
    """Pahde et al.'s Fig. 3: the images (first row), then per configuration (one row each, labelled by metric, best or
    worst, and its gammas) its maps of the same images, red positive, blue negative, each map scaled to its maximum.

    ``configs`` has the columns of :func:`attrlab.quality.search_analysis.best_and_worst`; ``maps`` is
    (configurations, images, H, W); ``images`` (images, 1, H, W).
    """
    count, samples = maps.shape[:2]
    fig, axes = plt.subplots(count + 1, samples, figsize=(1.1 * samples + 2.2, 1.1 * (count + 1)), squeeze=False)
    for s in range(samples):
        axes[0, s].imshow(images[s, 0].cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
    axes[0, 0].set_ylabel("image", fontsize="small", rotation=0, ha="right", va="center")
    for k, (_, row) in enumerate(configs.iterrows(), start=1):
        for s in range(samples):
            heat = maps[k - 1, s].cpu().numpy()
            bound = float(np.abs(heat).max()) or 1.0
            axes[k, s].imshow(heat, cmap="bwr", vmin=-bound, vmax=bound)
        gammas = "/".join(f"{row[g]:g}" for g in GROUPS)
        label = f"{METRIC_LABELS.get(row.metric, row.metric)}\n{row.which}: γ {gammas}\n{'canon.' if row.canonized else 'orig.'}"
        axes[k, 0].set_ylabel(label, fontsize="x-small", rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


@book_figure
def plot_pareto(table: pd.DataFrame, front: pd.Series, pairs: Sequence[tuple[str, str]]) -> Figure:
    """The configurations in pairs of metrics (grey), those on the Pareto front across all metrics highlighted
    (canonized: filled, not canonized: open)."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(7.5, 2.8), squeeze=False)
    for ax, (first, second) in zip(axes[0], pairs):
        ax.scatter(table[first], table[second], s=3, color="0.75", label="all configurations", rasterized=True)
        on = table[front]
        for canonized, face in ((True, "tab:red"), (False, "none")):
            part = on[on.canonized == canonized]
            ax.scatter(
                part[first],
                part[second],
                s=14,
                facecolors=face,
                edgecolors="tab:red",
                label=f"Pareto front, {'canonized' if canonized else 'not canonized'}",
            )
        ax.set_xlabel(METRIC_LABELS.get(first, first), fontsize="small")
        ax.set_ylabel(METRIC_LABELS.get(second, second), fontsize="small")
        ax.tick_params(labelsize="small")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncols=3, fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    return fig


__all__ = [
    "METRIC_LABELS",
    "plot_best_worst_maps",
    "plot_canonization_effects",
    "plot_canvases",
    "plot_marginal_curves",
    "plot_pareto",
]
