"""BatchNorm canonization: same outputs as the original in eval mode, original untouched, LRP through BN models."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from attrlab.canonize import ThreshReLU, canonize
from attrlab.lrp import LRP
from attrlab.models import build_model

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the identity (negative scales included)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BATCHNORMS):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                sign = torch.where(torch.rand(n, generator=generator) < 0.2, -1.0, 1.0)
                module.weight.copy_(sign * (torch.rand(n, generator=generator) + 0.3))
                module.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return model


def assert_same_outputs(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    state = copy.deepcopy(model.state_dict())
    canonical = canonize(model)
    assert not any(isinstance(m, BATCHNORMS) for m in canonical.modules())
    assert any(isinstance(m, BATCHNORMS) for m in model.modules())  # the original keeps its BatchNorms
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    model.eval()
    canonical.eval()
    with torch.no_grad():
        expected = model(inputs)
        torch.testing.assert_close(canonical(inputs), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    return canonical


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_deep_bn_outputs_unchanged(shape):
    model = randomise_batchnorms(build_model("deep_bn", shape, seed=2))
    inputs = torch.rand((4, *shape), generator=torch.Generator().manual_seed(1)) * 2 - 1
    canonical = assert_same_outputs(model, inputs)
    assert [name for name, _ in canonical.named_children()] == [name for name, _ in model.named_children()]


def _hand_built(layers):
    return randomise_batchnorms(nn.Sequential(OrderedDict(layers)), seed=5)


CASES = {
    "linear->bn": [
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(12, 6)),
        ("bn", nn.BatchNorm1d(6)),
        ("relu", nn.ReLU()),
        ("out", nn.Linear(6, 3)),
    ],
    "bn->linear": [("flatten", nn.Flatten()), ("bn", nn.BatchNorm1d(12)), ("fc", nn.Linear(12, 3))],
    "bn->relu->linear": [
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(12, 8, bias=False)),
        ("relu0", nn.ReLU()),
        ("bn", nn.BatchNorm1d(8)),
        ("relu", nn.ReLU()),
        ("out", nn.Linear(8, 3)),
    ],
    "bn->conv (no padding)": [
        ("bn", nn.BatchNorm2d(3)),
        ("conv", nn.Conv2d(3, 4, 3)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * 2 * 2, 3)),
    ],
    "bn->relu->conv": [
        ("conv0", nn.Conv2d(3, 5, 1)),
        ("relu0", nn.ReLU()),
        ("bn", nn.BatchNorm2d(5)),
        ("relu", nn.ReLU()),
        ("conv", nn.Conv2d(5, 4, 3, bias=False)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(16, 3)),
    ],
    "conv->bn (padded)": [
        ("conv", nn.Conv2d(3, 4, 3, padding=1)),
        ("bn", nn.BatchNorm2d(4)),
        ("relu", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(4 * 4 * 4, 3)),
    ],
}


@pytest.mark.parametrize("case", list(CASES))
def test_hand_built_models(case):
    torch.manual_seed(0)
    model = _hand_built(copy.deepcopy(CASES[case]))
    inputs = torch.randn(6, 3, 4, 4) if "conv" in case else torch.randn(6, 12)
    canonical = assert_same_outputs(model, inputs)
    if case in ("bn->relu->conv", "bn->relu->linear"):
        assert isinstance(canonical.relu, ThreshReLU)
    # the LRP engine folds the same way internally (ThreshReLU passes relevance through)
    relevance = LRP(model, "epsilon").attribute(inputs, target=1)
    torch.testing.assert_close(relevance, LRP(canonical, "epsilon").attribute(inputs, target=1))
    assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


def test_limits_are_errors():
    padded = _hand_built([("bn", nn.BatchNorm2d(3)), ("conv", nn.Conv2d(3, 4, 3, padding=1))])
    with pytest.raises(ValueError, match="padded convolution 'conv'"):
        canonize(padded)
    alone = _hand_built([("conv", nn.Conv2d(3, 4, 3)), ("relu", nn.ReLU()), ("bn", nn.BatchNorm2d(4))])
    with pytest.raises(ValueError, match="cannot canonize BatchNorm 'bn'"):
        canonize(alone)


def test_lrp_on_batchnorm_model_equals_lrp_on_canonized_model_and_zennit():
    zennit_attribution = pytest.importorskip("zennit.attribution")
    zennit_composites = pytest.importorskip("zennit.composites")
    zennit_canonizers = pytest.importorskip("zennit.canonizers")
    model = randomise_batchnorms(build_model("deep_bn", (1, 28, 28), seed=4)).train()  # eval semantics anyway
    inputs = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(2)) * 2 - 1
    ours = LRP(model, "epsilon_gamma_box").attribute(inputs, target=[0, 1, 2])
    assert model.training
    canonical = canonize(model).eval()
    torch.testing.assert_close(LRP(canonical, "epsilon_gamma_box").attribute(inputs, target=[0, 1, 2]), ours)
    model.eval()
    composite = zennit_composites.EpsilonGammaBox(
        low=-1.0, high=1.0, canonizers=[zennit_canonizers.SequentialMergeBatchNorm()]
    )
    with zennit_attribution.Gradient(model, composite) as attributor:
        onehot = torch.eye(10)[[0, 1, 2]]
        _, expected = attributor(inputs, lambda out: out * onehot)
    # zennit folds with a different operation order; the box rule's small denominators amplify rounding slightly
    assert float((ours - expected).norm() / expected.norm()) <= 1e-4
