"""The LRP composites of Sixt et al. (2020)'s method list (and zennit's EpsilonPlus, EpsilonAlpha2Beta1) against
zennit 0.5.1, on the seed models."""

from __future__ import annotations

import pytest
import torch
from attribution_cases import model_for, noise_images, relative_error
from test_lrp import CASES, TOLERANCE, zennit_relevance

from attrlab.lrp import LRP, make_composite

zennit_composites = pytest.importorskip("zennit.composites")
zennit_rules = pytest.importorskip("zennit.rules")
zennit_types = pytest.importorskip("zennit.types")


def _everywhere(rule, dense=None, first=None):
    """zennit: ``rule`` on convolutions, ``dense`` (default ``rule``) on Linear, ``first`` on the first layer."""
    layer_map = zennit_composites.layer_map_base() + [
        (zennit_types.Convolution, rule),
        (torch.nn.Linear, dense if dense is not None else rule),
    ]
    if first is None:
        return zennit_composites.LayerMapComposite(layer_map=layer_map)
    return zennit_composites.SpecialFirstLayerMapComposite(
        layer_map=layer_map, first_map=[(zennit_types.Linear, first)]
    )


def _references():
    return {
        "lrp_z": _everywhere(zennit_rules.Epsilon(1e-12)),
        "alpha1_beta0": _everywhere(zennit_rules.AlphaBeta(1.0, 0.0)),
        "alpha2_beta1": _everywhere(zennit_rules.AlphaBeta(2.0, 1.0)),
        "alpha5_beta4": _everywhere(zennit_rules.AlphaBeta(5.0, 4.0)),
        "cmp_alpha1_beta0": _everywhere(zennit_rules.AlphaBeta(1.0, 0.0), dense=zennit_rules.Epsilon(1e-10)),
        "cmp_alpha2_beta1": _everywhere(zennit_rules.AlphaBeta(2.0, 1.0), dense=zennit_rules.Epsilon(1e-10)),
        "dtd": _everywhere(zennit_rules.ZPlus(), first=zennit_rules.ZBox(low=-1.0, high=1.0)),
        "excitation_backprop": zennit_composites.ExcitationBackprop(),
        "epsilon_plus": zennit_composites.EpsilonPlus(),
        "epsilon_alpha2_beta1": zennit_composites.EpsilonAlpha2Beta1(),
    }


SIXT_CASES = [
    (name, shape, trained) for name, shape in CASES for trained in (False, True) if trained or shape == (1, 28, 28)
]


@pytest.mark.parametrize(
    "name,shape,trained",
    SIXT_CASES,
    ids=[f"{n}-{s[0]}x{s[1]}-{'trained' if t else 'random'}" for n, s, t in SIXT_CASES],
)
def test_sixt_composites_match_zennit(name, shape, trained):
    model = model_for(name, shape, "trained" if trained else "random")
    inputs = noise_images(shape)
    target = [1, 4, 9]
    for composite, reference in _references().items():
        ours = LRP(model, composite).attribute(inputs, target=target)
        expected = zennit_relevance(model, reference, inputs, target)
        assert torch.isfinite(ours).all(), composite
        assert relative_error(ours, expected) <= TOLERANCE, composite


def test_parametrised_alpha_beta_equals_named_ones():
    model, inputs = model_for("deep", (1, 28, 28)), noise_images((1, 28, 28))
    for alpha, beta, name in [(1.0, 0.0, "alpha1_beta0"), (2.0, 1.0, "alpha2_beta1"), (5.0, 4.0, "alpha5_beta4")]:
        torch.testing.assert_close(
            LRP(model, "alpha_beta", alpha=alpha, beta=beta).attribute(inputs, 3),
            LRP(model, name).attribute(inputs, 3),
        )
    reference = _everywhere(zennit_rules.AlphaBeta(3.0, 2.0))
    ours = LRP(model, "alpha_beta", alpha=3.0, beta=2.0).attribute(inputs, target=[1, 2, 3])
    assert relative_error(ours, zennit_relevance(model, reference, inputs, [1, 2, 3])) <= TOLERANCE


def test_excitation_backprop_is_alpha1_beta0_and_bad_settings_fail():
    model, inputs = model_for("shallow", (1, 28, 28)), noise_images((1, 28, 28))
    torch.testing.assert_close(
        LRP(model, "excitation_backprop").attribute(inputs, 2), LRP(model, "alpha1_beta0").attribute(inputs, 2)
    )
    with pytest.raises(ValueError, match="alpha - beta = 1"):
        make_composite("alpha_beta", alpha=2.0, beta=2.0)
