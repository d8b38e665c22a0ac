"""EPG, IoU and the localisation losses (attrlab.guidance) on hand-made maps and boxes, and EPG against Quantus."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attrlab.guidance.losses import LOG_FLOOR, localisation_loss, per_image_loss
from attrlab.guidance.metrics import energy_pointing_game, fit_maps, iou, select_iou_threshold


def box(n: int, size: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    masks[:, top:bottom, left:right] = True
    return masks


def test_epg_on_hand_made_maps():
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 3 of 4 inside
    maps[1, 0, 0], maps[1, 3, 3] = -5.0, 2.0  # negative inside does not count: 0 inside
    maps[2] = -1.0  # no positive attribution: NaN
    masks = box(3, 4, 0, 0, 2, 2)
    score = energy_pointing_game(maps, masks)
    assert score[0] == pytest.approx(0.75) and score[1] == 0 and math.isnan(score[2])
    empty = torch.zeros(3, 4, 4, dtype=torch.bool)
    assert torch.isnan(energy_pointing_game(maps, empty)).all()
    torch.testing.assert_close(energy_pointing_game(maps[:, None], masks), score, equal_nan=True)


def test_epg_equals_quantus_attribution_localisation():
    quantus = pytest.importorskip("quantus")
    generator = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 1, 28, 28, generator=generator)
    masks = torch.zeros(6, 1, 28, 28, dtype=torch.bool)
    for i in range(6):
        masks[i, :, 2 + i : 12 + 2 * i, 5 : 15 + i] = True
    metric = quantus.AttributionLocalisation(
        positive_attributions=True, abs=False, normalise=False, disable_warnings=True
    )
    expected = metric(
        model=None,
        x_batch=np.zeros((6, 1, 28, 28), np.float32),
        y_batch=np.zeros(6, np.int64),
        a_batch=maps.numpy().astype(np.float32),
        s_batch=masks.numpy().astype(np.float32),
    )
    np.testing.assert_allclose(energy_pointing_game(maps[:, 0], masks[:, 0]).numpy(), expected, rtol=1e-5)


def test_iou_on_hand_made_maps_and_threshold_selection():
    maps = torch.zeros(2, 4, 4)
    maps[0, :2, :2] = 1.0  # exactly the box
    maps[1, :2, :] = torch.tensor([1.0, 0.6, 0.4, 0.4])  # the box where above 0.5, the whole top half above 0.3
    masks = box(2, 4, 0, 0, 2, 2)
    assert iou(maps, masks, 0.5).tolist() == [1.0, 1.0]
    assert iou(maps, masks, 0.3).tolist() == [1.0, pytest.approx(4 / 8)]
    assert select_iou_threshold(maps, masks, (0.3, 0.5)) == 0.5
    assert select_iou_threshold(maps[:1], masks[:1], (0.3, 0.5)) == 0.3  # a tie: the smaller
    with pytest.raises(ValueError, match="threshold must be a number in"):
        iou(maps, masks, 1.0)
    assert torch.isnan(iou(torch.zeros(2, 4, 4), masks, 0.5)).all()


def test_layer_maps_are_resized_to_the_masks():
    coarse = torch.zeros(1, 2, 2)
    coarse[0, 0, 0] = 1.0
    fine = fit_maps(coarse, (4, 4))
    assert fine.shape == (1, 4, 4)
    torch.testing.assert_close(
        fine, torch.nn.functional.interpolate(coarse[:, None], size=(4, 4), mode="bilinear")[:, 0]
    )
    score = energy_pointing_game(coarse, box(1, 4, 0, 0, 2, 2))
    assert score == energy_pointing_game(fine, box(1, 4, 0, 0, 2, 2)) and score > 0.7
    with pytest.raises(ValueError, match="masks must be"):
        energy_pointing_game(coarse, torch.zeros(2, 4, 4, dtype=torch.bool))


def test_losses_on_hand_made_maps():
    masks = box(1, 2, 0, 0, 1, 2)  # the top row
    maps = torch.tensor([[[2.0, 1.0], [1.0, -2.0]]])
    # Energy: -(2 + 1) / (2 + 1 + 1)
    assert per_image_loss("energy", maps, masks).item() == pytest.approx(-0.75)
    # L1 on A+ / max A+ = [[1, .5], [.5, 0]] against [[1, 1], [0, 0]]: (0 + .5 + .5 + 0) / 4
    assert per_image_loss("l1", maps, masks).item() == pytest.approx(0.25)
    # PPCE: -(log 1 + log .5) / 2
    assert per_image_loss("ppce", maps, masks).item() == pytest.approx(-math.log(0.5) / 2)
    # RRR*: outside the box A / max|A| = [.5, -1]: .25 + 1
    assert per_image_loss("rrr", maps, masks).item() == pytest.approx(1.25)
    zero = torch.zeros(1, 2, 2)
    assert per_image_loss("ppce", zero, masks).item() == pytest.approx(-math.log(LOG_FLOOR))


def test_loss_weights_empty_masks_and_errors():
    maps = torch.rand(4, 6, 6, requires_grad=True)
    masks = box(4, 6, 1, 1, 4, 4)
    masks[3] = False  # an image without a box adds nothing
    weight = torch.tensor([True, False, True, True])
    per_image = per_image_loss("energy", maps, masks)
    assert per_image[3] == 0
    total = localisation_loss("energy", maps, masks, weight)
    assert total.item() == pytest.approx(float(per_image[[0, 2]].sum() / 4))
    total.backward()
    assert maps.grad is not None and maps.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="unknown localisation loss 'dice'; valid choices: energy, l1, ppce, rrr"):
        localisation_loss("dice", maps, masks)
    with pytest.raises(ValueError, match="masks must be"):
        localisation_loss("l1", maps, masks[:2])
    with pytest.raises(ValueError, match="weight must have shape"):
        localisation_loss("l1", maps, masks, weight[:2])
