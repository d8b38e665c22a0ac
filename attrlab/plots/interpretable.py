"""Figures of the interpretable-networks chapter: accuracy and localisation against B or T, DAU eigenvectors, curves.

Each function takes the tables of :mod:`attrlab.interpretable.study` (or arrays) and returns a Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .style import book_figure


@book_figure
def against_parameter(
    table: pd.DataFrame, parameter: str = "B", methods: Sequence[str] | None = None, chance: float | None = 1 / 9
) -> Figure:
    """Two panels against a model parameter (B, or CoDA's T): test accuracy, and each method's median localisation.

    Parameters
    ----------
    table : pandas.DataFrame
        Indexed by the parameter's values, with an ``accuracy`` column in [0, 1] and one column per method
        (:func:`attrlab.interpretable.study.localisation_table`).
    parameter : str
        The x axis' label.
    methods : sequence of str, optional
        The methods to draw, in this order (default: every column but ``accuracy``).
    chance : float, optional
        A uniform map's localisation, drawn dotted.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if "accuracy" not in table.columns:
        raise ValueError(f"the table needs an 'accuracy' column; it has {list(table.columns)}")
    methods = list(methods) if methods is not None else [c for c in table.columns if c != "accuracy"]
    unknown = [m for m in methods if m not in table.columns]
    if unknown:
        raise ValueError(f"methods {unknown} are not in the table; it has {list(table.columns)}")
    x = np.asarray(table.index, dtype=float)
    log_x = x.min() > 0 and x.max() / x.min() >= 100
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.8))
    left.plot(x, 100 * table["accuracy"].to_numpy(), marker="o", color="black")
    left.set_ylabel("test accuracy (%)")
    for method in methods:
        right.plot(x, table[method].to_numpy(), marker="o", label=method)
    if chance is not None:
        right.axhline(chance, color="grey", linestyle=":", linewidth=1)
    right.set_ylabel("median localisation")
    right.legend(fontsize="small", ncols=2)
    for ax in (left, right):
        ax.set_xlabel(parameter)
        if log_x:
            ax.set_xscale("log")
    fig.tight_layout()
    return fig


@book_figure
def image_rows(rows: Mapping[str, torch.Tensor], signed: bool = False) -> Figure:
    """Rows of small images, one row per entry (its key as the row's label), each image on its own colour scale.

    Parameters
    ----------
    rows : mapping of str to torch.Tensor
        Label -> (k, H, W) images (every row the same k).
    signed : bool
        Draw with a symmetric red-blue scale (contributions, eigenvectors) instead of grey values.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not rows:
        raise ValueError("image_rows needs at least one row")
    counts = {label: int(images.shape[0]) for label, images in rows.items()}
    if len(set(counts.values())) != 1 or any(images.dim() != 3 for images in rows.values()):
        raise ValueError(f"every row must be (k, H, W) with the same k; got {counts}")
    k = next(iter(counts.values()))
    fig, axes = plt.subplots(len(rows), k, figsize=(1.3 * k + 1.2, 1.3 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for i in range(k):
            image = images[i].detach().float().cpu().numpy()
            ax = axes[r, i]
            if signed:
                limit = float(np.abs(image).max()) or 1.0
                ax.imshow(image, cmap="bwr", vmin=-limit, vmax=limit)
            else:
                ax.imshow(image, cmap="gray_r")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize="small")
    fig.tight_layout()
    return fig


@book_figure
def removal_curves(curves: pd.DataFrame, title: str | None = None) -> Figure:
    """Pixel-removal curves (thesis Fig. 5.9): mean target probability against the fraction of pixels removed.

    Parameters
    ----------
    curves : pandas.DataFrame
        Columns ``model``, ``method``, ``fraction`` and ``probability`` (one row per point of a curve); one panel per
        model.
    title : str, optional
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    missing = [c for c in ("model", "method", "fraction", "probability") if c not in curves.columns]
    if missing:
        raise ValueError(f"the curve table lacks columns {missing}; it has {list(curves.columns)}")
    models = list(dict.fromkeys(curves["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 2.8), sharey=True, squeeze=False)
    for ax, model in zip(axes[0], models):
        for method, part in curves[curves["model"] == model].groupby("method", sort=False):
            ax.plot(100 * part["fraction"], part["probability"], label=str(method))
        ax.set_title(str(model), fontsize="medium")
        ax.set_xlabel("pixels removed (%)")
        ax.legend(fontsize="small")  # each panel its own: the inherent maps exist only for the interpretable net
    axes[0, 0].set_ylabel("mean target probability")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@book_figure
def convergence_curves(
    similarity: Mapping[str, pd.DataFrame], summary: Mapping[str, pd.Series], summary_label: str = "mean Gini index"
) -> Figure:
    """Two panels over training: each method's similarity to its final maps (left), and one tracked summary (right).

    Parameters
    ----------
    similarity : mapping of str to pandas.DataFrame
        Label -> :func:`attrlab.interpretable.study.convergence` table (columns step, similarity).
    summary : mapping of str to pandas.Series
        Label -> a tracked per-step summary indexed by step (:func:`attrlab.track.tracked_frame`).
    summary_label : str
        The right panel's y label.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 2.8))
    for label, frame in similarity.items():
        left.plot(frame["step"] / frame["step"].iloc[-1], frame["similarity"], marker=".", label=label)
    left.set_xlabel("fraction of training")
    left.set_ylabel("similarity to the final maps")
    left.legend(fontsize="small")
    for label, series in summary.items():
        right.plot(series.index / series.index[-1], series.to_numpy(), label=label)
    right.set_xlabel("fraction of training")
    right.set_ylabel(summary_label)
    fig.tight_layout()
    return fig


@book_figure
def bias_shares(frame: pd.DataFrame, limits: tuple[float, float] = (-1.0, 2.0)) -> Figure:
    """The thesis' Fig. 6.13: per net, the distribution of the bias share of the top-2 logit difference (box plots).

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns net and share, one row per image (:func:`attrlab.interpretable.study.bias_share_frame`), nets in the
        order to draw.
    limits : tuple of float
        The y range shown; shares outside it (a near tie of the top two logits makes the ratio large) are drawn at its
        edge, and every box is computed from all shares.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not {"net", "share"} <= set(frame.columns):
        raise ValueError(f"the table needs columns net and share; it has {list(frame.columns)}")
    nets = list(dict.fromkeys(frame["net"]))
    values = [frame.loc[frame["net"] == net, "share"].to_numpy() for net in nets]
    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    ax.boxplot([np.clip(v, *limits) for v in values], showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(nets) + 1), nets, fontsize="small")
    ax.axhline(0.0, color="grey", linestyle=":", linewidth=1)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(limits[0] - 0.05, limits[1] + 0.05)
    ax.set_ylabel("(b_c1 - b_c2) / (y_c1 - y_c2)")
    fig.tight_layout()
    return fig


__all__ = ["against_parameter", "bias_shares", "convergence_curves", "image_rows", "removal_curves"]
