"""Spearman tables in the seed's layouts, the block-bootstrap intervals, and the trend curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from attrlab.analysis import (
    PERFORMANCE,
    SUMMARY_LABELS,
    aligned,
    block_bootstrap_ci,
    change_phrase,
    correlation_row,
    correlations,
    first_last_means,
    loss_table,
    method_table,
    rho_text,
    trend,
)


def _series(steps: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    step = np.arange(1, steps + 1)
    metrics = pd.DataFrame({"step": step})
    for column in PERFORMANCE.values():
        metrics[column] = np.exp(-step / 20) + 0.05 * rng.standard_normal(steps)
    metrics.loc[metrics["step"] % 2 == 1, "test_loss"] = np.nan  # evaluated every 2nd step only
    tracked = pd.DataFrame({"step": step})
    for column in SUMMARY_LABELS.values():
        tracked[column] = step / 10 + 0.5 * rng.standard_normal(steps)
    return metrics, tracked


def test_aligned_drops_steps_missing_on_either_side():
    metrics, tracked = _series()
    x, y = aligned(metrics, tracked, "test_loss", "norm_pos")
    assert len(x) == 30
    assert np.array_equal(y, tracked["norm_pos"].to_numpy()[1::2])


def test_correlations_equal_scipy_and_layout_is_the_seeds():
    metrics, tracked = _series()
    long = correlations(metrics, tracked, resamples=200)
    assert len(long) == len(PERFORMANCE) * len(SUMMARY_LABELS)
    row = long[(long["performance"] == "train loss") & (long["summary"] == "positive entropy")].iloc[0]
    expected = stats.spearmanr(metrics["train_loss"], tracked["entropy_pos"])
    assert row["rho"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)
    assert row["steps"] == 60 and row["ci_low"] <= row["rho"] <= row["ci_high"]
    table = method_table(long)
    assert list(table.index) == list(PERFORMANCE) and list(table.columns) == list(SUMMARY_LABELS)
    assert table.loc["train loss", "positive entropy"] == pytest.approx(expected.statistic)
    assert (table.loc["train loss"] < 0).all()  # decaying loss vs growing summaries


def test_loss_table_is_table_1_layout():
    metrics, tracked = _series()
    long = correlations(metrics, tracked, bootstrap=False)
    table = loss_table({"digits shallow": {"lrp": long, "gradcam": long}})
    assert list(table.index) == [
        ("lrp", "test loss"),
        ("lrp", "train loss"),
        ("gradcam", "test loss"),
        ("gradcam", "train loss"),
    ]
    assert list(table.columns) == [("digits shallow", "norm"), ("digits shallow", "entropy")]
    expected = long.query("performance == 'test loss' and summary == 'positive norm'")["rho"].item()
    assert table.loc[("lrp", "test loss"), ("digits shallow", "norm")] == pytest.approx(expected)


def test_bootstrap_is_deterministic_and_sensible():
    rng = np.random.default_rng(1)
    x = np.arange(100.0)
    monotone = block_bootstrap_ci(x, 2 * x + 1)
    assert monotone == pytest.approx((1.0, 1.0))
    noise = rng.standard_normal(100)
    low, high = block_bootstrap_ci(x, noise, seed=3)
    assert (low, high) == block_bootstrap_ci(x, noise, seed=3)
    assert low < 0.3 and high > -0.3 and low < high


def test_block_bootstrap_is_wider_than_iid_for_autocorrelated_series():
    """Two independent random walks: blocks keep the dependence, so the interval is wider than an i.i.d. bootstrap."""
    rng = np.random.default_rng(0)
    a, b = np.cumsum(rng.standard_normal(400)), np.cumsum(rng.standard_normal(400))
    block_low, block_high = block_bootstrap_ci(a, b, block=40)
    iid_low, iid_high = block_bootstrap_ci(a, b, block=1)
    assert block_high - block_low > iid_high - iid_low


@pytest.mark.parametrize(
    "kwargs, message",
    [({"block": 500}, "block length must be between 1"), ({"level": 1.5}, "level must be between 0 and 1")],
)
def test_bootstrap_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        block_bootstrap_ci(np.arange(10.0), np.arange(10.0), **kwargs)


def test_constant_series_has_no_correlation():
    metrics, tracked = _series()
    tracked["norm_neg"] = 0.0
    long = correlations(metrics, tracked, bootstrap=False)
    assert long[long["summary"] == "negative norm"]["rho"].isna().all()


def test_missing_columns_are_named():
    metrics, tracked = _series()
    with pytest.raises(ValueError, match=r"columns not found: \['entropy_pos'\]"):
        correlations(metrics, tracked.drop(columns="entropy_pos"))


def test_trend_is_the_normalised_expanding_mean():
    series = pd.Series([4.0, 2.0, np.nan, 0.0], index=[1, 2, 3, 4])
    curve = trend(series)
    assert curve.index.tolist() == [1, 2, 4]
    # expanding means 4, 3, 2 -> normalised 1, 0.5, 0
    assert curve.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert trend(series, normalise=False).tolist() == pytest.approx([4.0, 3.0, 2.0])
    assert math.isfinite(trend(pd.Series([1.0, 1.0])).sum())


def test_first_last_means_average_a_tenth_at_each_end_of_the_defined_values():
    series = pd.Series([np.nan] + list(range(1, 31)) + [np.nan], name="norm_pos")  # 30 defined values
    assert first_last_means(series) == (2.0, 29.0)  # means of 1..3 and 28..30
    assert first_last_means(series.iloc[:6]) == (1.0, 5.0)  # fewer than 10 values: one at each end
    assert first_last_means(series, parts=2) == (8.0, 23.0)
    assert change_phrase(series) == "grows from 2 to 29"
    assert change_phrase(-series / 3) == "falls from -0.667 to -9.67"
    with pytest.raises(ValueError, match="series 'x' has no defined value"):
        first_last_means(pd.Series([np.nan], name="x"))
    with pytest.raises(ValueError, match="parts must be a positive integer, got 0"):
        first_last_means(series, parts=0)


def test_rho_text_states_the_coefficient_with_its_interval():
    long = pd.DataFrame(
        [
            {
                "performance": "test loss",
                "summary": "positive norm",
                "rho": -0.8123,
                "p": 0.01,
                "ci_low": -0.9,
                "ci_high": -0.655,
                "steps": 40,
            },
            {
                "performance": "test loss",
                "summary": "positive entropy",
                "rho": np.nan,
                "p": np.nan,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "steps": 40,
            },
        ]
    )
    assert correlation_row(long, "test loss", "positive norm")["steps"] == 40
    assert rho_text(long, "test loss", "positive norm") == "-0.81 (95% block-bootstrap interval -0.90 to -0.66)"
    assert rho_text(long, "test loss", "positive entropy") == "undefined (a constant series)"
    with pytest.raises(
        ValueError,
        match="no correlation of 'train loss' with 'positive norm'; performance series: "
        "test loss; summaries: positive norm, positive entropy",
    ):
        correlation_row(long, "train loss", "positive norm")
