"""The traced LRP engine: Sequential models through the graph give the Sequential engine's maps, residual / dense /
gated models agree with zennit (its ResNet canonizer) or hand-written references, node rules and their errors."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from attribution_cases import noise_images
from test_canonize import randomise_batchnorms
from torch import nn

from attrlab.lrp import LRP, Epsilon
from attrlab.lrp import graph as lrp_graph
from attrlab.models import build_model

zennit_attribution = pytest.importorskip("zennit.attribution")
zennit_composites = pytest.importorskip("zennit.composites")
zennit_rules = pytest.importorskip("zennit.rules")
zennit_types = pytest.importorskip("zennit.types")
zennit_torchvision = pytest.importorskip("zennit.torchvision")

TARGET = [1, 4, 9]


class Wrapped(nn.Module):
    """A model that is not an nn.Sequential: LRP traces it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def _zennit(model, composite, inputs, target=TARGET):
    with zennit_attribution.Gradient(model, composite) as attributor:
        onehot = torch.eye(10, dtype=inputs.dtype)[target]
        _, relevance = attributor(inputs, lambda out: out * onehot[:, : out.shape[1]])
    return relevance


def _relative(ours, expected) -> float:
    return float((ours - expected).norm() / expected.norm())


def _exact_batchnorms(model: nn.Module) -> nn.Module:
    """eps = 0: zennit's merged BatchNorms keep their eps and scale by (1 + eps)^-1/2, a 5e-6 change per BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    return model


@pytest.mark.parametrize("name", ["deep", "deep_bn"])
def test_sequential_models_traced_give_the_sequential_maps(name):
    model = randomise_batchnorms(build_model(name, (1, 28, 28), seed=3)).eval()
    inputs = noise_images((1, 28, 28))
    traced = LRP(Wrapped(model), "epsilon_gamma_box")
    assert traced.traced and not LRP(model).traced
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "alpha2_beta1"):
        for batchnorm in ("canonize", "pass"):
            expected = LRP(model, composite, batchnorm=batchnorm).attribute(inputs, TARGET)
            ours = LRP(Wrapped(model), composite, batchnorm=batchnorm).attribute(inputs, TARGET)
            torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7 * float(expected.abs().max()))
    expected = LRP(model, "epsilon_gamma_box").attribute(inputs, TARGET, layer="conv3")
    torch.testing.assert_close(traced.attribute(inputs, TARGET, layer="inner.conv3"), expected)
    multi = traced.attribute(inputs, torch.tensor([[1, 2]] * 3))
    torch.testing.assert_close(multi[:, 1], traced.attribute(inputs, 2))


@pytest.mark.parametrize("mode", ["canonize", "gradient", "pass"])
def test_resnet_small_matches_zennit(mode):
    """float64, BatchNorms far from the identity: exact to rounding against zennit's ResNet canonizer (canonize), its
    BasicBlock canonizer with no rule on BatchNorm (gradient) or with its Pass rule (pass)."""
    model = _exact_batchnorms(randomise_batchnorms(build_model("resnet_small", (1, 28, 28), seed=3))).eval().double()
    inputs = noise_images((1, 28, 28)).double()
    canonizer = (
        zennit_torchvision.ResNetCanonizer if mode == "canonize" else zennit_torchvision.ResNetBasicBlockCanonizer
    )
    layer_map = {
        "canonize": [],
        "gradient": [(zennit_types.BatchNorm, None)],
        "pass": [(zennit_types.BatchNorm, zennit_rules.Pass())],
    }[mode]
    references = {
        "epsilon_plus_flat": zennit_composites.EpsilonPlusFlat,
        "epsilon_gamma_box": lambda **kw: zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0, **kw),
    }
    for composite, reference in references.items():
        ours = LRP(model, composite, batchnorm=mode).attribute(inputs, TARGET)
        expected = _zennit(model, reference(layer_map=layer_map, canonizers=[canonizer()]), inputs)
        assert _relative(ours, expected) <= 1e-9, composite


def test_every_named_composite_matches_zennit_on_resnet_small():
    """Sixt et al.'s composites and zennit's EpsilonPlus / EpsilonAlpha2Beta1 through residual blocks (float64)."""
    from test_lrp_sixt import _references

    model = _exact_batchnorms(randomise_batchnorms(build_model("resnet_small", (1, 28, 28), seed=4))).eval().double()
    inputs = noise_images((1, 28, 28)).double()
    for composite, reference in _references().items():
        reference.canonizers = [zennit_torchvision.ResNetCanonizer()]
        ours = LRP(model, composite).attribute(inputs, TARGET)
        assert _relative(ours, _zennit(model, reference, inputs)) <= 1e-8, composite


def test_resnet_small_float32_and_outputs():
    model = randomise_batchnorms(build_model("resnet_small", (1, 64, 64), seed=1)).eval()
    inputs = noise_images((1, 64, 64))
    explanation = LRP(model, "epsilon_plus_flat").explain(inputs, TARGET)
    with torch.no_grad():
        torch.testing.assert_close(explanation.logits, model(inputs), rtol=1e-5, atol=1e-5)
    canonizer = zennit_torchvision.ResNetCanonizer()
    expected = _zennit(model, zennit_composites.EpsilonPlusFlat(canonizers=[canonizer]), inputs)
    assert _relative(explanation.attribution, expected) <= 1e-4


@pytest.mark.slow
def test_resnet18_matches_zennit_at_64x64():
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _exact_batchnorms(randomise_batchnorms(torchvision.models.resnet18(num_classes=10))).eval()
    inputs = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    ours = LRP(model, "epsilon_plus_flat").attribute(inputs, TARGET[:2])
    expected = _zennit(
        model, zennit_composites.EpsilonPlusFlat(canonizers=[zennit_torchvision.ResNetCanonizer()]), inputs, TARGET[:2]
    )
    assert _relative(ours, expected) <= 1e-4


def test_densenet_small_canonized_outputs_and_conservation():
    """DenseNet: Linear -> BN, BN -> ReLU -> Conv (threshold ReLU), BN -> ReLU -> pooling -> Linear all fold; the
    canonized graph computes the model's outputs; with zero biases, no BatchNorm shifts and LRP-0 relevance sums to
    the explained logit (zennit has no DenseNet canonizer to compare with)."""
    model = randomise_batchnorms(build_model("densenet_small", (1, 28, 28), seed=2)).eval().double()
    inputs = noise_images((1, 28, 28)).double()
    explanation = LRP(model, "epsilon_plus_flat").explain(inputs, TARGET)
    with torch.no_grad():
        torch.testing.assert_close(explanation.logits, model(inputs))
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.copy_(module.running_mean * module.weight / torch.sqrt(module.running_var + module.eps))
        model.classifier.bias.zero_()
    for mode in ("canonize", "pass"):
        explanation = LRP(model, "epsilon", epsilon=0.0, batchnorm=mode).explain(inputs, TARGET)
        explained = explanation.logits.gather(1, explanation.target[:, None])[:, 0]
        torch.testing.assert_close(explanation.attribution.flatten(1).sum(1), explained, rtol=1e-4, atol=0.0)


class _TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 5)
        self.gate = nn.Linear(6, 5)
        self.out = nn.Linear(10, 3)

    def forward(self, x):
        left, right = F.relu(self.a(x)), F.relu(self.b(x))
        summed = left + right
        gated = summed * torch.sigmoid(self.gate(x))
        return self.out(torch.cat([gated, right], dim=1))


def test_node_rules_against_a_hand_written_reference():
    """Addition by proportions, concatenation by slices, the gate takes nothing, LRP-epsilon on the Linears."""
    torch.manual_seed(0)
    model = _TwoBranch().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    eps = 1e-6

    def epsilon(layer, a, relevance):
        z = layer(a)
        return a * ((relevance / (z + eps * torch.where(z >= 0, 1.0, -1.0))) @ layer.weight)

    with torch.no_grad():
        left, right = F.relu(model.a(x)), F.relu(model.b(x))
        summed = left + right
        gate = torch.sigmoid(model.gate(x))
        joined = torch.cat([summed * gate, right], dim=1)
        logits = model.out(joined)
        r_out = torch.zeros_like(logits)
        r_out[:, 2] = logits[:, 2]
        r_joined = epsilon(model.out, joined, r_out)
        r_summed, r_right = r_joined[:, :5], r_joined[:, 5:]  # the gate takes nothing: r(summed) = r(gated)
        share = r_summed / (summed + eps * torch.where(summed >= 0, 1.0, -1.0))
        r_left, r_right = left * share, r_right + right * share
        expected = epsilon(model.a, x, r_left) + epsilon(model.b, x, r_right)
    lrp = LRP(model, "epsilon")
    torch.testing.assert_close(lrp.attribute(x, 2), expected)
    torch.testing.assert_close(lrp.attribute(x, 2, layer="mul"), lrp.attribute(x, 2, layer="add"))


def test_unsupported_nodes_name_themselves_and_can_be_registered(monkeypatch):
    class Erf(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.erf(x))

    with pytest.raises(TypeError, match=r"no LRP rule for node 'erf' \(call_function erf\).*register_node_rule"):
        LRP(Erf())
    monkeypatch.setitem(lrp_graph.NODE_RULES, torch.erf, lrp_graph.pass_rule(torch.erf))
    relevance = LRP(Erf(), {nn.Linear: Epsilon()}).attribute(torch.randn(2, 4), 0)
    assert relevance.shape == (2, 4)

    class Product(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x * x)

    with pytest.raises(TypeError, match="product of two signals"):
        LRP(Product())
    with pytest.raises(TypeError, match="rule"):
        lrp_graph.register_node_rule(operator.mul, "not callable")


def test_layers_by_module_and_node_name_and_errors():
    model = build_model("resnet_small", (1, 28, 28), seed=0).eval()
    inputs = noise_images((1, 28, 28))
    lrp = LRP(model, "epsilon_plus_flat")
    block = lrp.attribute(inputs, 1, layer="layer2.0")
    assert block.shape == (3, 32, 7, 7)
    torch.testing.assert_close(block, lrp.attribute(inputs, 1, layer=model.layer2[0]))
    torch.testing.assert_close(
        lrp.attribute(inputs, 1, layer="layer2.0.bn2"), lrp.attribute(inputs, 1, layer="layer2.0.conv2")
    )
    assert lrp.attribute(inputs, 1, layer="add_1").shape == (3, 32, 7, 7)
    with pytest.raises(ValueError, match="unknown layer 'layer9'; valid layers: input, .*layer1.0.conv1"):
        lrp.attribute(inputs, 1, layer="layer9")


def test_plan_is_traced_once_per_parameter_version(monkeypatch):
    model = build_model("resnet_small", (1, 28, 28), seed=0).eval()
    inputs = noise_images((1, 28, 28))
    calls = []
    original = lrp_graph.graph_plan
    monkeypatch.setattr("attrlab.lrp.engine.graph_plan", lambda *a: calls.append(1) or original(*a))
    lrp = LRP(model, "epsilon_plus_flat")
    first = lrp.attribute(inputs, 1)
    lrp.attribute(inputs, 2)
    assert len(calls) == 1
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
    torch.testing.assert_close(lrp.attribute(inputs, 1), 2 * first, rtol=1e-4, atol=1e-6)
    assert len(calls) == 2


@pytest.mark.slow
def test_vgg16_bn_matches_zennit_and_densenet121_keeps_its_outputs():
    """torchvision families with random weights at 64x64: vgg16_bn against zennit's VGGCanonizer; densenet121 (no
    zennit canonizer) canonized on the graph computes the model's outputs and gives finite maps in every mode."""
    torchvision = pytest.importorskip("torchvision")
    inputs = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vgg = _exact_batchnorms(randomise_batchnorms(torchvision.models.vgg16_bn(num_classes=10))).eval()
        densenet = randomise_batchnorms(torchvision.models.densenet121(num_classes=10)).eval()
    ours = LRP(vgg, "epsilon_gamma_box").attribute(inputs, TARGET[:2])
    reference = zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0, canonizers=[zennit_torchvision.VGGCanonizer()])
    assert _relative(ours, _zennit(vgg, reference, inputs, TARGET[:2])) <= 1e-4
    for mode in ("canonize", "gradient", "pass"):
        explanation = LRP(densenet, "epsilon_plus_flat", batchnorm=mode).explain(inputs, TARGET[:2])
        assert torch.isfinite(explanation.attribution).all() and explanation.attribution.abs().sum() > 0
        if mode == "canonize":
            with torch.no_grad():
                expected = densenet(inputs)
            torch.testing.assert_close(explanation.logits, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def _zennit_at(model, composite, inputs, layer: str, target=TARGET):
    """zennit's relevance at the output of the module ``layer`` (zennit's gradient there is the relevance)."""
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["output"] = output

    with zennit_attribution.Gradient(model, composite) as attributor:
        # registered after zennit's own hooks: sees the output the next layers see
        handle = model.get_submodule(layer).register_forward_hook(keep)
        try:
            onehot = torch.eye(10, dtype=inputs.dtype)[target]
            attributor(inputs, lambda out: out * onehot[:, : out.shape[1]])
        finally:
            handle.remove()
    return captured["output"].grad


def _composite_references():
    from test_lrp_sixt import _references

    references = {
        "epsilon_plus_flat": zennit_composites.EpsilonPlusFlat(),
        "epsilon_gamma_box": zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0),
    }
    references.update(_references())
    return references


@pytest.mark.parametrize("weights", ["random", "trained"])
def test_resnet_small_every_composite_at_the_input_and_inner_layers(weights):
    """Briefly trained (8 Adam steps on digits: real BatchNorm statistics) and random weights, every named composite,
    against zennit with its ResNet canonizer: relevance at the input, after a residual stage and at a merged
    convolution inside a block (float64)."""
    from attribution_cases import editable_model

    model = editable_model("resnet_small", (1, 28, 28), weights)
    if weights == "random":
        randomise_batchnorms(model)
    model = _exact_batchnorms(model).eval().double()
    inputs = noise_images((1, 28, 28)).double()
    for composite, reference in _composite_references().items():
        reference.canonizers = [zennit_torchvision.ResNetCanonizer()]
        lrp = LRP(model, composite)
        if weights == "trained":  # (random weights at the input: test_every_named_composite_matches_zennit_...)
            expected = _zennit(model, reference, inputs)
            assert _relative(lrp.attribute(inputs, TARGET), expected) <= 1e-8, composite
        for layer in ("layer1", "layer2.0.conv2") if weights == "trained" else ("layer2.0.conv2",):
            expected = _zennit_at(model, reference, inputs, layer)
            ours = lrp.attribute(inputs, TARGET, layer=layer)
            assert expected.abs().sum() > 0 and _relative(ours, expected) <= 1e-8, (composite, layer)


@pytest.mark.slow
def test_resnet50_matches_zennit_at_the_input_and_an_inner_layer():
    """Bottleneck blocks at 64x64 against zennit's ResNetCanonizer (float32, random weights, BatchNorms far from the
    identity)."""
    torchvision = pytest.importorskip("torchvision")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _exact_batchnorms(randomise_batchnorms(torchvision.models.resnet50(num_classes=10))).eval()
    inputs = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    # (one composite: the others differ from resnet_small's only in the rules, which are checked there; this test
    # took 7 minutes with two on the loaded 2-core machine)
    for composite, reference in (("epsilon_plus_flat", zennit_composites.EpsilonPlusFlat),):
        lrp = LRP(model, composite)
        expected = _zennit(model, reference(canonizers=[zennit_torchvision.ResNetCanonizer()]), inputs, TARGET[:2])
        assert _relative(lrp.attribute(inputs, TARGET[:2]), expected) <= 1e-4, composite
        expected = _zennit_at(
            model, reference(canonizers=[zennit_torchvision.ResNetCanonizer()]), inputs, "layer3", TARGET[:2]
        )
        assert _relative(lrp.attribute(inputs, TARGET[:2], layer="layer3"), expected) <= 1e-4, composite


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "lrp_z"])
def test_relevance_injection_on_traced_models(composite):
    """relevance_from on a residual network: the logit relevance injected at the head reproduces attribute() at the
    input and inside; the relevance of a stage injected at that stage reproduces the input relevance; an injection at
    a convolution that a ReLU follows reaches the input with every unit's relevance (its pre-activation output)."""
    from attrlab.lrp.inject import relevance_from

    model = randomise_batchnorms(build_model("resnet_small", (1, 28, 28), seed=0)).eval().double()
    inputs = noise_images((1, 28, 28)).double()
    lrp = LRP(model, composite)
    labels = torch.tensor(TARGET)
    logits = lrp.explain(inputs, labels).logits
    start = logits * F.one_hot(labels, 10)
    recorded = relevance_from(lrp, inputs, "fc", start, [None, "layer2.0.conv2"])
    torch.testing.assert_close(recorded[None], lrp.attribute(inputs, labels))
    torch.testing.assert_close(recorded["layer2.0.conv2"], lrp.attribute(inputs, labels, layer="layer2.0.conv2"))
    stage = lrp.attribute(inputs, labels, layer="layer1")
    torch.testing.assert_close(
        relevance_from(lrp, inputs, "layer1", stage, [None])[None], lrp.attribute(inputs, labels)
    )
    v = torch.randn((3, *stage.shape[1:]), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # layer1.0.conv1 (bn1 folded) is followed by a ReLU: its output is the pre-activation, inactive units included
    pre = relevance_from(lrp, inputs, "layer1.0.conv1", v, [None, "conv1"])
    captured = []
    handle = model.layer1[0].bn1.register_forward_hook(lambda module, args, output: captured.append(output))
    with torch.no_grad():
        model(inputs)
    handle.remove()
    active = relevance_from(lrp, inputs, "layer1.0.conv1", v * (captured[0] > 0), [None])
    assert pre["conv1"].shape == (3, 16, 28, 28) and torch.isfinite(pre[None]).all()
    assert not torch.allclose(pre[None], active[None])  # the inactive units' relevance reaches the input too
    with pytest.raises(ValueError, match="not below 'layer1'"):
        relevance_from(lrp, inputs, "layer1", stage, ["layer2"])
    with pytest.raises(ValueError, match="does not match the output of 'layer1'"):
        relevance_from(lrp, inputs, "layer1", stage[:, :1], [None])
