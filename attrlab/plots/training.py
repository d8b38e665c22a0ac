"""Training curves: loss and accuracy of a run's minibatches, test set and attribution set over optimiser steps.

The functions read the ``metrics`` table of a run (:attr:`attrlab.train.Run.metrics`): one row per step, the
``train_*`` columns on every step, the ``test_*`` and ``attr_*`` columns only on evaluation steps (NaN elsewhere).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .style import book_figure

#: the three curves of a run: column prefix -> legend label
SERIES = {"train": "train minibatch", "test": "test set", "attr": "attribution set"}
_COLORS = {"train": "0.55", "test": "tab:blue", "attr": "tab:orange"}


def _require(metrics: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [column for column in columns if column not in metrics.columns]
    if missing:
        raise ValueError(
            f"the metrics table lacks the columns {missing}; it has {list(metrics.columns)} "
            "(pass Run.metrics of a run trained by attrlab.train)"
        )


@book_figure
def plot_learning_curves(metrics: pd.DataFrame, smooth: int | None = None) -> Figure:
    """Loss (left) and accuracy (right) over steps for the train minibatches, the test set and the attribution set.

    The minibatch values are noisy; they are drawn faintly with a centred rolling mean over ``smooth`` steps on top
    (default: one epoch's worth of steps, at least 1). Evaluation curves use only the steps that were evaluated.
    """
    _require(metrics, ["step", "epoch"] + [f"{p}_{m}" for p in SERIES for m in ("loss", "acc")])
    if smooth is None:
        smooth = max(1, int(metrics.groupby("epoch")["step"].count().max()) if len(metrics) else 1)
    if smooth < 1:
        raise ValueError(f"smooth must be a positive number of steps, got {smooth}")
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, metric, label in zip(axes, ("loss", "acc"), ("cross-entropy loss", "accuracy"), strict=True):
        train = metrics[["step", f"train_{metric}"]]
        ax.plot(train["step"], train[f"train_{metric}"], color=_COLORS["train"], alpha=0.35, linewidth=0.8)
        rolling = train[f"train_{metric}"].rolling(smooth, center=True, min_periods=1).mean()
        ax.plot(train["step"], rolling, color=_COLORS["train"], label=f"{SERIES['train']} (mean of {smooth} steps)")
        for prefix in ("test", "attr"):
            evaluated = metrics[["step", f"{prefix}_{metric}"]].dropna()
            marker = "o" if len(evaluated) <= 30 else None
            ax.plot(
                evaluated["step"],
                evaluated[f"{prefix}_{metric}"],
                color=_COLORS[prefix],
                marker=marker,
                markersize=3,
                label=SERIES[prefix],
            )
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(0, 1.02)
    axes[0].legend(loc="upper right", fontsize="small")
    return figure


@book_figure
def plot_per_class_accuracy(
    metrics: pd.DataFrame, class_names: Sequence[str] | None = None, columns: int = 5
) -> Figure:
    """Small multiples, one panel per class: test-set and attribution-set accuracy of that class over steps."""
    test_columns = sorted((c for c in metrics.columns if c.startswith("test_acc_c")), key=lambda c: int(c[10:]))
    if not test_columns:
        raise ValueError(f"the metrics table has no per-class columns test_acc_c<k>; it has {list(metrics.columns)}")
    num_classes = len(test_columns)
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes in the metrics table")
    if columns < 1:
        raise ValueError(f"columns must be positive, got {columns}")
    rows = int(np.ceil(num_classes / columns))
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.1 * columns, 1.8 * rows + 0.4),
        sharex=True,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    evaluated = metrics.dropna(subset=["test_acc"])
    for k, ax in enumerate(axes.flat):
        if k >= num_classes:
            ax.set_visible(False)
            continue
        for prefix in ("test", "attr"):
            column = f"{prefix}_acc_c{k}"
            if column in evaluated:
                ax.plot(evaluated["step"], evaluated[column], color=_COLORS[prefix], label=SERIES[prefix])
        ax.set_title(class_names[k], fontsize="medium")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    axes.flat[0].legend(fontsize="small", loc="lower right")
    return figure
