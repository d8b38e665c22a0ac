"""Figures of the distillation chapter: the guided teacher's students on the spurious set, score by score."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import book_figure

#: the scores shown, with their axis labels
SPURIOUS_PANELS = {
    "worst": "worst-group accuracy (%)",
    "unseen_agreement": "agreement on unseen groups (%)",
    "epg": "EPG in the digit's box (%)",
}


@book_figure
def spurious_scores_plot(
    table: pd.DataFrame, roles: Sequence[str], labels: dict[str, str], panels: dict[str, str] | None = None
) -> Figure:
    """One panel per score: a bar per model (the mean over seeds) with every seed's value as a dot.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`attrlab.distill.spurious.spurious_study` (columns ``seed``, ``role`` and the scores).
    roles : sequence of str
        The models, in order (:data:`attrlab.distill.spurious.ROLES`).
    labels : dict
        A short label per role (the x tick labels).
    panels : dict, optional
        Score column to axis label; default :data:`SPURIOUS_PANELS`.

    Returns
    -------
    Figure
    """
    panels = panels or SPURIOUS_PANELS
    missing = [name for name in panels if name not in table.columns]
    if missing:
        raise ValueError(f"the table lacks the score columns {missing}; it has {list(table.columns)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.0), squeeze=False)
    positions = np.arange(len(roles))
    colours = [f"C{i}" for i in range(len(roles))]
    for ax, (score, label) in zip(axes[0], panels.items()):
        means = [table.loc[table["role"] == role, score].mean() for role in roles]
        ax.bar(positions, np.nan_to_num(means), color=colours, alpha=0.6)
        for position, role in zip(positions, roles):
            values = table.loc[table["role"] == role, score].dropna().to_numpy()
            ax.plot(np.full(len(values), position), values, "o", color="black", markersize=3)
        ax.set_xticks(positions, [labels[role] for role in roles], rotation=35, ha="right")
        ax.set_ylim(0, 100)
        ax.set_title(label, fontsize="medium")
    fig.tight_layout()
    return fig


__all__ = ["SPURIOUS_PANELS", "spurious_scores_plot"]
