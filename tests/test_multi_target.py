"""Several targets per image: an (N, T) target gives the same maps as T calls with one target column each."""

from __future__ import annotations

import functools

import pytest
import torch
from attribution_cases import images, model_for

from attrlab.attribution import (
    available_methods,
    get_method,
    make_method,
    resolve_target,
)

#: cheap settings for the multi-pass methods
SETTINGS = {
    "integrated_gradients": {"n_steps": 4, "internal_batch_size": 12},  # chunks of whole steps: 2 passes of 2 steps
    "smoothgrad": {"n_samples": 3, "internal_batch_size": 5},  # chunks that split an image's samples
    "occlusion": {"window": 8, "stride": 8, "internal_batch_size": 40},
    "rise": {"n_masks": 30, "internal_batch_size": 70},
    "lrp": {"composite": "epsilon_gamma_box", "low": -1.0, "high": 1.0},
    "lime": {"n_samples": 30},
}
LAYERS = {"gradcam": None, "gradcam_pp": None, "layercam": None, "gradcam_seed_code": None}


@functools.cache
def _deep_patterns(device: str):
    from attrlab.attribution.pattern import fit_patterns

    model = model_for("deep", (1, 28, 28), device=device)
    return fit_patterns(model, images((1, 28, 28), count=200, offset=100, device=device), progress=False)


@pytest.mark.parametrize("name", available_methods(include_reproductions=True))
@pytest.mark.parametrize("layer", [None, "conv2"])
def test_multi_target_equals_one_call_per_column(name, layer, device):
    model = model_for("deep", (1, 28, 28), device=device)
    x = images((1, 28, 28), count=6, device=device)
    if name == "gradcam_seed_code":
        batch = images((1, 28, 28), count=8, offset=10, device=device)
        settings = {"training_batch": (batch, torch.arange(8, device=device) % 10)}
    elif name in ("pattern_net", "pattern_attribution"):
        settings = {"patterns": _deep_patterns(device)}
    else:
        settings = SETTINGS.get(name, {})
    method = make_method(name, model, **settings)
    targets = torch.tensor([[0, 3, 3], [1, 2, 9], [4, 4, 0], [5, 6, 7], [8, 1, 2], [9, 0, 5]]).to(device)
    if layer is not None and getattr(get_method(name), "input_only", False):
        with pytest.raises(ValueError, match="input only"):
            method.explain(x, target=targets, layer=layer)
        return
    explanation = method.explain(x, target=targets, layer=layer)
    assert torch.equal(explanation.target, targets)
    columns = [method.explain(x, target=targets[:, t], layer=layer) for t in range(targets.shape[1])]
    expected = torch.stack([column.attribution for column in columns], 1)
    assert explanation.attribution.shape == expected.shape
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(explanation.logits, columns[0].logits)


def test_one_target_column_keeps_the_column_axis():
    model = model_for("shallow", (1, 28, 28))
    x = images((1, 28, 28), count=4)
    attribution = make_method("gradient", model).attribute(x, target=torch.tensor([[1], [2], [3], [4]]))
    assert attribution.shape == (4, 1, 1, 28, 28)


@pytest.mark.parametrize(
    "target, message",
    [
        (torch.zeros(3, 2, dtype=torch.long), "N = 4 images"),
        (torch.zeros(4, 0, dtype=torch.long), "T >= 1"),
        (torch.tensor([[0, 10]] * 4), "outside 0..9"),
        (torch.zeros(4, 2), "integer class indices"),
    ],
)
def test_bad_2d_targets_are_named(target, message):
    with pytest.raises((ValueError, TypeError), match=message):
        resolve_target(target, torch.zeros(4, 10))


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "gradcam", "occlusion"])
def test_multi_target_through_the_hook_fallback(name):
    from test_gradient_methods import _Wrapped

    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=4)
    targets = torch.tensor([[0, 5], [1, 1], [9, 2], [3, 4]])
    settings = SETTINGS.get(name, {})
    flat = make_method(name, model, **settings).attribute(x, target=targets, layer="conv2")
    nested = make_method(name, _Wrapped(model), **settings).attribute(x, target=targets, layer="body.conv2")
    torch.testing.assert_close(nested, flat, rtol=1e-5, atol=1e-6)


def test_lrp_starting_from_one_per_target_column():
    model = model_for("shallow", (1, 28, 28))
    x = images((1, 28, 28), count=4)
    targets = torch.tensor([[0, 5], [1, 1], [9, 2], [3, 4]])
    method = make_method("lrp", model, start="one")
    expected = torch.stack([method.attribute(x, target=targets[:, t]) for t in range(2)], 1)
    torch.testing.assert_close(method.attribute(x, target=targets), expected, rtol=1e-5, atol=1e-6)
