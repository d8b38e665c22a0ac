"""PatternNet and PatternAttribution: fitted patterns and backward passes against a direct NumPy implementation of
Kindermans et al.'s formulas on a two-layer network, the toy signal-plus-distractor example, storage, conv layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attribution_cases import digits_images, images, model_for
from torch import nn

from attrlab.attribution import make_method
from attrlab.attribution.pattern import Patterns, fit_patterns, patterns_path


def _numpy_pattern(x: np.ndarray, y: np.ndarray, w: np.ndarray, positive: bool) -> np.ndarray:
    """(inputs, outputs) patterns from samples x (S, inputs), y (S, outputs), weight w (outputs, inputs)."""
    columns = []
    for j in range(y.shape[1]):
        keep = y[:, j] > 0 if positive else np.ones(len(y), bool)
        xs, ys = x[keep], y[keep, j]
        covariance = (xs * ys[:, None]).mean(0) - xs.mean(0) * ys.mean()
        columns.append(covariance / (w[j] @ covariance))
    return np.stack(columns, 1)


@pytest.mark.parametrize("estimator", ["two_component", "linear"])
def test_two_layer_network_matches_numpy(estimator):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    data = torch.randn(400, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)
    patterns = fit_patterns(model, data, estimator=estimator, batch_size=64, progress=False)
    x = data.numpy()
    w1, b1 = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    w2 = model[2].weight.detach().numpy()
    z1 = x @ w1.T + b1
    h1 = np.maximum(z1, 0)
    a1 = _numpy_pattern(x, z1, w1, positive=estimator == "two_component")
    a2 = _numpy_pattern(h1, h1 @ w2.T + model[2].bias.detach().numpy(), w2, positive=False)  # logits: linear
    np.testing.assert_allclose(patterns.patterns["0"].numpy(), a1.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(patterns.patterns["2"].numpy(), a2.T, rtol=1e-8, atol=1e-10)

    inputs, target = data[:4], torch.tensor([0, 2, 1, 2])
    net = make_method("pattern_net", model, patterns=patterns).attribute(inputs, target)
    attribution = make_method("pattern_attribution", model, patterns=patterns).attribute(inputs, target)
    for i in range(4):
        start = np.eye(3)[int(target[i])]
        mask = (z1[i] > 0).astype(float)
        signal = a1 @ (mask * (a2 @ start))  # r_l = A_l^T r_{l+1} (A as (inputs, outputs) columns)
        relevance = (w1.T * a1) @ (mask * ((w2.T * a2) @ start))  # r_l = (W_l ⊙ A_l)^T r_{l+1}
        np.testing.assert_allclose(net[i].numpy(), signal, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(attribution[i].numpy(), relevance, rtol=1e-8, atol=1e-10)


def test_linear_estimator_recovers_the_signal_direction_of_the_toy_example():
    # Kindermans et al. Fig. 2: x = a_s s + a_d d; the filter w must cancel the distractor, so w is not a_s
    generator = torch.Generator().manual_seed(0)
    a_s, a_d = torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])
    s, d = torch.randn(20000, generator=generator), torch.randn(20000, generator=generator)
    x = s[:, None] * a_s + d[:, None] * a_d
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -1.0]]))  # w^T a_d = 0, w^T a_s = 1: y = s exactly
    pattern = fit_patterns(model, x, estimator="linear", progress=False).patterns["0"][0]
    torch.testing.assert_close(pattern, a_s, rtol=0, atol=0.03)
    cosine_w = torch.nn.functional.cosine_similarity(model[0].weight[0], a_s, dim=0)
    assert cosine_w < 0.8  # the filter points elsewhere; the pattern finds the signal
    signal = make_method("pattern_net", model, patterns=fit_patterns(model, x, "linear", progress=False))
    torch.testing.assert_close(signal.attribute(x[:3], target=0), a_s.expand(3, 2), rtol=0, atol=0.03)


def test_conv_models_storage_and_errors(tmp_path):
    model = model_for("deep", (1, 28, 28))
    x, _ = digits_images((1, 28, 28))
    patterns = fit_patterns(model, x[:300], batch_size=100, progress=False)
    assert set(patterns.patterns) == {"conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"}
    path = patterns.save(patterns_path(tmp_path, 120))
    assert path.name == "patterns-two_component-step-00000120.pt"
    loaded = Patterns.load(path)
    batch = images((1, 28, 28), count=3)
    ours = make_method("pattern_attribution", model, patterns=path).attribute(batch, target=[1, 2, 3])
    torch.testing.assert_close(
        ours, make_method("pattern_attribution", model, patterns=loaded).attribute(batch, [1, 2, 3])
    )
    # the conv backward with the pattern as weight is the gradient of a convolution with that weight
    from attrlab.attribution.pattern import _PatternBackward

    for name in ("conv1", "conv4"):
        module, pattern = getattr(model, name), patterns.patterns[name]
        value = torch.randn(2, module.in_channels, 14, 14, requires_grad=True)
        upstream = torch.randn(2, module.out_channels, 14, 14)
        (ours_grad,) = torch.autograd.grad(_PatternBackward.apply(value, module, pattern), value, upstream)
        (expected,) = torch.autograd.grad(torch.nn.functional.conv2d(value, pattern, None, 1, "same"), value, upstream)
        torch.testing.assert_close(ours_grad, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs fitted patterns"):
        make_method("pattern_net", model)
    with pytest.raises(ValueError, match="layer 'conv1' has weight \\(16, 1, 5, 5\\), its pattern is shaped"):
        make_method("pattern_net", model_for("shallow", (1, 28, 28)), patterns=patterns)
    with pytest.raises(ValueError, match="valid choices: two_component, linear"):
        fit_patterns(model, x[:10], estimator="quadratic")
