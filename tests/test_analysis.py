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
    correlations,
    loss_table,
    method_table,
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
    assert list(table.index) == [("lrp", "test loss"), ("lrp", "train loss"), ("gradcam", "test loss"),
                                 ("gradcam", "train loss")]
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
