"""Figures of the model-guidance chapters: Pareto fronts (thesis Fig. 7.5 style), maps before and after, tracking."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .style import book_figure

#: marker and colour of each loss (the thesis' Fig. 7.5 uses markers per loss too)
LOSS_STYLE = {
    "energy": ("o", "tab:red"),
    "l1": ("^", "tab:green"),
    "ppce": ("p", "tab:olive"),
    "rrr": ("D", "tab:blue"),
}


@book_figure
def pareto_fronts(
    fronts: pd.DataFrame, baselines: pd.DataFrame, setups: Sequence[str], metric: str = "epg", columns: int = 4
) -> Figure:
    """One panel per setup (``columns`` to a row): every loss's Pareto front of ``metric`` against F1, the baseline
    as a cross.

    Parameters
    ----------
    fronts : pandas.DataFrame
        :func:`attrlab.guidance.study.configuration_fronts` rows (columns ``setup``, ``loss``, ``f1``, ``metric``).
    baselines : pandas.DataFrame
        :func:`attrlab.guidance.study.baselines` (indexed by dataset and setup).
    setups : sequence of str
        The panels, in order.
    metric : str
        ``"epg"`` or ``"iou"`` (the guided layer's), or their ``_input`` variants.
    columns : int
        Panels per row.

    Returns
    -------
    Figure
    """
    if not setups:
        raise ValueError("pareto_fronts needs at least one setup")
    rows_n, cols_n = -(-len(setups) // columns), min(columns, len(setups))
    fig, axes = plt.subplots(rows_n, cols_n, figsize=(2.6 * cols_n, 2.9 * rows_n), squeeze=False, sharey=True)
    for ax in axes.flat[len(setups) :]:
        ax.set_visible(False)
    for ax, setup in zip(axes.flat, setups):
        part = fronts[fronts["setup"] == setup]
        for loss, (marker, colour) in LOSS_STYLE.items():
            rows = part[part["loss"] == loss].sort_values("f1")
            if not rows.empty:
                ax.plot(rows["f1"], rows[metric], marker=marker, color=colour, label=loss, linewidth=1, markersize=5)
        base = baselines.xs(setup, level="setup").iloc[0]
        ax.plot([base["f1"]], [base[metric]], marker="x", color="black", markersize=8, linestyle="none")
        ax.set_title(setup, fontsize="medium")
        ax.set_xlabel("F1 (%)")
    for row in axes:
        row[0].set_ylabel(f"{metric.replace('_input', ' at input').upper()} (%)")
    axes.flat[len(setups) - 1].legend(fontsize="small", loc="best")
    fig.tight_layout(h_pad=1.5)  # room between a row's axis labels and the next row's titles
    return fig


@book_figure
def maps_before_after(
    images: torch.Tensor, boxes: torch.Tensor, maps: dict[str, torch.Tensor], columns: int = 6
) -> Figure:
    """Images with their boxes (first row) and one row of maps per model (red positive, blue negative).

    Parameters
    ----------
    images : torch.Tensor
        (N, 1, H, W).
    boxes : torch.Tensor
        (N, 4) as (top, left, bottom, right), bottom/right exclusive.
    maps : dict of str to torch.Tensor
        Row label -> (N, h, w) maps.
    columns : int
        Images shown.

    Returns
    -------
    Figure
    """
    count = min(columns, len(images))
    fig, axes = plt.subplots(1 + len(maps), count, figsize=(1.3 * count, 1.35 * (1 + len(maps))), squeeze=False)
    for i in range(count):
        top, left, bottom, right = (int(v) for v in boxes[i])
        axes[0, i].imshow(images[i, 0].cpu(), cmap="gray")
        axes[0, i].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, color="yellow"))
        for row, (label, values) in enumerate(maps.items(), start=1):
            value = values[i].detach().cpu()
            limit = float(value.abs().max()) or 1.0
            axes[row, i].imshow(value, cmap="bwr", vmin=-limit, vmax=limit)
            if i == 0:
                axes[row, i].set_ylabel(label, fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


@book_figure
def tracked_metrics(rows: pd.DataFrame, metrics: Sequence[str] = ("f1", "epg", "iou")) -> Figure:
    """The metrics of one guided run against the fine-tuning step (step 0: the baseline).

    Parameters
    ----------
    rows : pandas.DataFrame
        :func:`attrlab.guidance.study.run_point` rows.
    metrics : sequence of str
        Columns drawn.

    Returns
    -------
    Figure
    """
    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    for metric in metrics:
        ax.plot(rows["step"], rows[metric], marker="o", label=metric.replace("_input", " (input)").upper())
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("%")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


__all__ = ["LOSS_STYLE", "maps_before_after", "pareto_fronts", "tracked_metrics"]
