"""Occlusion against captum (at the input and, via captum on the model's upper part, at a layer); RISE against its
definition evaluated mask by mask, its masks, and its determinism."""

from __future__ import annotations

import pytest
import torch
from attribution_cases import CASES, images, model_for, relative_error

pytest.importorskip("captum")  # the reference implementation; skipped where it is not installed
from captum.attr import Occlusion
from torch import nn

from attrlab.attribution import make_method
from attrlab.attribution.perturbation import rise_masks

TOLERANCE = 1e-4


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_occlusion_matches_captum(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, count=3, device=device)
    target = model(x).argmax(1)
    # window 7 / stride 4 tiles neither 28 nor 32: the last window is cropped at the border as in captum
    ours = make_method("occlusion", model, window=7, stride=4, internal_batch_size=64).attribute(x)
    reference = Occlusion(model).attribute(
        x, sliding_window_shapes=(shape[0], 7, 7), strides=(shape[0], 4, 4), target=target, perturbations_per_eval=64
    )
    assert ours.shape == x.shape
    assert relative_error(ours, reference) <= TOLERANCE


def test_occlusion_scores_probabilities_and_rectangular_windows():
    model = model_for("shallow", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    ours = make_method("occlusion", model, window=(6, 3), stride=(4, 2), baseline=-1.0, output="probability").attribute(
        x, target=4
    )
    probabilities = nn.Sequential(model, nn.Softmax(dim=1))
    reference = Occlusion(probabilities).attribute(
        x, sliding_window_shapes=(1, 6, 3), strides=(1, 4, 2), baselines=-1.0, target=4, perturbations_per_eval=64
    )
    assert relative_error(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("layer", ["conv2", "relu4", "pool2"])
def test_occlusion_at_a_layer_matches_captum_on_the_upper_part(layer):
    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    names = [name for name, _ in model.named_children()]
    cut = names.index(layer) + 1
    lower = nn.Sequential(*[getattr(model, n) for n in names[:cut]])
    upper = nn.Sequential(*[getattr(model, n) for n in names[cut:]])
    with torch.no_grad():
        activation = lower(x)
    channels = activation.shape[1]
    ours = make_method("occlusion", model, window=3, stride=2).attribute(x, target=7, layer=layer)
    reference = Occlusion(upper).attribute(
        activation,
        sliding_window_shapes=(channels, 3, 3),
        strides=(channels, 2, 2),
        target=7,
        perturbations_per_eval=64,
    )
    assert ours.shape == activation.shape
    assert relative_error(ours, reference) <= TOLERANCE


def test_occlusion_chunking_does_not_change_the_result():
    model = model_for("shallow", (3, 32, 32))
    x = images((3, 32, 32), count=5)
    whole = make_method("occlusion", model, window=8, stride=6, internal_batch_size=None).attribute(x)
    chunked = make_method("occlusion", model, window=8, stride=6, internal_batch_size=7).attribute(x)
    assert relative_error(chunked, whole) <= 1e-5  # batch size changes float summation order only


def test_rise_masks_are_smooth_seeded_and_keep_about_p():
    masks = rise_masks(400, (28, 28), cell_size=4, p=0.3, seed=1)
    assert masks.shape == (400, 28, 28)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert float(masks.mean()) == pytest.approx(0.3, abs=0.02)
    assert torch.equal(masks, rise_masks(400, (28, 28), cell_size=4, p=0.3, seed=1))
    assert not torch.equal(masks, rise_masks(400, (28, 28), cell_size=4, p=0.3, seed=2))
    # bilinear between cells: neighbouring pixels differ by at most one cell step (1 / cell_size per pixel)
    assert float((masks[:, :, 1:] - masks[:, :, :-1]).abs().max()) <= 1 / 4 + 1e-6


@pytest.mark.parametrize("output", ["probability", "logit"])
def test_rise_equals_its_definition_mask_by_mask(output):
    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    n_masks, p = 40, 0.5
    method = make_method(
        "rise", model, n_masks=n_masks, p=p, seed=3, output=output, baseline=-1.0, internal_batch_size=25
    )
    explanation = method.explain(x)
    masks = rise_masks(n_masks, (28, 28), cell_size=4, p=p, seed=3)
    expected = torch.zeros(3, 28, 28)
    with torch.no_grad():
        for mask in masks:
            scores = model(x * mask + -1.0 * (1 - mask))
            if output == "probability":
                scores = scores.softmax(1)
            expected += scores.gather(1, explanation.target[:, None])[:, :, None] * mask
    expected /= n_masks * p
    assert explanation.attribution.shape == (3, 1, 28, 28)
    assert relative_error(explanation.attribution[:, 0], expected) <= TOLERANCE
    assert torch.equal(explanation.attribution, method.attribute(x))


def test_rise_at_a_layer_uses_masks_of_the_layer_size():
    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=2)
    attribution = make_method("rise", model, n_masks=20, cell_size=2).attribute(x, layer="relu4")
    assert attribution.shape == (2, 1, 14, 14)
    assert bool(torch.isfinite(attribution).all())


def test_occlusion_takes_a_baseline_tensor_in_the_call():
    """A per-image baseline tensor is a call argument (captum's ``baselines=``); a number there is the scalar's map."""
    model = model_for("shallow", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    baselines = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    method = make_method("occlusion", model, window=7, stride=4)
    ours = method.attribute(x, target=[2, 5, 7], baselines=baselines)
    reference = Occlusion(model).attribute(
        x,
        sliding_window_shapes=(1, 7, 7),
        strides=(1, 4, 4),
        baselines=baselines,
        target=[2, 5, 7],
        perturbations_per_eval=64,
    )
    assert relative_error(ours, reference) <= TOLERANCE
    scalar = make_method("occlusion", model, window=7, stride=4, baseline=-1.0).attribute(x, target=[2, 5, 7])
    torch.testing.assert_close(method.attribute(x, target=[2, 5, 7], baselines=-1.0), scalar)
    with pytest.raises(TypeError, match="baselines=tensor"):
        make_method("occlusion", model, baseline=baselines)
