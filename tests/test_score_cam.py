"""Score-CAM and Ablation-CAM against the grad-cam package (pytorch_grad_cam) on the deep seed model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attribution_cases import images, model_for
from pytorch_grad_cam import AblationCAM, ScoreCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from attrlab.attribution import make_method

SHAPE = (1, 28, 28)


def _activation(model, layer, x):
    names = list(dict(model.named_children()))
    with torch.no_grad():
        return torch.nn.Sequential(*list(model.children())[: names.index(layer) + 1])(x)


def _package(cls, model, layer, x, target, **kwargs):
    cam = cls(model, target_layers=[getattr(model, layer)], **kwargs)
    activation = _activation(model, layer, x)
    targets = [ClassifierOutputTarget(int(t)) for t in target]
    weights = cam.get_cam_weights(x, getattr(model, layer), targets, activation.numpy(), None)
    maps = cam(input_tensor=x, targets=targets)
    return torch.as_tensor(np.asarray(weights)), activation, maps


def _package_scaling(maps: torch.Tensor) -> np.ndarray:
    """What the package does to a layer's maps: min-max scale, resize to the input with OpenCV, scale again."""
    return scale_cam_image(scale_cam_image(maps[:, 0].numpy(), SHAPE[1:]))


@pytest.mark.parametrize("layer", ["relu4"])
def test_score_cam_matches_the_grad_cam_package(layer):
    model = model_for("deep", SHAPE)
    x = images(SHAPE, count=2)
    target = torch.tensor([0, 4])
    weights, activation, maps = _package(ScoreCAM, model, layer, x, target)
    reference = (weights[:, :, None, None] * activation).sum(1, keepdim=True).clamp(min=0)
    ours = make_method("score_cam", model, output="logit").attribute(x, target, layer=layer)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-6)
    scaled = _package_scaling(ours)
    np.testing.assert_allclose(scaled, maps, rtol=1e-4, atol=1e-4)


def test_score_cam_probability_weights_are_the_papers():
    model = model_for("deep", SHAPE)
    x = images(SHAPE, count=2)
    activation = _activation(model, "relu6", x)
    ours = make_method("score_cam", model, relu=False).attribute(x, target=[1, 2], layer="relu6")
    expected = []
    for i, t in enumerate([1, 2]):  # the authors' per-channel loop
        total = torch.zeros(activation.shape[-2:])
        for k in range(activation.shape[1]):
            mask = torch.nn.functional.interpolate(
                activation[i : i + 1, k : k + 1], size=(28, 28), mode="bilinear", align_corners=True
            )
            mask = (mask - mask.min()) / (mask.max() - mask.min() + 1e-8)
            with torch.no_grad():
                score = model(x[i : i + 1] * mask).softmax(1)[0, t]
            total += score * activation[i, k]
        expected.append(total)
    torch.testing.assert_close(ours[:, 0], torch.stack(expected), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("layer", ["relu6"])
def test_ablation_cam_matches_the_grad_cam_package(layer):
    model = model_for("deep", SHAPE)
    x = images(SHAPE, count=3)
    target = torch.tensor([3, 4, 7])
    weights, activation, maps = _package(AblationCAM, model, layer, x, target)
    assert bool((activation.flatten(1).min(1).values == 0).all())  # the package ablates with 0 here too
    reference = (weights[:, :, None, None] * activation).sum(1, keepdim=True).clamp(min=0)
    ours = make_method("ablation_cam", model, internal_batch_size=50).attribute(x, target, layer=layer)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-5)
    scaled = _package_scaling(ours)
    np.testing.assert_allclose(scaled, maps, rtol=1e-3, atol=1e-4)


def test_bad_settings_and_layers_are_named():
    model = model_for("deep", SHAPE)
    with pytest.raises(ValueError, match="valid choices: probability, logit"):
        make_method("score_cam", model, output="prob")
    with pytest.raises(ValueError, match="spatial layer"):
        make_method("ablation_cam", model).attribute(images(SHAPE, count=2), layer="fc1")
