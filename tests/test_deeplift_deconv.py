"""Deconvolution and DeepLIFT (rescale) against captum's Deconvolution, DeepLift and LayerDeepLift on the seed models,
and DeepLIFT's completeness: attributions sum to f_t(x) - f_t(x')."""

from __future__ import annotations

import warnings

import pytest
import torch
from attribution_cases import CASES, images, last_conv, model_for, relative_error
from captum.attr import Deconvolution, DeepLift, LayerDeepLift
from torch import nn

from attrlab.attribution import make_method

TOLERANCE = 1e-4


class _PassThrough(nn.Module):
    """A copy of its input: a separate tensor between a ReLU and the following max-pool.

    captum's DeepLift puts backward hooks on the ReLU's output and on the max-pool's input; when both are the same
    tensor the ReLU's multiplier is computed from the wrong gradient (its attributions then break completeness; see
    test_captum_is_incomplete_without_the_pass_through). With this functionally neutral module in between, captum's
    hooks fire in the right order and its numbers are the rescale rule's.
    """

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return value.clone()


def _captum_model(model: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for module in model:
        if isinstance(module, nn.MaxPool2d):
            layers.append(_PassThrough())
        layers.append(module)
    return nn.Sequential(*layers).eval()


def _captum(reference_class, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum warns that it sets hooks
        return reference_class(*args).attribute(**kwargs)


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_deconvolution_matches_captum(architecture, shape, weights):
    model = model_for(architecture, shape, weights)
    x = images(shape)
    target = model(x).argmax(1)
    ours = make_method("deconvolution", model).attribute(x)
    assert relative_error(ours, Deconvolution(model).attribute(x, target=target)) <= TOLERANCE


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_deeplift_matches_captum_and_is_complete(architecture, shape, weights):
    model = model_for(architecture, shape, weights)
    reference_model = _captum_model(model)
    x = images(shape)
    target = torch.arange(x.shape[0]) % 10
    method = make_method("deeplift", model)
    per_image = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for baselines in (0.0, -1.0, per_image):
        ours = method.attribute(x, target, baselines=baselines)
        reference_input = torch.broadcast_to(torch.as_tensor(baselines), x.shape).contiguous()
        reference = _captum(DeepLift, reference_model, inputs=x, baselines=reference_input, target=target)
        assert relative_error(ours, reference) <= TOLERANCE
        with torch.no_grad():
            difference = (model(x) - model(reference_input)).gather(1, target[:, None])[:, 0]
        torch.testing.assert_close(ours.flatten(1).sum(1), difference, rtol=1e-4, atol=1e-4)
    layer = last_conv(model)
    ours = method.attribute(x, target, layer=layer, baselines=per_image)
    reference = _captum(
        LayerDeepLift, reference_model, getattr(model, layer), inputs=x, baselines=per_image, target=target
    )
    assert relative_error(ours, reference) <= TOLERANCE


def test_captum_is_incomplete_without_the_pass_through():
    model = model_for("shallow", (1, 28, 28), "random")
    x = images((1, 28, 28))
    target = model(x).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, delta = DeepLift(model).attribute(x, target=target, return_convergence_delta=True)
        _, fixed = DeepLift(_captum_model(model)).attribute(x, target=target, return_convergence_delta=True)
    assert delta.abs().max() > 1e-3 and fixed.abs().max() < 1e-4


def test_deeplift_shares_one_reference_row_and_checks_its_arguments():
    model = model_for("deep", (1, 28, 28))
    x = images((1, 28, 28), count=4)
    method = make_method("deeplift", model)
    one = torch.full((1, 28, 28), 0.25)
    torch.testing.assert_close(method.attribute(x, 2, baselines=one), method.attribute(x, 2, baselines=0.25))
    torch.testing.assert_close(
        method.attribute(x, 2, baselines=one.expand(4, 1, 28, 28)), method.attribute(x, 2, baselines=0.25)
    )
    with pytest.raises(ValueError, match="baselines of shape \\(2, 1, 28, 28\\) must be one input"):
        method.attribute(x, baselines=torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="finite number"):
        method.attribute(x, baselines="zero")
    with pytest.raises(ValueError, match="ReLU, MaxPool2d and linear layers only; the model has Tanh"):
        make_method("deeplift", nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)))
