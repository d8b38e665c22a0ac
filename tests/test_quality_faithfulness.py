"""Faithfulness metrics of attrlab.quality equal Quantus on the same model, images, maps and random draws.

Region Perturbation is checked in both layouts: ``grid`` against Quantus 0.6's ``RegionPerturbation`` itself, and
``windows`` (the semantics Pahde et al. 2023 ran, Quantus <= 0.4) against a line-by-line transcription of that
version's ``evaluate_instance`` built from Quantus 0.6's own padding and perturbation helpers.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from quantus_reference import SECOND_MOMENT, np32, quantus, random_maps

from attrlab.models import build_model
from attrlab.quality import (
    aopc,
    faithfulness_correlation,
    normalise_maps,
    pixel_flipping,
    region_perturbation,
)
from attrlab.quality.draws import quantus_subsets, random_subsets

utils = quantus.helpers.utils


@pytest.fixture(scope="module")
def case(digits):
    model = build_model("shallow", seed=0).eval()
    x, y = digits.test.x[:3], digits.test.y[:3]
    return model, x, y, random_maps(3, seed=3)


def logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x, dtype=torch.float32)).numpy()


def quantus_window_curves(model, x, y, a, patch_size, regions_evaluation, order, baseline):
    """Quantus 0.3/0.4 ``RegionPerturbation.evaluate_instance`` per image (attribution axes: height and width)."""
    axes = (1, 2)
    if baseline == "blur":
        perturb = lambda arr, indices: quantus.baseline_replacement_by_blur(
            arr=arr, indices=indices, indexed_axes=axes, blur_kernel_size=[15, 15]
        )
    else:
        perturb = lambda arr, indices: quantus.baseline_replacement_by_indices(
            arr=arr, indices=indices, indexed_axes=axes, perturb_baseline=baseline
        )
    curves = []
    for xi, yi, ai in zip(x, y, a):
        y_pred = float(logits(model, xi[None])[0, yi])
        pad = patch_size - 1
        x_pad = utils._pad_array(xi, pad, mode="constant", padded_axes=axes)
        a_pad = utils._pad_array(ai, pad, mode="constant", padded_axes=axes)
        patches, sums = [], []
        for corner in itertools.product(*[range(pad, x_pad.shape[ax] - pad) for ax in axes]):
            patch = utils.create_patch_slice(patch_size=(patch_size, patch_size), coords=corner)
            sums.append(a_pad[utils.expand_indices(a_pad, patch, axes)].sum())
            patches.append(patch)
        ranking = np.argsort(sums)[::-1] if order == "morf" else np.argsort(sums)
        blocked = np.zeros(x_pad.shape, dtype=bool)
        kept = []
        for index in ranking:
            mask = np.zeros(x_pad.shape, dtype=bool)
            mask[utils.expand_indices(mask, patches[index], axes)] = True
            if not (blocked & mask).any():
                kept.append(patches[index])
                blocked |= mask
            if len(kept) >= regions_evaluation:
                break
        x_perturbed, curve = xi.copy(), []
        for patch in kept:
            x_perturbed_pad = utils._pad_array(x_perturbed, pad, mode="edge", padded_axes=axes)
            x_perturbed_pad = perturb(x_perturbed_pad, patch)
            x_perturbed = utils._unpad_array(x_perturbed_pad, pad, padded_axes=axes)
            curve.append(y_pred - float(logits(model, x_perturbed[None])[0, yi]))
        curves.append(curve + [np.nan] * (regions_evaluation - len(curve)))
    return np.array(curves)


@pytest.mark.parametrize(
    "order, baseline, patch_size, regions",
    [("morf", "blur", 5, 40), ("lerf", "mean", 5, 12), ("morf", "black", 4, 60)],
)
def test_region_perturbation_windows_equal_quantus_semantics_of_the_seed(case, order, baseline, patch_size, regions):
    model, x, y, a = case
    ours = region_perturbation(
        model,
        x,
        y,
        a,
        patch_size=patch_size,
        regions_evaluation=regions,
        order=order,
        baseline=baseline,
        softmax=False,
    )
    reference = quantus_window_curves(
        model, np32(x), y.numpy(), np32(normalise_maps(a)), patch_size, regions, order, baseline
    )
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)
    if regions == 60:  # fewer than 60 non-overlapping 4x4 windows fit greedily in 28x28: the tail is NaN
        assert np.isnan(reference[:, -1]).all() and torch.isnan(ours[:, -1]).all()


def batched_blur(shape):
    """Quantus 0.6's per-image blur perturbation for its batched region loop (which does not support blur)."""

    def perturb(arr, indices, **kwargs):
        out = arr.copy()
        for i in range(len(arr)):
            image = arr[i].reshape(shape)
            _, rows, cols = np.unravel_index(indices[i], shape)  # one channel: the pixels' rows and columns
            out[i] = quantus.baseline_replacement_by_blur(
                arr=image, indices=(rows, cols), indexed_axes=(1, 2), blur_kernel_size=15
            ).reshape(-1)
        return out

    return perturb


@pytest.mark.parametrize("baseline, patch_size", [("black", 4), ("mean", 6), ("blur", 7)])
def test_region_perturbation_grid_equals_quantus_0_6(case, baseline, patch_size):
    model, x, y, a = case
    kwargs = dict(patch_size=patch_size, regions_evaluation=10, order="morf", abs=False, **SECOND_MOMENT)
    if baseline == "blur":
        metric = quantus.RegionPerturbation(perturb_func=batched_blur((1, 28, 28)), **kwargs)
    else:
        metric = quantus.RegionPerturbation(perturb_baseline=baseline, **kwargs)
    expected = np.array(metric(model=model, x_batch=np32(x), y_batch=y.numpy(), a_batch=np32(a)))
    ours = region_perturbation(
        model, x, y, a, patch_size=patch_size, regions_evaluation=10, baseline=baseline, regions="grid"
    )
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_aopc_variants():
    curves = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [0.5, 0.5, 0.5, 0.5]])
    torch.testing.assert_close(aopc(curves), torch.tensor([6.0 / 4, 2.0 / 5]))
    torch.testing.assert_close(aopc(curves, "seed_code"), torch.tensor([1.0 - 2.0, 0.0]))
    with pytest.raises(ValueError, match="unknown AOPC variant 'auc'.*samek, seed_code"):
        aopc(curves, "auc")


def test_morf_drops_more_than_lerf_where_the_map_is_the_exact_contribution(digits):
    """For a linear model, w_y * (x - min x) is each pixel's exact share of the logit drop under the black baseline."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    x, y = digits.test.x[:4], digits.test.y[:4]
    weights = model[1].weight[y].detach().reshape(x.shape)
    maps = weights * (x - x.amin(dim=(1, 2, 3), keepdim=True))
    settings = dict(patch_size=4, regions_evaluation=20, baseline="black", softmax=False)
    morf = region_perturbation(model, x, y, maps, **settings)
    lerf = region_perturbation(model, x, y, maps, order="lerf", **settings)
    assert (aopc(morf) > aopc(lerf)).all()
    # the first MoRF region is the window of largest summed relevance, and its drop is exactly that sum
    best = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(maps, (0, 3, 0, 3)), 4, stride=1).amax((1, 2, 3)) * 16
    torch.testing.assert_close(morf[:, 0], best, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("baseline", ["black", "mean", 0.0])
def test_pixel_flipping_equals_quantus(case, baseline):
    model, x, y, a = case
    metric = quantus.PixelFlipping(features_in_step=28, perturb_baseline=baseline, abs=False, **SECOND_MOMENT)
    expected = np.array(metric(model=model, x_batch=np32(x), y_batch=y.numpy(), a_batch=np32(a)))
    ours = pixel_flipping(model, x, y, a, features_in_step=28, baseline=baseline, batch_size=64)
    assert ours.shape == (3, 28)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("baseline", ["black", "mean"])
def test_faithfulness_correlation_equals_quantus_on_its_draws(case, baseline):
    model, x, y, a = case
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=20, subset_size=40, perturb_baseline=baseline, abs=False, return_aggregate=False, **SECOND_MOMENT
    )
    np.random.seed(7)
    expected = np.array(metric(model=model, x_batch=np32(x), y_batch=y.numpy(), a_batch=np32(a)))
    subsets = quantus_subsets(3, 20, 784, 40, seed=7)
    ours = faithfulness_correlation(model, x, y, a, nr_runs=20, subset_size=40, baseline=baseline, subsets=subsets)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_faithfulness_correlation_draws_are_seeded_and_checked(case):
    model, x, y, a = case
    first = faithfulness_correlation(model, x, y, a, nr_runs=10, subset_size=30, seed=1)
    again = faithfulness_correlation(model, x, y, a, nr_runs=10, subset_size=30, seed=1)
    other = faithfulness_correlation(model, x, y, a, nr_runs=10, subset_size=30, seed=2)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    subsets = random_subsets(3, 10, 784, 30, seed=1)
    assert all(len(set(row.tolist())) == 30 for row in subsets.reshape(-1, 30))
    with pytest.raises(ValueError, match="subsets must have shape"):
        faithfulness_correlation(model, x, y, a, nr_runs=10, subset_size=30, subsets=subsets[:, :5])


def test_bad_arguments_are_named(case):
    model, x, y, a = case
    with pytest.raises(ValueError, match="unknown baseline 'gray'.*black, white, mean, blur"):
        region_perturbation(model, x, y, a, baseline="gray")
    with pytest.raises(ValueError, match="unknown region layout 'tiles'.*windows, grid"):
        region_perturbation(model, x, y, a, regions="tiles")
    with pytest.raises(ValueError, match="unknown order 'random'"):
        region_perturbation(model, x, y, a, order="random")
    with pytest.raises(ValueError, match="patch_size must be an integer between 1 and 28"):
        region_perturbation(model, x, y, a, patch_size=29)
    with pytest.raises(ValueError, match="features_in_step must be"):
        pixel_flipping(model, x, y, a, features_in_step=0)


def test_layouts_differ_as_documented_and_the_callers_model_is_untouched(digits):
    """Greedy stride-1 windows (Pahde et al.'s Quantus) need not sit on the block grid of Quantus 0.6."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 784, 10)
    ).train()
    x, y = digits.test.x[:2], digits.test.y[:2]
    maps = random_maps(2, seed=5)
    windows = region_perturbation(model, x, y, maps, patch_size=4, regions_evaluation=8, baseline="black")
    grid = region_perturbation(model, x, y, maps, patch_size=4, regions_evaluation=8, baseline="black", regions="grid")
    assert windows.shape == grid.shape == (2, 8) and not torch.allclose(windows, grid)
    assert model.training and model[0].weight.is_contiguous() and model[0].weight.requires_grad
