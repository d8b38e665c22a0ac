"""The seed architectures have exactly the layers and shapes of seed 000's appendix, and the registry checks input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrlab.models import available_models, build_model


def _layer_specs(model: nn.Module) -> list[tuple]:
    specs = []
    for module in model:
        if isinstance(module, nn.Conv2d):
            specs.append(("conv", module.in_channels, module.out_channels, module.kernel_size, module.padding))
        elif isinstance(module, nn.Linear):
            specs.append(("linear", module.in_features, module.out_features))
        elif isinstance(module, nn.MaxPool2d):
            specs.append(("maxpool", module.kernel_size, module.stride))
        else:
            specs.append((type(module).__name__,))
    return specs


@pytest.mark.parametrize("shape, flat", [((1, 28, 28), 1568), ((3, 32, 32), 2048)])
def test_shallow_matches_seed_figures_4_and_6(shape, flat):
    model = build_model("shallow", shape)
    channels = shape[0]
    assert _layer_specs(model) == [
        ("conv", channels, 16, (5, 5), (2, 2)),
        ("ReLU",),
        ("maxpool", 2, 2),
        ("conv", 16, 32, (5, 5), (2, 2)),
        ("ReLU",),
        ("maxpool", 2, 2),
        ("Flatten",),
        ("linear", flat, 10),
    ]


@pytest.mark.parametrize("shape, flat", [((1, 28, 28), 1152), ((3, 32, 32), 2048)])
def test_deep_matches_seed_figures_5_and_7(shape, flat):
    model = build_model("deep", shape)
    c = shape[0]
    conv = lambda i, o: ("conv", i, o, (3, 3), "same")  # noqa: E731
    assert _layer_specs(model) == [
        conv(c, 32),
        ("ReLU",),
        conv(32, 32),
        ("ReLU",),
        ("maxpool", 2, 2),
        conv(32, 64),
        ("ReLU",),
        conv(64, 64),
        ("ReLU",),
        ("maxpool", 2, 2),
        conv(64, 128),
        ("ReLU",),
        conv(128, 128),
        ("ReLU",),
        ("maxpool", 2, 2),
        ("Flatten",),
        ("linear", flat, 1024),
        ("ReLU",),
        ("linear", 1024, 10),
    ]


@pytest.mark.parametrize("name", ["shallow", "deep", "deep_bn"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_shape_and_named_layers(name, shape):
    model = build_model(name, shape, num_classes=7).eval()
    assert model(torch.randn(2, *shape)).shape == (2, 7)
    names = [n for n, _ in model.named_children()]
    assert names[0] == "conv1" and names[-1] in ("fc1", "fc2") and "flatten" in names


def test_deep_bn_puts_batchnorm_before_each_relu():
    model = build_model("deep_bn")
    modules = list(model)
    for index, module in enumerate(modules):
        if isinstance(module, nn.ReLU):
            assert isinstance(modules[index - 1], (nn.BatchNorm2d, nn.BatchNorm1d))


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    first = build_model("deep", seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    second = build_model("deep", seed=3).state_dict()
    third = build_model("deep", seed=4).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], third["conv1.weight"])


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet'.*valid names: .*deep.*shallow"):
        build_model("resnet")
    assert {"shallow", "deep", "deep_bn"} <= set(available_models())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_shape": (1, 28)}, "three positive integers"),
        ({"input_shape": (1, 28, 30)}, "square images"),
        ({"input_shape": (1, 4, 4)}, "at least 8x8"),
        ({"input_shape": (0, 28, 28)}, "three positive integers"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
    ],
)
def test_bad_sizes_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model("deep", **kwargs)


@pytest.mark.parametrize("name", ["resnet_small", "densenet_small"])
def test_residual_and_dense_models_on_digits_and_canvases(name):
    """Both have BatchNorms, torchvision's blocks, and run on digits (1x28x28) and canvases (1x64x64)."""
    from torchvision.models.densenet import _DenseLayer
    from torchvision.models.resnet import BasicBlock

    for shape in [(1, 28, 28), (1, 64, 64), (3, 32, 32)]:
        model = build_model(name, shape, num_classes=7, seed=1)
        model.train()(torch.randn(4, *shape))  # training mode: BatchNorm statistics from the batch
        assert model.eval()(torch.randn(2, *shape)).shape == (2, 7)
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    block = BasicBlock if name == "resnet_small" else _DenseLayer
    assert any(isinstance(module, block) for module in model.modules())
    assert sum(p.numel() for p in model.parameters()) < 100_000  # trains on digits in about a minute of CPU
    first, second = build_model(name, seed=5).state_dict(), build_model(name, seed=5).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_model(f"{name}_xdnn").modules())
    with pytest.raises(ValueError, match="at least 8x8"):
        build_model(name, (1, 4, 4))
