"""Grid-evaluation figures: layout of the box plots, AggAtt panels and smoothing sweep."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
import torch

from attrlab.plots.grids import plot_aggatt, plot_localisation_boxes, plot_smoothing


def _scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"setting": s, "n": 2, "method": m, "kernel_size": 1, "layer": l, "grid": g, "cell": 0, "score": rng.random()}
        for s in ("gridpg", "difull")
        for m in ("IxG", "Grad-CAM")
        for l in ("input", "middle", "final")
        for g in range(5)
    ]
    return pd.DataFrame(rows)


def test_box_plot_has_a_row_per_setting_and_a_box_per_method_and_layer():
    fig = plot_localisation_boxes(_scores(), methods=["Grad-CAM", "IxG"])
    axes = fig.axes
    assert [ax.get_ylabel().split("\n")[0] for ax in axes] == ["GridPG", "DiFull"]
    assert len(axes[0].patches) == 6  # 2 methods x 3 layers
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == ["Grad-CAM", "IxG"]
    with pytest.raises(ValueError, match="not in the table"):
        plot_localisation_boxes(_scores(), methods=["LRP"])


def test_aggatt_panel_grid_and_row_scales():
    bins = {("IxG", "input"): torch.rand(6, 8, 8), ("IxG", "final"): 100 * torch.rand(6, 8, 8)}
    fig = plot_aggatt(bins, n=2, bin_scores={k: torch.linspace(1, 0, 6) for k in bins})
    assert len(fig.axes) == 12
    scales = [ax.images[0].get_clim()[1] for ax in fig.axes[::6]]
    assert scales == pytest.approx([float(bins[k].max()) for k in bins])
    with pytest.raises(ValueError, match="bin ranges"):
        plot_aggatt({("IxG", "input"): torch.rand(5, 8, 8)}, n=2)


def test_smoothing_plot_has_a_line_per_model():
    frame = pd.concat(
        [
            _scores().query("method == 'IxG'").assign(model=name, kernel_size=k, method="IxG" if k == 1 else "S-IxG")
            for name in ("plain", "bn")
            for k in (1, 5)
        ]
    )
    fig = plot_smoothing(frame, by="model")
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 for ax in fig.axes)


def test_localisation_over_training_has_a_line_per_method_and_layer():
    from attrlab.plots.grids import plot_localisation_over_training

    table = pd.DataFrame(
        [
            {"step": step, "setting": s, "method": m, "kernel_size": 1, "layer": l, "median": 0.5, "mean": 0.5}
            for step in (10, 20)
            for s in ("gridpg", "difull")
            for m in ("IxG", "LRP")
            for l in ("input", "final")
        ]
    )
    fig = plot_localisation_over_training(table)
    assert [ax.get_title() for ax in fig.axes] == ["GridPG", "DiFull"]
    assert all(len(ax.lines) == 4 for ax in fig.axes)


def test_grid_examples_have_a_row_per_set_titled_with_the_classes():
    from attrlab.grids import ConfidentImages, make_grids
    from attrlab.plots.grids import plot_grid_examples

    confident = ConfidentImages(torch.rand(30, 1, 28, 28), torch.arange(10).repeat_interleave(3), 0.99)
    grids = {
        "distinct": make_grids(confident, 4, n=2, layout="distinct", seed=0),
        "three": make_grids(confident, 4, n=3, layout="distinct", seed=0),
    }
    classes = [f"k{c}" for c in range(10)]
    fig = plot_grid_examples(grids, classes, count=3)
    assert len(fig.axes) == 6
    first = grids["distinct"].labels[0].tolist()
    assert fig.axes[0].get_title() == " ".join(f"k{c}" for c in first)
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[3].lines) == 4  # n - 1 borders each way
    assert fig.axes[0].lines[0].get_ydata()[0] == 27.5
    with pytest.raises(ValueError, match="cannot show 5 grids per row; these sets hold fewer"):
        plot_grid_examples(grids, classes, count=5)
