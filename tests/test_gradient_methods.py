"""Gradient, Input x Gradient, Integrated Gradients, SmoothGrad and Guided Backprop against captum, at the input and
at layers, on the seed models with random and briefly trained weights; and the hook fallback for nested models."""

from __future__ import annotations

import pytest
import torch
from attribution_cases import CASES, images, last_conv, model_for, relative_error

pytest.importorskip("captum")  # the reference implementation; skipped where it is not installed
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradientXActivation,
    LayerIntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import nn

from attrlab.attribution import make_method
from attrlab.attribution.gradient import QUADRATURES, quadrature

TOLERANCE = 1e-4


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_gradient_ixg_and_guided_backprop_match_captum(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, device=device)
    target = model(x).argmax(1)
    pairs = [
        (make_method("gradient", model).attribute(x), Saliency(model).attribute(x, target=target, abs=False)),
        (make_method("gradient", model, absolute=True).attribute(x), Saliency(model).attribute(x, target=target)),
        (make_method("input_x_gradient", model).attribute(x), InputXGradient(model).attribute(x, target=target)),
        (make_method("guided_backprop", model).attribute(x), GuidedBackprop(model).attribute(x, target=target)),
    ]
    for ours, reference in pairs:
        assert ours.shape == x.shape
        assert relative_error(ours, reference) <= TOLERANCE


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_layer_gradient_and_ixg_match_captum(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, device=device)
    target = torch.arange(x.shape[0], device=device) % 10
    for name in ("conv1", last_conv(model), "fc1"):
        layer = getattr(model, name)
        gradient = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(x, target=target)
        ixg = LayerGradientXActivation(model, layer).attribute(x, target=target)
        assert relative_error(make_method("gradient", model).attribute(x, target, layer=name), gradient) <= TOLERANCE
        ours_ixg = make_method("input_x_gradient", model).attribute(x, target, layer=layer)
        assert relative_error(ours_ixg, ixg) <= TOLERANCE


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_integrated_gradients_matches_captum(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, count=4, device=device)
    target = model(x).argmax(1)
    ours = make_method("integrated_gradients", model, n_steps=16).attribute(x)
    reference = IntegratedGradients(model).attribute(x, target=target, n_steps=16)
    assert relative_error(ours, reference) <= TOLERANCE
    layer = last_conv(model)
    ours_layer = make_method("integrated_gradients", model, n_steps=16).attribute(x, layer=layer)
    reference_layer = LayerIntegratedGradients(model, getattr(model, layer)).attribute(x, target=target, n_steps=16)
    assert relative_error(ours_layer, reference_layer) <= TOLERANCE


@pytest.mark.parametrize("method", QUADRATURES)
def test_integrated_gradients_quadratures_baselines_and_chunks(method):
    model = model_for("shallow", (1, 28, 28))
    # noise images: digits' flat background makes max-pool near-ties, which captum's float32 alphas (1 ulp off the
    # exact ones) break differently; the rules themselves are compared here
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    baseline = torch.full((1, 1, 28, 28), -1.0)
    method_object = make_method("integrated_gradients", model, n_steps=7, method=method, internal_batch_size=10)
    ours = method_object.attribute(x, target=3, baselines=baseline)
    reference = IntegratedGradients(model).attribute(x, baselines=baseline, target=3, n_steps=7, method=method)
    # captum weighs every trapezoid point 1/n (weights summing to (n-1)/n); attrlab uses the textbook rule
    scale = 6 / 7 if method == "riemann_trapezoid" else 1.0
    assert relative_error(ours * scale, reference) <= TOLERANCE
    # the constructor's scalar default is the same baseline
    scalar = make_method("integrated_gradients", model, n_steps=7, method=method, baseline=-1.0, internal_batch_size=10)
    torch.testing.assert_close(scalar.attribute(x, target=3), ours)
    assert quadrature(method, 7)[1].sum() == pytest.approx(1.0)


def test_integrated_gradients_is_complete_with_many_steps():
    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    explanation = make_method("integrated_gradients", model, n_steps=100, internal_batch_size=None).explain(x)
    with torch.no_grad():
        at_baseline = model(torch.zeros_like(x)).gather(1, explanation.target[:, None])[:, 0]
    expected = explanation.logits.gather(1, explanation.target[:, None])[:, 0] - at_baseline
    torch.testing.assert_close(explanation.attribution.sum((1, 2, 3)), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("architecture, shape, weights", CASES[1:3])
def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_seed(architecture, shape, weights):
    model = model_for(architecture, shape, weights)
    x = images(shape, count=3)
    target = model(x).argmax(1)
    torch.manual_seed(5)
    reference = NoiseTunnel(Saliency(model)).attribute(
        x, target=target, nt_type="smoothgrad", nt_samples=6, stdevs=0.3, abs=False
    )
    method = make_method("smoothgrad", model, n_samples=6, stdev=0.3, seed=5, internal_batch_size=4)
    ours = method.attribute(x)
    assert relative_error(ours, reference) <= TOLERANCE
    assert torch.equal(ours, method.attribute(x))  # same seed, same map
    assert not torch.equal(ours, make_method("smoothgrad", model, n_samples=6, stdev=0.3, seed=6).attribute(x))
    plain = make_method("gradient", model).attribute(x)
    assert relative_error(make_method("smoothgrad", model, n_samples=2, stdev=0.0).attribute(x), plain) <= 1e-6


class _Wrapped(nn.Module):
    """A non-Sequential model around a Sequential: layers are reachable only as ``body.<name>`` (hook fallback)."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _Nested(nn.Sequential):
    """A Sequential whose second block is a custom module holding ReLUs (substitutes need the fallback)."""


@pytest.mark.parametrize(
    "method, settings",
    [
        ("gradient", {}),
        ("input_x_gradient", {}),
        ("guided_backprop", {}),
        ("integrated_gradients", {"n_steps": 5}),
        ("gradcam", {}),
        ("occlusion", {"window": 3, "stride": 2}),
    ],
)
def test_hook_fallback_for_nested_models_gives_the_same_numbers(method, settings):
    model = model_for("deep", (1, 28, 28))
    wrapped = _Wrapped(model)
    x = images((1, 28, 28), count=3)
    for flat_layer, nested_layer in [(None, None), ("conv4", "body.conv4")]:
        if method == "gradcam" and flat_layer is None:
            flat_layer = nested_layer = None  # default: last conv in both
        expected = make_method(method, model, **settings).attribute(x, target=2, layer=flat_layer)
        got = make_method(method, wrapped, **settings).attribute(x, target=2, layer=nested_layer)
        assert relative_error(got, expected) <= 1e-5
    assert all(not m._forward_hooks and not m._backward_hooks for m in wrapped.modules())


def test_guided_backprop_reaches_relus_inside_custom_modules():
    model = model_for("shallow", (1, 28, 28))
    x = images((1, 28, 28), count=3)
    names = [name for name, _ in model.named_children()]
    upper = _Wrapped(nn.Sequential(*[getattr(model, n) for n in names[3:]]))
    nested = _Nested(*[getattr(model, n) for n in names[:3]], upper)
    reference = GuidedBackprop(model).attribute(x, target=1)
    assert relative_error(make_method("guided_backprop", nested).attribute(x, target=1), reference) <= TOLERANCE
    assert all(not m._forward_hooks for m in nested.modules())


def test_integrated_gradients_takes_one_baseline_per_image_in_the_call():
    """A per-image baseline tensor is a call argument (captum's ``baselines=``), not a constructor setting."""
    model = model_for("shallow", (1, 28, 28))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    baselines = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = make_method("integrated_gradients", model, n_steps=5).attribute(x, target=[1, 2, 3, 4], baselines=baselines)
    reference = IntegratedGradients(model).attribute(x, baselines=baselines, target=[1, 2, 3, 4], n_steps=5)
    assert relative_error(ours, reference) <= TOLERANCE
    with pytest.raises(TypeError, match="attribute\\(..., baselines=tensor\\)"):
        make_method("integrated_gradients", model, baseline=baselines)
    with pytest.raises(ValueError, match="do not broadcast to the inputs"):
        make_method("integrated_gradients", model).attribute(x, baselines=baselines[:2, :, :5])
