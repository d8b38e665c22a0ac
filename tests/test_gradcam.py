"""Grad-CAM, Grad-CAM++ and LayerCAM against captum; the seed-code variant against a literal replay of the seed code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attribution_cases import CASES, images, last_conv, model_for, relative_error

pytest.importorskip("captum")  # the reference implementation; skipped where it is not installed
from captum.attr import LayerActivation, LayerAttribution, LayerGradCam, LayerGradientXActivation
from torch import nn

from attrlab.attribution import feature_layer, make_method
from attrlab.attribution.gradcam_seed_code import seed_code_layer
from attrlab.grids.settings import grid_model
from attrlab.models import build_model

TOLERANCE = 1e-4
#: the CAM default layer, written out: the ReLU after the last spatial (k > 1) convolution
FEATURE_LAYERS = {
    "shallow": "relu2",
    "deep": "relu6",
    "deep_bn": "relu6",
    "vgg_small": "relu6",
    "vgg_small_bn": "relu6",
}


@pytest.mark.parametrize("name", sorted(FEATURE_LAYERS))
def test_the_cam_default_layer_is_the_last_spatial_feature_layer_after_its_activation(name):
    """Not the last Conv2d's pre-ReLU output, and on vgg_small not the 1x1 classifier convolution head2."""
    model = build_model(name, (1, 28, 28), seed=0).eval()
    assert feature_layer(model) == FEATURE_LAYERS[name]
    x = images((1, 28, 28), count=3)
    for method in ("gradcam", "gradcam_pp", "layercam"):
        cam = make_method(method, model)
        assert torch.equal(cam.attribute(x, target=2), cam.attribute(x, target=2, layer=FEATURE_LAYERS[name]))
    if name.startswith("vgg"):
        for setting in ("gridpg", "difull", "dipart"):
            assert feature_layer(grid_model(model, setting, 2)) == "relu6"


def test_the_cam_default_layer_rule_on_other_models():
    """Only 1x1 convolutions: the last one; a BatchNorm and activation after the convolution are both included."""
    pointwise = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1), nn.Flatten())
    assert feature_layer(pointwise) == "2"
    mixed = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.LeakyReLU(), nn.MaxPool2d(2), nn.Flatten())
    assert feature_layer(mixed) == "2"
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_gradcam_matches_captum_layergradcam(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, device=device)
    layer = getattr(model, FEATURE_LAYERS[architecture])
    for relu in (False, True):
        explanation = make_method("gradcam", model, relu=relu).explain(x)
        reference = LayerGradCam(model, layer).attribute(x, target=explanation.target, relu_attributions=relu)
        assert explanation.attribution.shape == reference.shape == (x.shape[0], 1, *reference.shape[2:])
        assert relative_error(explanation.attribution, reference) <= TOLERANCE
        assert torch.equal(explanation.target, model(x).argmax(1))


@pytest.mark.parametrize("layer", ["conv1", "conv2", "relu1", "pool1"])
def test_gradcam_at_other_layers_and_upsampled(layer, device):
    model = model_for("deep", (1, 28, 28), device=device)
    x = images((1, 28, 28), device=device)
    target = torch.arange(6, device=device) % 10
    ours = make_method("gradcam", model, upsample=True).attribute(x, target=target, layer=layer)
    captum_map = LayerGradCam(model, getattr(model, layer)).attribute(x, target=target, relu_attributions=True)
    reference = LayerAttribution.interpolate(captum_map, (28, 28), interpolate_mode="bilinear")
    assert ours.shape == (6, 1, 28, 28)
    assert relative_error(ours, reference) <= TOLERANCE


def _captum_gradient_and_activation(model, layer_name, x, target):
    layer = getattr(model, layer_name)
    gradient = LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(x, target=target)
    return gradient.detach(), LayerActivation(model, layer).attribute(x).detach()


@pytest.mark.parametrize("architecture, shape, weights", CASES)
def test_gradcam_pp_and_layercam_follow_their_definitions(architecture, shape, weights, device):
    model = model_for(architecture, shape, weights, device=device)
    x = images(shape, device=device)
    layer = last_conv(model)
    target = model(x).argmax(1)
    g, a = _captum_gradient_and_activation(model, layer, x, target)
    # Grad-CAM++ (Chattopadhay et al. eq. 19 with exp scores), written out independently of attrlab's code
    alpha_num = g**2
    alpha_den = 2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3 + 1e-6
    alpha = torch.where(g != 0, alpha_num / alpha_den, torch.zeros_like(g))
    weights_pp = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
    reference_pp = F.relu((weights_pp * a).sum(1, keepdim=True))
    assert relative_error(make_method("gradcam_pp", model).attribute(x, layer=layer), reference_pp) <= TOLERANCE
    reference_layercam = F.relu((F.relu(g) * a).sum(1, keepdim=True))
    assert relative_error(make_method("layercam", model).attribute(x, layer=layer), reference_layercam) <= TOLERANCE


def test_cam_needs_a_spatial_layer():
    model = model_for("shallow", (1, 28, 28))
    with pytest.raises(ValueError, match="spatial layer"):
        make_method("gradcam", model).attribute(images((1, 28, 28)), layer="fc1")


# ------------------------------------------------------------------------------------------------ seed-code variant
def _seed_code_replay(model, train_x, train_y, attribution_x, optimizer=None):
    """The seed code's sequence, literally: training forward with a tensor hook on the feature block's output,
    ``loss.backward()``, (the optimiser step), then per image: weights = mean over batch and positions of the hooked
    gradient, map = channel mean of weights x the image's activation."""
    feature_end = seed_code_layer(model)
    names = [name for name, _ in model.named_children()]
    features = torch.nn.Sequential(*[getattr(model, n) for n in names[: names.index(feature_end) + 1]])
    stored = {}
    activation = features(train_x)
    activation.register_hook(lambda grad: stored.setdefault("gradient", grad))
    rest = torch.nn.Sequential(*[getattr(model, n) for n in names[names.index(feature_end) + 1 :]])
    loss = torch.nn.CrossEntropyLoss()(rest(activation), train_y)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    pooled = torch.mean(stored["gradient"], dim=[0, 2, 3])
    maps = []
    with torch.no_grad():
        for image in attribution_x:
            activations = features(image[None]).clone()
            for k in range(activations.shape[1]):
                activations[:, k, :, :] *= pooled[k]
            maps.append(torch.mean(activations, dim=1).squeeze())
    return torch.stack(maps)[:, None]


def test_seed_code_gradcam_reproduces_the_seed_code():
    model = build_model("shallow", (1, 28, 28), seed=11)
    train_x, train_y = images((1, 28, 28), count=20, offset=100), torch.arange(20) % 10
    x = images((1, 28, 28), count=5)
    method = make_method("gradcam_seed_code", model, training_batch=(train_x, train_y))
    ours = method.attribute(x)
    reference = _seed_code_replay(model, train_x, train_y, x)
    assert seed_code_layer(model) == "relu2"
    assert relative_error(ours, reference) <= 1e-5
    # the defect: the map does not depend on the explained class
    assert torch.equal(method.attribute(x, target=0), method.attribute(x, target=3))
    correct = make_method("gradcam", model, relu=False).attribute(x, layer="relu2")
    assert relative_error(ours, correct) > 0.5


def test_seed_code_gradcam_keeps_pre_step_weights_when_computed_now():
    model = build_model("shallow", (1, 28, 28), seed=12)
    replay_model = build_model("shallow", (1, 28, 28), seed=12)
    train_x, train_y = images((1, 28, 28), count=20, offset=200), torch.arange(20) % 10
    x = images((1, 28, 28), count=4)
    method = make_method("gradcam_seed_code", model)
    method.set_training_batch(train_x, train_y, compute_now=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(train_x), train_y).backward()
    optimizer.step()
    reference = _seed_code_replay(replay_model, train_x, train_y, x, torch.optim.SGD(replay_model.parameters(), lr=0.5))
    assert relative_error(method.attribute(x), reference) <= 1e-5
    # a new batch without compute_now: weights at the current parameters again
    method.set_training_batch(train_x, train_y)
    assert relative_error(method.attribute(x), reference) > 1e-3


def test_seed_code_gradcam_needs_a_training_batch():
    model = build_model("shallow", (1, 28, 28), seed=1)
    with pytest.raises(RuntimeError, match="training minibatch"):
        make_method("gradcam_seed_code", model).attribute(images((1, 28, 28)))
    with pytest.raises(ValueError, match="labels"):
        make_method("gradcam_seed_code", model, training_batch=(images((1, 28, 28)), torch.zeros(6)))


def test_gradcam_of_a_training_batchnorm_model_is_captums_eval_mode_gradcam():
    model = build_model("deep_bn", (3, 32, 32), seed=3)
    with torch.no_grad():  # non-trivial running statistics, so train and eval mode differ
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.normal_(generator=torch.Generator().manual_seed(0))
                module.running_var.uniform_(0.5, 2.0)
    x = images((3, 32, 32), count=4)
    explanation = make_method("gradcam", model.train(), relu=False).explain(x)
    assert model.training
    reference = LayerGradCam(model.eval(), model.relu6).attribute(x, target=explanation.target)
    assert relative_error(explanation.attribution, reference) <= TOLERANCE
