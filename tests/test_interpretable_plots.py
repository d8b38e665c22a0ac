"""The interpretable-networks chapter's figures draw from their tables, in the book style."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from attrlab.plots import interpretable  # noqa: E402
from attrlab.plots.style import PAGE_WIDTH_IN  # noqa: E402


def test_figures_draw_and_fit_the_page():
    table = pd.DataFrame({"accuracy": [0.9, 0.95, 0.93], "S-B-cos": [0.3, 0.5, 0.6]}, index=[1.0, 2.0, 2.5])
    curves = pd.DataFrame(
        {"model": ["a"] * 4, "method": ["x", "x", "y", "y"], "fraction": [0, 0.1] * 2, "probability": [1, 0.9, 1, 0.8]}
    )
    similarity = {"m": pd.DataFrame({"step": [1, 2, 3], "similarity": [0.2, 0.8, 1.0]})}
    figures = [
        interpretable.against_parameter(table, "B"),
        interpretable.against_parameter(table.set_axis([0.1, 1.0, 100.0]), "T"),
        interpretable.image_rows({"a": torch.rand(3, 4, 4), "b": torch.randn(3, 4, 4)}, signed=True),
        interpretable.removal_curves(curves, title="t"),
        interpretable.convergence_curves(similarity, {"m": pd.Series([0.4, 0.5, 0.6], index=[1, 2, 3])}),
        interpretable.bias_shares(pd.DataFrame({"net": ["a", "a", "b", "b"], "share": [0.0, 0.1, 3.0, -0.5]})),
    ]
    for figure in figures:
        assert figure.get_size_inches()[0] <= PAGE_WIDTH_IN + 1e-6
        plt.close(figure)
    assert figures[1].axes[0].get_xscale() == "log"


def test_figures_name_what_is_missing():
    with pytest.raises(ValueError, match="'accuracy' column"):
        interpretable.against_parameter(pd.DataFrame({"x": [1]}))
    with pytest.raises(ValueError, match="not in the table"):
        interpretable.against_parameter(pd.DataFrame({"accuracy": [1.0]}), methods=["S-B-cos"])
    with pytest.raises(ValueError, match="same k"):
        interpretable.image_rows({"a": torch.rand(3, 4, 4), "b": torch.rand(2, 4, 4)})
    with pytest.raises(ValueError, match="lacks columns"):
        interpretable.removal_curves(pd.DataFrame({"model": ["a"]}))
