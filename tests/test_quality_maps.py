"""Complexity and localisation metrics of attrlab.quality equal Quantus 0.6 on the same maps and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quantus_reference import NO_NORMALISATION, SECOND_MOMENT, np32, quantus, random_maps

from attrlab.quality import (
    complexity,
    normalise_maps,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    sparseness,
)


def masks_for(n: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, 28, 28, dtype=torch.bool)
    for i in range(n):  # a box per map, of varying size and place (test data only)
        top, left = torch.randint(0, 14, (2,), generator=generator).tolist()
        masks[i, :, top : top + 6 + i, left : left + 9] = True
    return masks


def call_quantus(metric, a, masks=None, x=None):
    x = torch.zeros_like(a) if x is None else x
    y = np.zeros(len(a), dtype=np.int64)
    s = None if masks is None else np32(masks.float())
    return np.asarray(metric(model=None, x_batch=np32(x), y_batch=y, a_batch=np32(a), s_batch=s), dtype=np.float64)


@pytest.mark.parametrize("normalise", ["second_moment", "none"])
def test_sparseness_and_complexity_equal_quantus(normalise):
    a = random_maps(8)
    kwargs = SECOND_MOMENT if normalise == "second_moment" else NO_NORMALISATION
    expected_gini = call_quantus(quantus.Sparseness(abs=True, **kwargs), a)
    expected_entropy = call_quantus(quantus.Complexity(abs=True, **kwargs), a)
    np.testing.assert_allclose(sparseness(a, normalise=normalise).numpy(), expected_gini, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(complexity(a, normalise=normalise).numpy(), expected_entropy, rtol=1e-5, atol=1e-6)


def test_sparseness_orders_concentrated_above_uniform():
    uniform = torch.ones(1, 1, 8, 8)
    spike = torch.zeros(1, 1, 8, 8)
    spike[0, 0, 3, 3] = 1.0
    gini = sparseness(torch.cat([uniform, spike]))
    assert gini[0] < 1e-5 and gini[1] > 0.98
    entropy = complexity(torch.cat([uniform, spike]))
    assert entropy[0] == pytest.approx(np.log(64), rel=1e-5) and entropy[1] < 1e-5


@pytest.mark.parametrize("absolute", [True, False])
def test_relevance_rank_and_mass_accuracy_equal_quantus(absolute):
    a, masks = random_maps(8), masks_for(8)
    rra = call_quantus(quantus.RelevanceRankAccuracy(abs=absolute, **SECOND_MOMENT), a, masks)
    rma = call_quantus(quantus.RelevanceMassAccuracy(abs=absolute, **SECOND_MOMENT), a, masks)
    np.testing.assert_allclose(relevance_rank_accuracy(a, masks, absolute=absolute).numpy(), rra, rtol=1e-6)
    np.testing.assert_allclose(relevance_mass_accuracy(a, masks, absolute=absolute).numpy(), rma, rtol=1e-4, atol=1e-5)


def test_localisation_accepts_masks_without_channel_and_scores_empty_masks_nan():
    a, masks = random_maps(4), masks_for(4)
    masks[2] = False
    rra = relevance_rank_accuracy(a, masks[:, 0])
    rma = relevance_mass_accuracy(a, masks[:, 0])
    assert torch.isnan(rra[2]) and torch.isnan(rma[2]) and not torch.isnan(rra[[0, 1, 3]]).any()
    torch.testing.assert_close(rra, relevance_rank_accuracy(a, masks), equal_nan=True)
    inside = torch.zeros_like(a)
    inside[masks] = 1.0
    perfect = relevance_rank_accuracy(inside + 0.01 * a.abs() * (~masks), masks)
    assert torch.allclose(perfect[[0, 1, 3]], torch.ones(3))
    with pytest.raises(ValueError, match="masks of shape"):
        relevance_mass_accuracy(a, masks[:, :, :10])


def test_second_moment_normalisation_is_per_map_unlike_quantus_default_axes():
    """Quantus 0.6 with default axes shares one second moment across the batch; attrlab scales each map alone."""
    a = random_maps(4)
    a[0] *= 10.0
    ours = normalise_maps(a).numpy()
    per_map = quantus.normalise_func.normalise_by_average_second_moment_estimate(np32(a), normalise_axes=(1, 2, 3))
    whole_batch = quantus.normalise_func.normalise_by_average_second_moment_estimate(np32(a))
    np.testing.assert_allclose(ours, per_map, rtol=1e-5)
    assert not np.allclose(ours, whole_batch, rtol=1e-2)
    assert np.allclose(np.sqrt((ours**2).reshape(4, -1).mean(1)), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown normalisation 'l2'.*second_moment"):
        normalise_maps(a, "l2")
