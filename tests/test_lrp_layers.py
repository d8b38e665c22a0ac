"""Every kind of convolution, BatchNorm, activation and dropout the issue lists, under every rule, against zennit.

Convolutions of 1, 2 and 3 spatial dimensions with stride, dilation, zero padding (numbers and ``"same"``), groups and
depthwise groups; BatchNorm1d/3d (folded, as zennit's ``SequentialMergeBatchNorm``, and with no rule); ReLU6, SiLU,
Sigmoid, dropout. zennit evaluates each layer by calling the module with modified parameters, so it handles all of
them; the comparison runs in float64 through both of attrlab's engines (Sequential and traced).
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from test_canonize import randomise_batchnorms
from test_lrp_graph import Wrapped
from torch import nn

from attrlab.lrp import LRP, AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus

zennit_attribution = pytest.importorskip("zennit.attribution")
zennit_canonizers = pytest.importorskip("zennit.canonizers")
zennit_composites = pytest.importorskip("zennit.composites")
zennit_rules = pytest.importorskip("zennit.rules")
zennit_types = pytest.importorskip("zennit.types")

TARGET = [1, 4, 0]


def _model_2d() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 8, 3, stride=2, padding=1),
            act1=nn.ReLU(),
            conv2=nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=8),  # depthwise, dilated
            act2=nn.ReLU6(),
            conv3=nn.Conv2d(8, 12, 3, stride=(1, 2), padding=(2, 1), groups=4),
            act3=nn.SiLU(),
            drop=nn.Dropout2d(0.3),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc1=nn.Linear(12, 16),
            act4=nn.Sigmoid(),
            fc2=nn.Linear(16, 5),
        )
    )


def _model_1d() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv1d(2, 6, 5, stride=2, padding=2),
            bn1=nn.BatchNorm1d(6),
            act1=nn.ReLU(),
            conv2=nn.Conv1d(6, 6, 3, padding="same", dilation=2, groups=3),
            act2=nn.ReLU(),
            pool=nn.MaxPool1d(2),
            drop=nn.Dropout(0.5),
            flatten=nn.Flatten(),
            fc=nn.Linear(6 * 5, 5),
        )
    )


def _model_3d() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv3d(1, 4, 3, padding=1),
            bn1=nn.BatchNorm3d(4),
            act1=nn.ReLU(),
            conv2=nn.Conv3d(4, 4, 3, stride=2, padding=1, groups=2),
            act2=nn.ReLU(),
            pool=nn.AvgPool3d(2),
            drop=nn.Dropout3d(0.5),
            flatten=nn.Flatten(),
            fc=nn.Linear(4 * 2 * 2 * 2, 5),
        )
    )


MODELS = {"2d": (_model_2d, (3, 12, 12)), "1d": (_model_1d, (2, 20)), "3d": (_model_3d, (1, 8, 8, 8))}

# (ours, zennit) per rule: the rule on every convolution, epsilon on Linear layers, the input-space rules first only
RULES = {
    "epsilon": (Epsilon(1e-3), zennit_rules.Epsilon(1e-3), None),
    "zplus": (ZPlus(), zennit_rules.ZPlus(), None),
    "alpha2_beta1": (AlphaBeta(2.0, 1.0), zennit_rules.AlphaBeta(2.0, 1.0), None),
    "gamma": (Gamma(0.25), zennit_rules.Gamma(0.25), None),
    "zbox": (ZPlus(), zennit_rules.ZPlus(), (ZBox(-1.0, 1.0), zennit_rules.ZBox(low=-1.0, high=1.0))),
    "flat": (Gamma(0.1), zennit_rules.Gamma(0.1), (Flat(), zennit_rules.Flat())),
    "wsquare": (AlphaBeta(2.0, 1.0), zennit_rules.AlphaBeta(2.0, 1.0), (WSquare(), zennit_rules.WSquare())),
}


def _zennit(model, composite, inputs, classes=5):
    with zennit_attribution.Gradient(model, composite) as attributor:
        onehot = torch.eye(classes, dtype=inputs.dtype)[TARGET]
        _, relevance = attributor(inputs, lambda out: out * onehot)
    return relevance


def _inputs(shape):
    return torch.rand((3, *shape), generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1


def _built(kind: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape = MODELS[kind]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomise_batchnorms(build()).eval().double()
    for module in model.modules():  # zennit's merged BatchNorms keep eps (a 5e-6 change each): exact statistics
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = 0.0
    return model, _inputs(shape)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("kind", list(MODELS))
def test_every_convolution_kind_and_rule_matches_zennit(kind, rule):
    model, inputs = _built(kind)
    ours_rule, zennit_rule, first = RULES[rule]
    ours_map: dict = {nn.Conv1d: ours_rule, nn.Conv2d: ours_rule, nn.Conv3d: ours_rule, nn.Linear: Epsilon(1e-3)}
    layer_map = zennit_composites.layer_map_base() + [
        (zennit_types.Convolution, zennit_rule),
        (nn.Linear, zennit_rules.Epsilon(1e-3)),
    ]
    canonizers = [zennit_canonizers.SequentialMergeBatchNorm()]
    if first is None:
        reference = zennit_composites.LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    else:
        ours_map["conv1"] = first[0]
        reference = zennit_composites.SpecialFirstLayerMapComposite(
            layer_map=layer_map, first_map=[(zennit_types.Convolution, first[1])], canonizers=canonizers
        )
    expected = _zennit(model, reference, inputs)
    assert expected.abs().sum() > 0
    for engine in (model, Wrapped(model)):
        mapping = (
            ours_map
            if engine is model
            else {("inner." + k if isinstance(k, str) else k): v for k, v in ours_map.items()}
        )
        ours = LRP(engine, mapping).attribute(inputs, TARGET)
        assert float((ours - expected).norm() / expected.norm()) <= 1e-9, (kind, rule, type(engine).__name__)


@pytest.mark.parametrize("kind", ["1d", "3d"])
@pytest.mark.parametrize("mode", ["gradient", "pass"])
def test_batchnorm_1d_3d_modes_match_zennit(kind, mode):
    """BatchNorm1d / 3d with no rule (zennit without a canonizer) and with zennit's Pass rule."""
    model, inputs = _built(kind)
    rule = {"gradient": None, "pass": zennit_rules.Pass()}[mode]
    reference = zennit_composites.EpsilonPlus(layer_map=[(zennit_types.BatchNorm, rule)])
    expected = _zennit(model, reference, inputs)
    for engine in (model, Wrapped(model)):
        ours = LRP(engine, "epsilon_plus", batchnorm=mode).attribute(inputs, TARGET)
        assert float((ours - expected).norm() / expected.norm()) <= 1e-9, (kind, mode, type(engine).__name__)


def test_other_padding_modes_are_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(2 * 36, 3))
    with pytest.raises(ValueError, match="zero-padded convolutions only, got padding_mode='reflect'"):
        LRP(model)
    with pytest.raises(ValueError, match="zero-padded convolutions only, got padding_mode='circular'"):
        LRP(Wrapped(nn.Sequential(nn.Conv1d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten())))
