"""RectGrad against a per-image, layer-by-layer reference with NumPy's percentile, at the input and at a layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attribution_cases import images, model_for
from torch import nn

from attrlab.attribution import make_method
from attrlab.attribution.rectgrad import row_percentile


def _reference(model: nn.Sequential, image: torch.Tensor, target: int, percentile: float, stop: int = 0):
    """Walk the layers forward, keep each input, then back-propagate module by module (one image)."""
    layers = list(model)
    values = [image[None]]
    with torch.no_grad():
        for layer in layers:
            values.append(layer(values[-1]))
    signal = torch.zeros_like(values[-1])
    signal[0, target] = 1.0
    for index in range(len(layers) - 1, stop - 1, -1):
        layer, value = layers[index], values[index]
        if isinstance(layer, nn.ReLU):
            importance = (values[index + 1] * signal).numpy().ravel()
            threshold = np.percentile(importance, percentile)
            signal = signal * torch.as_tensor(importance > threshold).view_as(signal)
        else:
            value = value.clone().requires_grad_(True)
            (signal,) = torch.autograd.grad(layer(value), value, signal)
    return signal[0]


@pytest.mark.parametrize("architecture, percentile", [("shallow", 98.0), ("deep", 98.0), ("deep", 50.0)])
def test_rectgrad_matches_a_per_image_reference(architecture, percentile):
    model = model_for(architecture, (1, 28, 28))
    x = images((1, 28, 28), count=3)
    target = torch.tensor([1, 5, 8])
    ours = make_method("rectgrad", model, percentile=percentile).attribute(x, target)
    expected = torch.stack([_reference(model, x[i], int(target[i]), percentile) for i in range(3)])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)
    names = list(dict(model.named_children()))
    layer = "relu3" if architecture == "deep" else "relu1"
    ours_layer = make_method("rectgrad", model, percentile=percentile).attribute(x, target, layer=layer)
    stop = names.index(layer) + 1
    expected_layer = torch.stack([_reference(model, x[i], int(target[i]), percentile, stop) for i in range(3)])
    torch.testing.assert_close(ours_layer, expected_layer, rtol=1e-5, atol=1e-7)


def test_row_percentile_is_numpys_and_bad_settings_are_named():
    values = torch.randn(4, 37, generator=torch.Generator().manual_seed(0))
    for q in (0.0, 2.5, 50.0, 98.0, 100.0):
        expected = np.percentile(values.numpy(), q, axis=1)
        torch.testing.assert_close(row_percentile(values, q)[:, 0], torch.as_tensor(expected, dtype=values.dtype))
    with pytest.raises(ValueError, match="percentile must be a number in \\[0, 100\\], got 120"):
        make_method("rectgrad", model_for("shallow", (1, 28, 28)), percentile=120)
