"""Guidance data (attrlab.canvas): dilated boxes, partial annotation, the spurious-correlation set."""

from __future__ import annotations

import pytest
import torch

from attrlab.canvas import (
    SPURIOUS_GROUPS,
    annotated_subset,
    dilate_boxes,
    group_accuracy,
    make_canvases,
    make_spurious,
)
from attrlab.data import load_dataset


@pytest.fixture(scope="module")
def source():
    return load_dataset("digits", device="cpu").train


def test_dilated_boxes_grow_by_the_percentage_and_stay_on_the_canvas(source):
    split = make_canvases(source.x, source.y, 40, size=32, digits=(1, 2), scale=(8, 16), seed=3)
    dilated = dilate_boxes(split, 50)
    present = split.labels >= 0
    old, new = split.boxes[present], dilated.boxes[present]
    side = old[:, 2] - old[:, 0]
    grow = torch.round(side.float() * 0.25).long()
    torch.testing.assert_close(new[:, 0], (old[:, 0] - grow).clamp(min=0))
    torch.testing.assert_close(new[:, 2], (old[:, 2] + grow).clamp(max=32))
    assert torch.equal(dilated.boxes[~present], split.boxes[~present])  # empty slots stay empty
    assert bool((dilated.box_masks | ~split.box_masks).all())  # the old box lies in the new one
    assert torch.equal(dilate_boxes(split, 0).boxes, split.boxes)
    assert dilated.x is split.x
    with pytest.raises(ValueError, match="percent must be a number >= 0"):
        dilate_boxes(split, -5)


def test_annotated_subset_counts_and_is_seeded():
    assert int(annotated_subset(1000, 0.01).sum()) == 10
    assert int(annotated_subset(1000, 0.1).sum()) == 100
    assert int(annotated_subset(30, 0.01).sum()) == 1  # never nothing
    assert torch.equal(annotated_subset(500, 0.1, seed=4), annotated_subset(500, 0.1, seed=4))
    assert not torch.equal(annotated_subset(500, 0.1, seed=4), annotated_subset(500, 0.1, seed=5))
    with pytest.raises(ValueError, match="fraction must be in"):
        annotated_subset(10, 0.0)


def test_spurious_training_split_is_perfectly_correlated_and_test_is_not(source):
    train = make_spurious(source.x, source.y, 400, correlated=True, seed=0)
    test = make_spurious(source.x, source.y, 400, correlated=False, seed=1)
    assert torch.equal(train.background, train.y)  # G1 and G4 only
    assert set(train.group.tolist()) == {0, 3}
    counts = torch.bincount(test.group, minlength=4)
    assert bool((counts > 60).all())  # every group is present at test time
    high = torch.tensor(SPURIOUS_GROUPS[1])
    assert torch.equal(train.y, torch.isin(train.digits, high).long())
    assert train.x.shape == (400, 1, 32, 32) and float(train.x.min()) >= -1 and float(train.x.max()) <= 1
    # the stripes alone predict the training label: a horizontal background varies along rows, a vertical along columns
    rows_vary = train.x[:, 0].var(1).mean((1,)) > train.x[:, 0].var(2).mean((1,))
    assert float((rows_vary.long() == 1 - train.background).float().mean()) > 0.95
    again = make_spurious(source.x, source.y, 400, correlated=True, seed=0)
    assert torch.equal(again.x, train.x)
    sub = test.select(torch.arange(10))
    assert torch.equal(sub.background, test.background[:10]) and len(sub) == 10


def test_group_accuracy_worst_group_and_overall(source):
    test = make_spurious(source.x, source.y, 200, correlated=False, seed=1)
    by_background = test.background.clone()  # a model that reads only the stripes
    result = group_accuracy(by_background, test)
    assert result["G1"] == 100 and result["G4"] == 100 and result["G2"] == 0 and result["G3"] == 0
    assert result["worst"] == 0
    assert result["overall"] == pytest.approx(100 * float((test.background == test.y).float().mean()))
    with pytest.raises(ValueError, match="predictions must have shape"):
        group_accuracy(by_background[:5], test)
