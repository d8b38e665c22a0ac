"""The canvas localisation data set: deterministic, boxes and masks where the digits are, usable by the trainer."""

from __future__ import annotations

import pytest
import torch

from attrlab.canvas import make_canvases
from attrlab.data import DATASET_SHAPES, load_dataset
from attrlab.models import build_model
from attrlab.quality import relevance_mass_accuracy, relevance_rank_accuracy


@pytest.fixture(scope="module")
def canvases(digits):
    return make_canvases(digits.train.x, digits.train.y, 40, seed=3)


def test_canvases_are_deterministic_and_seeded(digits, canvases):
    again = make_canvases(digits.train.x, digits.train.y, 40, seed=3)
    other = make_canvases(digits.train.x, digits.train.y, 40, seed=4)
    assert torch.equal(canvases.x, again.x) and torch.equal(canvases.boxes, again.boxes)
    assert not torch.equal(canvases.x, other.x)


def test_boxes_masks_and_labels_describe_the_digits(digits, canvases):
    c = canvases
    assert c.x.shape == (40, 1, 64, 64) and c.x.min() >= -1 and c.x.max() <= 1
    counts = c.count
    assert counts.min() >= 1 and counts.max() <= 3 and len(set(counts.tolist())) > 1
    assert torch.equal(c.y, c.labels[:, 0])
    for i in range(40):  # every present digit: distinct class, box inside the canvas, mask inside its box, ink there
        present = c.labels[i] >= 0
        assert len(set(c.labels[i, present].tolist())) == int(present.sum())
        for k in torch.nonzero(present).flatten().tolist():
            top, left, bottom, right = c.boxes[i, k].tolist()
            assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64 and 16 <= bottom - top <= 32
            assert c.masks[i, k].sum() > 10
            assert not (c.masks[i, k] & ~c.box_masks[i, k]).any()
            assert (c.x[i, 0][c.masks[i, k]] > -0.5).all()
        assert not c.masks[i, ~present].any()
    # digits never overlap: the boxes of one canvas are disjoint
    assert (c.box_masks.sum(1) <= 1).all()
    # outside every box the canvas is background (black without texture)
    outside = ~c.box_masks.any(1)
    assert (c.x[:, 0][outside] == -1).all()
    assert torch.equal(c.targets.sum(1).long(), counts)


def test_single_label_texture_and_class_masks(digits):
    single = make_canvases(digits.test.x, digits.test.y, 12, digits=(1, 1), background="texture", seed=0)
    assert (single.count == 1).all()
    outside = ~single.box_masks.any(1)
    assert (single.x[:, 0][outside] > -1).any()  # the texture shows outside the boxes
    masks = single.class_masks(single.y)
    assert torch.equal(masks, single.masks[:, 0])
    assert not single.class_masks((single.y + 1) % 10).any()
    # a map equal to the digit's mask localises perfectly; to another quadrant's noise, not at all
    maps = masks[:, None].float()
    assert torch.allclose(relevance_rank_accuracy(maps, masks), torch.ones(12))
    assert torch.allclose(relevance_mass_accuracy(maps, single.class_masks(single.y, "box")), torch.ones(12))


def test_bad_settings_are_named(digits):
    with pytest.raises(ValueError, match="unknown background 'noise'.*none, texture"):
        make_canvases(digits.test.x, digits.test.y, 4, background="noise")
    with pytest.raises(ValueError, match="scale must be"):
        make_canvases(digits.test.x, digits.test.y, 4, scale=(10, 40))
    with pytest.raises(ValueError, match="digits must be"):
        make_canvases(digits.test.x, digits.test.y, 4, digits=(0, 2))


@pytest.mark.slow
def test_load_dataset_canvas_and_the_models_take_it():
    data = load_dataset("canvas", device="cpu")
    assert data.input_shape == DATASET_SHAPES["canvas"][0] and data.num_classes == 10
    subset = data.test.subset(8)
    assert subset.masks.shape == (8, 3, 64, 64)
    for name in ("shallow", "deep"):
        model = build_model(name, data.input_shape, data.num_classes, seed=0)
        assert model(subset.x).shape == (8, 10)


@pytest.mark.slow
def test_the_trainer_trains_on_canvases_unchanged(tmp_path, digits):
    from attrlab.data import ImageDataset
    from attrlab.train import TrainConfig, train

    data = ImageDataset(
        "canvas",
        make_canvases(digits.train.x, digits.train.y, 300, seed=0),
        make_canvases(digits.test.x, digits.test.y, 100, seed=1),
        list(digits.classes),
    )
    config = TrainConfig(dataset="canvas", model="shallow", epochs=1, batch_size=100, attr_per_class=2, device="cpu")
    run = train(tmp_path / "run", config, dataset=data, progress=False)
    assert run.complete and run.metrics["step"].tolist() == [1, 2, 3]
    assert run.metrics["test_acc"].notna().any()
