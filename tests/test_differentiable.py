"""Explanations differentiable in the parameters (attrlab.attribution.differentiable): gradcheck and equality."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrlab.attribution import make_method
from attrlab.attribution.differentiable import TRAINING_METHODS, explain_for_training, explain_with_logits
from attrlab.interpretable.bcos import BcosConv2d, BiasFreeNorm
from attrlab.interpretable.dynamic import PairEncoding, dynamic_linear
from attrlab.models import build_model
from attrlab.models.xdnn import remove_biases


def relu_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def bcos_net() -> nn.Sequential:
    return nn.Sequential(
        PairEncoding(),
        BcosConv2d(2, 4, 3, padding=1, b=2.0),
        BcosConv2d(4, 4, 3, stride=2, padding=1, b=1.5, max_out=2, scale=1.3),
        BiasFreeNorm("position", 4),
        BcosConv2d(4, 3, 1, b=2.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


#: (method, model builder, layer, parameter checked)
GRADCHECK_CASES = [
    ("ixg", relu_net, "input", "0.weight"),
    ("ixg", relu_net, "2", "0.weight"),
    ("ixg", relu_net, "2", "6.weight"),
    ("ig_xdnn", lambda: remove_biases(relu_net()), "input", "2.weight"),
    ("gradcam", relu_net, "3", "0.weight"),
    ("gradcam", relu_net, "3", "2.weight"),
    ("bcos", bcos_net, "input", "1.weight"),
    ("bcos", bcos_net, "input", "2.weight"),
    ("bcos", bcos_net, "input", "3.weight"),
    ("bcos", bcos_net, "2", "1.weight"),
    ("bcos", bcos_net, "2", "4.weight"),
]


@pytest.mark.parametrize(("method", "build", "layer", "parameter"), GRADCHECK_CASES)
def test_gradcheck_in_a_parameter(method, build, layer, parameter):
    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64) * 2 - 1
    target = torch.tensor([0, 2])
    weight = dict(model.named_parameters())[parameter].detach().clone().requires_grad_(True)

    def explanation(value: torch.Tensor) -> torch.Tensor:
        with torch.nn.utils.stateless._reparametrize_module(model, {parameter: value}):
            return explain_for_training(model, x, target, method, layer=layer)

    # full Jacobians for small weights, random projections of it (gradcheck's fast mode) for the larger ones
    fast = weight.numel() > 100
    assert torch.autograd.gradcheck(explanation, (weight,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=fast)


def test_bcos_gradient_differs_from_the_detached_form():
    """The registered method's form (dynamics detached, thesis D.4.2's problem) gives the same map but an incomplete
    parameter gradient: what the two-stream form adds is the factors' dependence on the weights."""
    torch.manual_seed(0)
    model = bcos_net().double().eval()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64) * 2 - 1
    target = torch.tensor([1, 0])
    full = explain_for_training(model, x, target, "bcos")
    (grad_full,) = torch.autograd.grad(full.pow(2).sum(), model[1].weight)
    with dynamic_linear(model):
        encoded = model[0](x).requires_grad_(True)
        logits = model[1:](encoded)
        (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), encoded, create_graph=True)
        detached = (encoded * gradient).sum(1)
    torch.testing.assert_close(detached, full)
    (grad_detached,) = torch.autograd.grad(detached.pow(2).sum(), model[1].weight)
    assert (grad_detached - grad_full).norm() > 1e-3 * grad_full.norm()


RELU_LAYERS = ["input", "2", "3"]


@pytest.mark.parametrize("layer", RELU_LAYERS)
def test_ixg_equals_the_registered_method(layer, device):
    model = build_model("deep", seed=0).to(device).eval()
    x = torch.rand(4, 1, 28, 28, device=device) * 2 - 1
    target = torch.tensor([0, 3, 5, 9], device=device)
    layer = {"input": "input", "2": "conv2", "3": "relu2"}[layer]
    ours = explain_for_training(model, x, target, "ixg", layer=layer, create_graph=False)
    reference = make_method("input_x_gradient", model).attribute(x, target=target, layer=layer).sum(1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert not ours.requires_grad


@pytest.mark.parametrize("layer", ["relu2", "relu6", "conv4"])
def test_gradcam_equals_the_registered_method(layer, device):
    model = build_model("deep", seed=0).to(device).eval()
    x = torch.rand(4, 1, 28, 28, device=device) * 2 - 1
    target = torch.tensor([1, 2, 3, 4], device=device)
    ours = explain_for_training(model, x, target, "gradcam", layer=layer, create_graph=False)
    reference = make_method("gradcam", model).attribute(x, target=target, layer=layer)[:, 0]
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["input", "conv2", "conv4", "conv6"])
def test_bcos_equals_the_registered_method(layer, device):
    model = build_model("bcos", seed=0).to(device).eval()
    x = torch.rand(4, 1, 28, 28, device=device) * 2 - 1
    target = torch.tensor([0, 1, 7, 9], device=device)
    ours = explain_for_training(model, x, target, "bcos", layer=layer, create_graph=False)
    reference = make_method("bcos", model).attribute(x, target=target, layer=layer).sum(1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # contributions at the input sum to the logit
        if layer == "input":
            torch.testing.assert_close(
                ours.flatten(1).sum(1), model(x).gather(1, target[:, None])[:, 0], rtol=1e-4, atol=1e-5
            )


def test_bcos_maxout_net_equals_the_registered_method():
    model = build_model("bcos_b1.5_maxout", seed=0).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    target = torch.tensor([4, 5, 6])
    ours = explain_for_training(model, x, target, "bcos", create_graph=False)
    reference = make_method("bcos", model).attribute(x, target=target).sum(1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


def test_ig_xdnn_equals_integrated_gradients_on_an_xdnn():
    model = build_model("deep", seed=0, bias=False).eval()
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    target = torch.tensor([2, 4, 8])
    ours = explain_for_training(model, x, target, "ig_xdnn", create_graph=False)
    reference = make_method("integrated_gradients", model, n_steps=8).attribute(x, target=target).sum(1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)


#: (model, method, layer): the forward pass of each kind of map
SHARED_FORWARD_CASES = [
    ("bcos_relu_twin", "ixg", "input"),
    ("bcos_relu_twin", "gradcam", "relu6"),
    ("bcos_relu_twin_xdnn", "ig_xdnn", "relu4"),
    ("bcos", "bcos", "input"),
    ("bcos", "bcos", "conv4"),
]


@pytest.mark.parametrize(("name", "method", "layer"), SHARED_FORWARD_CASES)
def test_shared_forward_gives_the_models_logits_and_the_same_gradient(name, method, layer):
    """The logits of the map's own forward pass are the model's, and a step on them gets the gradient of a step that
    runs the model again (float64, so the two graphs agree to rounding)."""
    model = build_model(name, seed=0).double().eval()
    x = (torch.rand(3, 1, 28, 28, dtype=torch.float64) * 2 - 1).requires_grad_(False)
    target = torch.tensor([1, 5, 9])
    maps, logits = explain_with_logits(model, x, target, method, layer)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(maps, explain_for_training(model, x, target, method, layer))
    shared = torch.autograd.grad(logits.logsumexp(1).sum() + maps.clamp(min=0).sum(), list(model.parameters()))
    separate_loss = (
        model(x).logsumexp(1).sum() + explain_for_training(model, x, target, method, layer).clamp(min=0).sum()
    )
    separate = torch.autograd.grad(separate_loss, list(model.parameters()))
    for ours, reference in zip(shared, separate, strict=True):
        torch.testing.assert_close(ours, reference)
    detached = explain_with_logits(model, x, target, method, layer, create_graph=False)
    assert not detached[0].requires_grad and not detached[1].requires_grad


def test_a_loss_on_the_map_trains_every_parameter():
    model = build_model("bcos", seed=0).train()
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    target = torch.tensor([0, 1, 2, 3])
    explanation = explain_for_training(model, x, target, "bcos", layer="input")
    assert explanation.shape == (4, 28, 28)
    explanation.clamp(min=0).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_shapes_at_layers():
    model = build_model("deep", seed=0)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    target = torch.tensor([0, 1])
    for method in ("ixg", "gradcam"):
        assert explain_for_training(model, x, target, method, layer="relu6").shape[0] == 2
    assert explain_for_training(model, x, target, "ixg").shape == (2, 28, 28)


def test_clear_errors():
    model = build_model("deep", seed=0)
    x = torch.rand(2, 1, 28, 28)
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="valid methods: " + ", ".join(TRAINING_METHODS)):
        explain_for_training(model, x, target, "lrp")
    with pytest.raises(ValueError, match="unknown layer 'conv99'; valid layers"):
        explain_for_training(model, x, target, "ixg", layer="conv99")
    with pytest.raises(ValueError, match="bias-free X-DNN"):
        explain_for_training(model, x, target, "ig_xdnn")
    with pytest.raises(ValueError, match="dynamic-linear"):
        explain_for_training(model, x, target, "bcos")
    with pytest.raises(ValueError, match="spatial layer"):
        explain_for_training(model, x, target, "ixg", layer="fc1")
    with pytest.raises(ValueError, match="class indices"):
        explain_for_training(model, x, torch.tensor([0.0, 1.0]), "ixg")
    with pytest.raises(ValueError, match="class indices"):
        explain_for_training(model, x, torch.tensor([0, 1, 2]), "ixg")
    with pytest.raises(ValueError, match="outside 0..9"):
        explain_for_training(model, x, torch.tensor([0, 10]), "ixg")
