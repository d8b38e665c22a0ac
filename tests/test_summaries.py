"""Summaries on hand-computed maps, and the aggregation that counts undefined values instead of zeroing them."""

from __future__ import annotations

import math

import pytest
import torch

from attrlab.summaries import (
    SUMMARIES,
    gini,
    group_matrix,
    group_names,
    group_summary,
    group_summary_columns,
    summarise,
)


def _column(values: torch.Tensor, name: str) -> torch.Tensor:
    return values[:, SUMMARIES.index(name)]


def test_hand_computed_map():
    # one image, 1 channel, 2x2: positive part [3, 1], negative part [-4], one zero pixel
    attribution = torch.tensor([[[[3.0, -4.0], [1.0, 0.0]]]])
    values = summarise(attribution)
    assert _column(values, "norm_pos").item() == pytest.approx(math.sqrt(10))
    assert _column(values, "norm_neg").item() == pytest.approx(4.0)
    p = torch.tensor([0.75, 0.25])
    assert _column(values, "entropy_pos").item() == pytest.approx(-(p * p.log()).sum().item())
    assert _column(values, "entropy_neg").item() == pytest.approx(0.0)  # one pixel carries all negative relevance
    assert _column(values, "frac_pos").item() == pytest.approx(0.5)
    # Gini of |R| sorted ascending (0, 1, 3, 4), d = 4: sum (2i - 5) a_i / (4 * 8) = (-3*0 - 1*1 + 1*3 + 3*4) / 32
    assert _column(values, "gini").item() == pytest.approx(14 / 32)


def test_channels_are_summed_first():
    attribution = torch.tensor([[[[1.0, -1.0]], [[1.0, 3.0]]]])  # channel sum: [2, 2]
    values = summarise(attribution)
    assert _column(values, "norm_pos").item() == pytest.approx(math.sqrt(8))
    assert _column(values, "entropy_pos").item() == pytest.approx(math.log(2))
    assert _column(values, "norm_neg").item() == 0.0


def test_uniform_and_single_pixel_extremes():
    uniform = torch.ones(1, 1, 4, 4)
    spike = torch.zeros(1, 1, 4, 4)
    spike[0, 0, 2, 1] = 5.0
    values = summarise(torch.cat([uniform, spike]))
    assert _column(values, "entropy_pos").tolist() == pytest.approx([math.log(16), 0.0])
    assert _column(values, "gini").tolist() == pytest.approx([0.0, 15 / 16])


def test_all_zero_parts_are_undefined_not_zero():
    values = summarise(torch.stack([torch.zeros(1, 3, 3), torch.ones(1, 3, 3)]))
    assert math.isnan(_column(values, "entropy_pos")[0]) and math.isnan(_column(values, "gini")[0])
    assert math.isnan(_column(values, "entropy_neg")[1])  # no negative relevance at all
    assert _column(values, "norm_neg")[1] == 0.0  # a norm is defined for a zero part


def test_gini_matches_quantus_definition():
    torch.manual_seed(0)
    a = torch.rand(3, 50)
    d = a.shape[1]
    expected = []
    for row in a:
        s = row.sort().values
        i = torch.arange(1, d + 1, dtype=s.dtype)
        expected.append(((2 * i - d - 1) * s).sum() / (d * s.sum()))
    assert gini(a) == pytest.approx(torch.stack(expected))


def test_group_summary_means_and_nan_counts():
    labels = torch.tensor([0, 0, 1, 1])
    is_train = torch.tensor([True, False, True, False])
    groups = group_matrix(labels, is_train, num_classes=3)
    assert groups.shape == (len(group_names(3)), 4)
    per_image = torch.zeros(4, len(SUMMARIES))
    per_image[:, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # norm_pos
    entropy = SUMMARIES.index("entropy_pos")
    per_image[:, entropy] = torch.tensor([1.0, float("nan"), float("nan"), 5.0])
    row = dict(zip(group_summary_columns(3), group_summary(per_image, groups).tolist()))
    assert row["norm_pos"] == pytest.approx(2.5)
    assert row["norm_pos_train"] == pytest.approx(2.0) and row["norm_pos_test"] == pytest.approx(3.0)
    assert row["norm_pos_c1"] == pytest.approx(3.5)
    assert row["entropy_pos"] == pytest.approx(3.0)  # mean of the defined values (1, 5), not (1 + 0 + 0 + 5) / 4
    assert row["entropy_pos_nan"] == 2.0
    assert row["entropy_pos_nan_c0"] == 1.0 and row["entropy_pos_c0"] == pytest.approx(1.0)
    assert math.isnan(row["entropy_pos_c2"]) and row["entropy_pos_nan_c2"] == 0.0  # class 2 has no image
    assert len(row) == len(group_summary_columns(3))
