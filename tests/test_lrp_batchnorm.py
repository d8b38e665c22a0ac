"""LRP's BatchNorm modes: "canonize" (default), "gradient" (zennit's BatchNorm without a rule), "pass" (identity)."""

from __future__ import annotations

import pytest
import torch
from test_canonize import randomise_batchnorms

from attrlab.canonize import batchnorm_affine
from attrlab.lrp import LRP
from attrlab.models import build_model

zennit_attribution = pytest.importorskip("zennit.attribution")
zennit_composites = pytest.importorskip("zennit.composites")
zennit_rules = pytest.importorskip("zennit.rules")
zennit_types = pytest.importorskip("zennit.types")

TARGET = [1, 4, 9]
REFERENCES = {
    "epsilon_plus_flat": zennit_composites.EpsilonPlusFlat,
    "epsilon_gamma_box": lambda **kw: zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0, **kw),
}
#: zennit's layer map entry for BatchNorm in each mode (placed first, so it wins over zennit's layer_map_base)
ZENNIT_BATCHNORM = {"gradient": None, "pass": zennit_rules.Pass()}


def _model(name: str, dtype: torch.dtype = torch.float64):
    model = randomise_batchnorms(build_model(name, (1, 28, 28), seed=3), seed=1).eval().to(dtype)
    inputs = (torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(5)) * 2 - 1).to(dtype)
    return model, inputs


def _zennit(model, composite, inputs):
    with zennit_attribution.Gradient(model, composite) as attributor:
        onehot = torch.eye(10, dtype=inputs.dtype)[TARGET]
        _, relevance = attributor(inputs, lambda out: out * onehot)
    return relevance


def _relative(ours, expected) -> float:
    return float((ours - expected).norm() / expected.norm())


@pytest.mark.parametrize("mode", ["gradient", "pass"])
@pytest.mark.parametrize("name", ["vgg_small_bn", "deep_bn"])
def test_modes_match_zennit_without_canonizer(name, mode):
    """In float64 (negative BatchNorm scales included) the maps agree with zennit to rounding: "gradient" is zennit
    with no rule on BatchNorm, "pass" zennit's Pass rule on it (which zennit 0.5.1's composites give by default)."""
    model, inputs = _model(name)
    for composite, reference in REFERENCES.items():
        ours = LRP(model, composite, batchnorm=mode).attribute(inputs, target=TARGET)
        expected = _zennit(model, reference(layer_map=[(zennit_types.BatchNorm, ZENNIT_BATCHNORM[mode])]), inputs)
        assert _relative(ours, expected) <= 1e-9, composite
    if mode == "pass":  # zennit 0.5.1's composites without a canonizer
        expected = _zennit(model, zennit_composites.EpsilonPlusFlat(), inputs)
        assert _relative(LRP(model, "epsilon_plus_flat", batchnorm="pass").attribute(inputs, TARGET), expected) <= 1e-9


@pytest.mark.parametrize("mode", ["gradient", "pass"])
def test_modes_match_zennit_in_float32(mode):
    model, inputs = _model("vgg_small_bn", torch.float32)
    ours = LRP(model, "epsilon_plus_flat", batchnorm=mode).attribute(inputs, target=TARGET)
    reference = zennit_composites.EpsilonPlusFlat(layer_map=[(zennit_types.BatchNorm, ZENNIT_BATCHNORM[mode])])
    assert _relative(ours, _zennit(model, reference, inputs)) <= 1e-4


def test_pass_is_the_identity_for_relevance_and_conserves():
    """ "pass": the relevance at a BatchNorm's input is the one at its output; with zero biases and LRP-0 the input
    relevance sums to the explained logit (the BatchNorm shifts take no relevance), while "gradient" rescales it."""
    model, inputs = _model("deep_bn")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.bias.zero_()
    passing = LRP(model, "epsilon", epsilon=0.0, batchnorm="pass")
    for before, after in [("conv1", "bn1"), ("conv4", "bn4"), ("fc1", "bn7")]:
        torch.testing.assert_close(
            passing.attribute(inputs, TARGET, layer=before), passing.attribute(inputs, TARGET, layer=after)
        )
    explanation = passing.explain(inputs, target=TARGET)
    explained = explanation.logits.gather(1, explanation.target[:, None])[:, 0]
    # units whose input window is all zero (after ReLU and zero biases) have z = 0 exactly and pass nothing down under
    # LRP-0 (zennit too); the BatchNorm shift gives them relevance, a loss of about 1e-5 here
    torch.testing.assert_close(explanation.attribution.flatten(1).sum(1), explained, rtol=1e-4, atol=0.0)
    gradient = LRP(model, "epsilon", epsilon=0.0, batchnorm="gradient")
    scale, _ = batchnorm_affine(model.bn4)
    torch.testing.assert_close(
        gradient.attribute(inputs, TARGET, layer="conv4"),
        gradient.attribute(inputs, TARGET, layer="bn4") * scale.view(-1, 1, 1),
    )
    totals = gradient.explain(inputs, target=TARGET).attribution.flatten(1).sum(1)
    assert not torch.allclose(totals, explained, rtol=1e-3)


def test_canonize_is_the_default_and_modes_differ():
    model, inputs = _model("vgg_small_bn")
    default = LRP(model, "epsilon_plus_flat").attribute(inputs, TARGET)
    torch.testing.assert_close(LRP(model, "epsilon_plus_flat", batchnorm="canonize").attribute(inputs, TARGET), default)
    for mode in ("gradient", "pass"):
        assert _relative(LRP(model, "epsilon_plus_flat", batchnorm=mode).attribute(inputs, TARGET), default) > 1e-3


def test_bad_mode_is_a_clear_error():
    model, _ = _model("vgg_small_bn")
    with pytest.raises(ValueError, match="unknown batchnorm mode 'fold'; valid choices: canonize, gradient, pass"):
        LRP(model, batchnorm="fold")
