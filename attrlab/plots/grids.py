"""Grid-evaluation figures: example grids, localisation box plots (thesis Fig. 4.4 layout), AggAtt panels, smoothing.

The functions read the long score table of :func:`attrlab.grids.evaluate_setting` (columns setting, n, method,
kernel_size, layer, grid, cell, score; several results concatenated) or the AggAtt bins of a
:class:`attrlab.grids.GridResult`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..grids.aggatt import BINS
from ..grids.data import GridSet
from .style import book_figure

SETTING_TITLES = {"gridpg": "GridPG", "dipart": "DiPart", "difull": "DiFull"}
LAYER_TICKS = {"input": "Inp", "middle": "Mid", "final": "Fin"}


def _require(scores: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in scores.columns]
    if missing:
        raise ValueError(f"the score table lacks columns {missing}; it has {list(scores.columns)}")


def _ordered(values: Sequence[str], preferred: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(values))
    if preferred is None:
        return present
    unknown = [v for v in preferred if v not in present]
    if unknown:
        raise ValueError(f"{unknown} not in the table; it holds {present}")
    return list(preferred)


@book_figure
def plot_grid_examples(grids: Mapping[str, GridSet], classes: Sequence[str], count: int = 6) -> Figure:
    """The first ``count`` grids of each grid set, one row per set, titled with their classes row by row.

    Parameters
    ----------
    grids : mapping of str to GridSet
        Row name -> grids (for example the distinct GridPG and the repeated DiFull / DiPart layout).
    classes : sequence of str
        Class names by label.
    count : int
        Grids shown per row.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per grid, the cell borders drawn in blue.
    """
    if not grids:
        raise ValueError("no grids to show")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    short = {name: len(grid_set) for name, grid_set in grids.items() if len(grid_set) < count}
    if short:
        raise ValueError(f"cannot show {count} grids per row; these sets hold fewer: {short}")
    fig, axes = plt.subplots(len(grids), count, figsize=(1.5 * count, 1.7 * len(grids)), squeeze=False)
    for row, grid_set in enumerate(grids.values()):
        height, width = grid_set.cell_size
        for col in range(count):
            ax = axes[row, col]
            ax.imshow(grid_set.images[col, 0].cpu().numpy(), cmap="gray_r")
            ax.set_title(" ".join(classes[c] for c in grid_set.labels[col].tolist()), fontsize="small")
            for k in range(1, grid_set.n):
                ax.axhline(k * height - 0.5, color="tab:blue", linewidth=0.8)
                ax.axvline(k * width - 0.5, color="tab:blue", linewidth=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


@book_figure
def plot_localisation_boxes(
    scores: pd.DataFrame,
    methods: Sequence[str] | None = None,
    settings: Sequence[str] | None = None,
    layers: Sequence[str] = ("input", "middle", "final"),
) -> Figure:
    """Box plots of the localisation scores: one row per setting, per method a group of boxes (input, middle, final).

    As in the thesis' Fig. 4.4, boxes of one colour belong to one method and each group runs from the input to the
    final layer; the dotted lines mark perfect (1) and uniform (1/n^2) localisation.
    """
    _require(scores, ["setting", "method", "layer", "score", "n"])
    methods = _ordered(scores["method"], methods)
    settings = _ordered(scores["setting"], settings or [s for s in SETTING_TITLES if s in set(scores["setting"])])
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")(np.arange(len(methods)))
    fig, axes = plt.subplots(
        len(settings),
        1,
        figsize=(max(8, 0.33 * len(methods) * len(layers) + 2), 2.3 * len(settings)),
        sharex=True,
        squeeze=False,
    )
    width = 0.8 / len(layers)
    for ax, setting in zip(axes[:, 0], settings):
        table = scores[scores["setting"] == setting]
        for m, method in enumerate(methods):
            for l, layer in enumerate(layers):
                values = table.loc[(table["method"] == method) & (table["layer"] == layer), "score"].to_numpy()
                if len(values) == 0:
                    continue
                box = ax.boxplot(
                    values,
                    positions=[m + (l - (len(layers) - 1) / 2) * width],
                    widths=width * 0.85,
                    patch_artist=True,
                    showfliers=False,
                    medianprops={"color": "black"},
                )
                box["boxes"][0].set(facecolor=colours[m], alpha=0.45 + 0.55 * l / max(1, len(layers) - 1))
        uniform = 1 / table["n"].iloc[0] ** 2 if len(table) else 0.25
        for level in (1.0, uniform):
            ax.axhline(level, color="0.4", linestyle=":", linewidth=1)
        ax.set_ylim(-0.03, 1.05)
        ax.set_ylabel(f"{SETTING_TITLES.get(setting, setting)}\nlocalisation")
    ax = axes[-1, 0]
    ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
    ax.set_xlim(-0.6, len(methods) - 0.4)
    fig.legend(
        handles=[
            Patch(
                facecolor="0.3",
                alpha=0.45 + 0.55 * l / max(1, len(layers) - 1),
                label=f"{LAYER_TICKS.get(layer, layer)}",
            )
            for l, layer in enumerate(layers)
        ],
        title="layer (left to right)",
        loc="upper right",
        ncols=len(layers),
        fontsize="small",
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


@book_figure
def plot_aggatt(
    bins: Mapping[tuple[str, str], torch.Tensor],
    n: int,
    bin_scores: Mapping[tuple[str, str], torch.Tensor] | None = None,
    bin_ranges: Sequence[tuple[float, float]] = BINS,
) -> Figure:
    """AggAtt panels: one row per (method, layer), one column per percentile bin (best localised on the left).

    ``bins[(method, layer)]`` is the (len(bin_ranges), H, W) mean positive map of each bin. The bins of a row share
    one colour scale (0 to the row's largest mean value), so best and worst cases of a method compare directly; rows
    are scaled separately because attributions at different layers are in different units. The grid cells are
    outlined and the scored cell (top-left) drawn in blue. ``bin_scores`` adds each bin's mean score.
    """
    keys = list(bins)
    if not keys:
        raise ValueError("no AggAtt bins to plot")
    columns = len(bin_ranges)
    fig, axes = plt.subplots(len(keys), columns, figsize=(1.1 * columns + 1.2, 1.15 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        method, layer = key
        maps = bins[key].detach().cpu().numpy()
        if maps.shape[0] != columns:
            raise ValueError(f"{key} has {maps.shape[0]} bins but there are {columns} bin ranges")
        side = maps.shape[-1] / n
        for col in range(columns):
            ax = axes[row, col]
            ax.imshow(maps[col], cmap="Reds", vmin=0, vmax=float(maps.max()) or 1.0)
            for k in range(1, n):
                ax.axhline(k * side - 0.5, color="0.6", linewidth=0.6)
                ax.axvline(k * side - 0.5, color="0.6", linewidth=0.6)
            ax.add_patch(plt.Rectangle((-0.5, -0.5), side, side, fill=False, edgecolor="tab:blue", linewidth=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if bin_scores is not None:
                ax.set_xlabel(f"L={float(bin_scores[key][col]):.2f}", fontsize="small", labelpad=1)
            if row == 0:
                low, high = bin_ranges[col]
                ax.set_title(f"{low:g}-{high:g} %", fontsize="small")
        axes[row, 0].set_ylabel(
            f"{method}\n{LAYER_TICKS.get(layer, layer)}", fontsize="small", rotation=0, ha="right", va="center"
        )
    fig.tight_layout(pad=0.3)
    return fig


@book_figure
def plot_smoothing(scores: pd.DataFrame, by: str = "model", statistic: str = "median") -> Figure:
    """Localisation (``statistic`` over grids) against the Gaussian kernel size: one panel per setting and method,
    one line per value of ``by`` (for example the model with and without BatchNorm)."""
    _require(scores, ["setting", "method", "kernel_size", "score", by])
    base = scores.assign(family=scores["method"].str.removeprefix("S-"))
    settings = [s for s in SETTING_TITLES if s in set(base["setting"])]
    families = list(dict.fromkeys(base["family"]))
    fig, axes = plt.subplots(
        1, len(settings) * len(families), figsize=(3.0 * len(settings) * len(families), 2.8), sharey=True, squeeze=False
    )
    for i, (setting, family) in enumerate((s, f) for s in settings for f in families):
        ax = axes[0, i]
        table = base[(base["setting"] == setting) & (base["family"] == family)]
        summary = table.groupby([by, "kernel_size"])["score"].agg(statistic).reset_index()
        for value, line in summary.groupby(by):
            ax.plot(line["kernel_size"], line["score"], marker="o", label=str(value))
        ax.set_title(f"S-{family} on {SETTING_TITLES.get(setting, setting)}", fontsize="small")
        ax.set_xlabel("kernel size K (sigma = K/4)")
        ax.set_xticks(sorted(table["kernel_size"].unique()))
    axes[0, 0].set_ylabel(f"{statistic} localisation")
    axes[0, -1].legend(fontsize="small")
    fig.tight_layout()
    return fig


@book_figure
def plot_localisation_over_training(table: pd.DataFrame, statistic: str = "median") -> Figure:
    """Localisation over optimiser steps from the ``grid_localisation`` table of a run trained with
    :class:`attrlab.grids.callback.GridLocalisation`: one panel per setting, one colour per method, one line style per
    layer (solid input, dashed middle, dotted final)."""
    _require(table, ["step", "setting", "method", "layer", statistic])
    settings = [s for s in SETTING_TITLES if s in set(table["setting"])] or list(dict.fromkeys(table["setting"]))
    methods = list(dict.fromkeys(table["method"]))
    styles = {"input": "-", "middle": "--", "final": ":"}
    colours = dict(zip(methods, plt.get_cmap("tab10")(np.arange(len(methods)) % 10)))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.2), sharey=True, squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for (method, layer), line in table[table["setting"] == setting].groupby(["method", "layer"], sort=False):
            line = line.sort_values("step")
            ax.plot(
                line["step"],
                line[statistic],
                color=colours[method],
                linestyle=styles.get(layer, "-."),
                label=f"{method} {LAYER_TICKS.get(layer, layer)}",
            )
        ax.set_title(SETTING_TITLES.get(setting, setting))
        ax.set_xlabel("optimiser step")
        ax.set_ylim(-0.03, 1.05)
    axes[0, 0].set_ylabel(f"{statistic} localisation")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
