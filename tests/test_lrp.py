"""attrlab's LRP against zennit 0.5.1, captum and an independent per-layer reference; model-untouched guarantees."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from attribution_cases import editable_model, model_for, noise_images, relative_error
from torch import nn

from attrlab.attribution import get_method
from attrlab.lrp import LRP, Composite, Epsilon, Flat, Gamma, ZPlus, make_composite

zennit_attribution = pytest.importorskip("zennit.attribution")
zennit_composites = pytest.importorskip("zennit.composites")
zennit_rules = pytest.importorskip("zennit.rules")
zennit_types = pytest.importorskip("zennit.types")

TOLERANCE = 1e-4
CASES = [(name, shape) for name in ("shallow", "deep") for shape in ((1, 28, 28), (3, 32, 32))]


def model_weights(trained: bool) -> str:
    return "trained" if trained else "random"


def zennit_relevance(model, composite, inputs, target, start="logit"):
    with zennit_attribution.Gradient(model, composite) as attributor:
        onehot = torch.eye(10, device=inputs.device)[target]
        output_fn = (lambda out: out * onehot) if start == "logit" else (lambda out: onehot)
        _, relevance = attributor(inputs, output_fn)
    return relevance


def zennit_epsilon(epsilon: float):
    layer_map = zennit_composites.layer_map_base() + [
        (zennit_types.Convolution, zennit_rules.Epsilon(epsilon)),
        (torch.nn.Linear, zennit_rules.Epsilon(epsilon)),
    ]
    return zennit_composites.LayerMapComposite(layer_map=layer_map)


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s[0]}x{s[1]}" for n, s in CASES])
def test_matches_zennit(name, shape, trained, device):
    model = model_for(name, shape, model_weights(trained), device=device)
    inputs = noise_images(shape).to(device)
    target = [1, 4, 9]
    references = {
        "epsilon_plus_flat": zennit_composites.EpsilonPlusFlat(),
        "epsilon_gamma_box": zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0),
        "epsilon": zennit_epsilon(1e-6),
    }
    for composite, reference in references.items():
        ours = LRP(model, composite).attribute(inputs, target=target)
        expected = zennit_relevance(model, reference, inputs, target)
        assert ours.shape == inputs.shape
        assert relative_error(ours, expected) <= TOLERANCE, composite


def test_start_one_matches_zennit_one_hot():
    model, inputs = model_for("deep", (1, 28, 28)), noise_images((1, 28, 28))
    ours = LRP(model, "epsilon_gamma_box", start="one").attribute(inputs, target=2)
    expected = zennit_relevance(model, zennit_composites.EpsilonGammaBox(low=-1.0, high=1.0), inputs, [2] * 3, "one")
    assert relative_error(ours, expected) <= TOLERANCE


def test_generalised_rules_on_signed_inputs_match_zennit():
    """z+, alpha-beta and gamma on the first layer (signed inputs, no ReLU shortcut) against zennit."""
    model, inputs = model_for("shallow", (3, 32, 32)), noise_images((3, 32, 32))
    from attrlab.lrp import AlphaBeta

    pairs = [
        (ZPlus(), zennit_rules.ZPlus()),
        (AlphaBeta(2.0, 1.0), zennit_rules.AlphaBeta(2.0, 1.0)),
        (Gamma(0.5), zennit_rules.Gamma(0.5)),
    ]
    for ours_rule, zennit_rule in pairs:
        ours = LRP(model, {"conv1": ours_rule, "conv2": ours_rule, nn.Linear: Epsilon()}).attribute(inputs, 0)
        reference = zennit_composites.LayerMapComposite(
            layer_map=zennit_composites.layer_map_base()
            + [(zennit_types.Convolution, zennit_rule), (torch.nn.Linear, zennit_rules.Epsilon())]
        )
        expected = zennit_relevance(model, reference, inputs, [0] * 3)
        assert relative_error(ours, expected) <= TOLERANCE, ours_rule


class _CaptumCopy(nn.Module):
    """The same network without nn.Flatten (captum's LRP rejects it), on copied layers (captum edits weights)."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        layers = list(copy.deepcopy(model).children())
        cut = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten))
        self.features = nn.Sequential(*layers[:cut])
        self.head = nn.Sequential(*layers[cut + 1 :])

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.mark.parametrize("name,shape", CASES, ids=[f"{n}-{s[0]}x{s[1]}" for n, s in CASES])
def test_matches_captum_epsilon(name, shape):
    from captum.attr import LRP as CaptumLRP

    model = model_for(name, shape)
    inputs = noise_images(shape)
    target = torch.tensor([3, 3, 7])
    expected = CaptumLRP(_CaptumCopy(model)).attribute(inputs, target=target)
    ours = LRP(model, "epsilon", epsilon=1e-9).attribute(inputs, target=target)
    assert relative_error(ours, expected) <= TOLERANCE


def _tutorial_seed000(model: nn.Sequential, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Montavon et al.'s per-layer LRP procedure (the seed's code), image by image: an independent reference."""
    layers = [layer for layer in model.children()]
    results = []
    for image, label in zip(inputs, target):
        activations = [image[None]]
        for layer in layers:
            activations.append(layer(activations[-1]))
        relevance = [None] * len(layers) + [(activations[-1] * nn.functional.one_hot(label, 10)).detach()]
        for index in range(len(layers))[::-1]:
            a = activations[index].detach().requires_grad_(True)
            layer = layers[index]
            if isinstance(layer, nn.MaxPool2d):
                layer = nn.AvgPool2d(2)
            if isinstance(layer, (nn.Conv2d, nn.AvgPool2d, nn.Linear)):
                if index == 0:
                    low = torch.full_like(a, -1.0).requires_grad_(True)
                    high = torch.full_like(a, 1.0).requires_grad_(True)
                    plus, minus = copy.deepcopy(layer), copy.deepcopy(layer)
                    plus.weight = nn.Parameter(layer.weight.clamp(min=0))
                    plus.bias = nn.Parameter(layer.bias.clamp(min=0))
                    minus.weight = nn.Parameter(layer.weight.clamp(max=0))
                    minus.bias = nn.Parameter(layer.bias.clamp(max=0))
                    z = layer(a) + 1e-9 - plus(low) - minus(high)
                    s = (relevance[index + 1] / z).detach()
                    (z * s).sum().backward()
                    relevance[index] = (a * a.grad + low * low.grad + high * high.grad).detach()
                    continue
                modified = copy.deepcopy(layer)
                if isinstance(layer, nn.Conv2d):
                    modified.weight = nn.Parameter(layer.weight + 0.25 * layer.weight.clamp(min=0))
                    modified.bias = nn.Parameter(layer.bias + 0.25 * layer.bias.clamp(min=0))
                z = modified(a) + 1e-9
                s = (relevance[index + 1] / z).detach()
                (z * s).sum().backward()
                relevance[index] = (a * a.grad).detach()
            else:
                relevance[index] = relevance[index + 1].reshape(activations[index].shape)
        results.append(relevance[0][0])
    return torch.stack(results)


@pytest.mark.parametrize("name", ["shallow", "deep"])
def test_seed000_matches_per_layer_reference(name):
    """seed000: LRP-0 dense, gamma 0.25 conv, z^B [-1, 1] first, max pooling as average pooling."""
    model, inputs = model_for(name, (1, 28, 28)), noise_images((1, 28, 28))
    target = torch.tensor([0, 5, 8])
    ours = LRP(model, "seed000", stabilizer=1e-9).attribute(inputs, target=target)  # the reference adds 1e-9
    expected = _tutorial_seed000(model, inputs, target)
    assert relative_error(ours, expected) <= TOLERANCE


@pytest.mark.parametrize("layer", [None, "conv3", "pool2", "fc1"])
def test_conservation_with_zero_bias(layer):
    model = editable_model("deep", (1, 28, 28))
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    inputs = noise_images((1, 28, 28))
    explanation = LRP(model, "epsilon", epsilon=0.0).explain(inputs, layer=layer)
    explained = explanation.logits.gather(1, explanation.target[:, None])[:, 0]
    totals = explanation.attribution.flatten(1).sum(1)
    torch.testing.assert_close(totals, explained, rtol=1e-4, atol=1e-5)


def test_layer_relevance_shape_and_nested_models():
    model, inputs = model_for("deep", (1, 28, 28)), noise_images((1, 28, 28))
    flat = LRP(model, "epsilon_gamma_box")
    children = list(model.named_children())
    nested = nn.Sequential(nn.Sequential(OrderedDict(children[:7])), nn.Sequential(OrderedDict(children[7:])))
    nested_lrp = LRP(nested, "epsilon_gamma_box")
    torch.testing.assert_close(nested_lrp.attribute(inputs, 4), flat.attribute(inputs, 4))
    at_conv3 = flat.attribute(inputs, 4, layer="conv3")
    assert at_conv3.shape == (3, 64, 14, 14)
    # a ReLU passes relevance unchanged (the engine fuses it into conv3's step): same relevance at both outputs
    torch.testing.assert_close(flat.attribute(inputs, 4, layer="relu3"), at_conv3)
    torch.testing.assert_close(nested_lrp.attribute(inputs, 4, layer="0.conv3"), at_conv3)
    # a container as the layer: the output of its last layer
    torch.testing.assert_close(nested_lrp.attribute(inputs, 4, layer="0"), flat.attribute(inputs, 4, layer="relu3"))


def test_targets_and_explanation():
    model, inputs = model_for("shallow", (1, 28, 28)), noise_images((1, 28, 28))
    lrp = LRP(model)
    explanation = lrp.explain(inputs)
    torch.testing.assert_close(explanation.logits, model(inputs))
    assert explanation.target.tolist() == model(inputs).argmax(1).tolist()
    torch.testing.assert_close(lrp.attribute(inputs, target=explanation.target), explanation.attribution)
    logits_as_one = LRP(model, start="one").attribute(inputs, target=explanation.target)
    chosen = explanation.logits.gather(1, explanation.target[:, None])
    torch.testing.assert_close(logits_as_one * chosen[:, :, None, None], explanation.attribution)


def test_lrp_never_calls_the_model():
    """Layers are evaluated functionally: a forward hook on the model never runs (the untouched-model guarantees of
    every method, LRP included, are tested in test_attribution_api.py)."""
    model = editable_model("deep", (1, 28, 28))
    calls = []
    handle = model.conv2.register_forward_hook(lambda *args: calls.append("hook"))
    try:
        for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "seed000"):
            LRP(model, composite).attribute(noise_images((1, 28, 28)), target=[1, 2, 3], layer="conv4")
    finally:
        handle.remove()
    assert calls == []


def test_errors_name_the_bad_value():
    model = model_for("shallow", (1, 28, 28), "random")
    inputs = noise_images((1, 28, 28))
    with pytest.raises(ValueError, match="unknown composite 'nope'.*epsilon_plus_flat"):
        LRP(model, "nope")
    with pytest.raises(ValueError, match="unknown start"):
        LRP(model, start="zero")
    with pytest.raises(TypeError, match="no LRP rule for layer 'act' of type Softmax"):
        LRP(nn.Sequential(OrderedDict([("flatten", nn.Flatten()), ("fc", nn.Linear(784, 10)), ("act", nn.Softmax(1))])))
    with pytest.raises(ValueError, match="outside 0..9"):
        LRP(model).attribute(inputs, target=10)
    with pytest.raises(ValueError, match="3 images"):
        LRP(model).attribute(inputs, target=[1, 2])
    with pytest.raises(ValueError, match="only fits the layer that receives the model input"):
        LRP(model, {"conv2": Flat(), nn.Conv2d: ZPlus(), nn.Linear: Epsilon()})
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        LRP(model).attribute(inputs, layer="conv9")
    with pytest.raises(TypeError, match="nn.Sequential"):
        LRP(nn.Module())
    with pytest.raises(ValueError, match="unknown max_pool"):
        make_composite("seed000", max_pool="median")
    with pytest.raises(ValueError, match="name_map names layers the model does not have"):
        LRP(model, Composite(name_map={"conv7": Epsilon()}))


def test_registry_entry():
    assert get_method("lrp") is LRP


def test_average_pools_and_dense_first_layers_match_zennit():
    """Norm rule on AvgPool2d / AdaptiveAvgPool2d, Flat and WSquare on a Linear first layer (after a Flatten)."""
    torch.manual_seed(4)
    pooled = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
    ).train()  # dropout is the identity in attribution
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10)).eval()
    inputs = torch.rand(3, 1, 8, 8) * 2 - 1
    target = [2, 3, 4]
    for model in (pooled, mlp):
        ours = LRP(model, "epsilon_plus_flat").attribute(inputs, target)
        expected = zennit_relevance(model.eval(), zennit_composites.EpsilonPlusFlat(), inputs, target)
        model.train(model is pooled)
        assert ours.shape == inputs.shape
        assert relative_error(ours, expected) <= TOLERANCE
    from attrlab.lrp import WSquare

    ours = LRP(mlp, {"1": WSquare(), nn.Linear: Epsilon()}).attribute(inputs, target)
    reference = zennit_composites.SpecialFirstLayerMapComposite(
        layer_map=zennit_composites.layer_map_base() + [(torch.nn.Linear, zennit_rules.Epsilon())],
        first_map=[(torch.nn.Linear, zennit_rules.WSquare())],
    )
    assert relative_error(ours, zennit_relevance(mlp, reference, inputs, target)) <= TOLERANCE


def test_cached_weights_follow_training_updates():
    """One LRP object used across optimiser steps gives what a fresh one gives (cached modified weights refresh)."""
    model, inputs = editable_model("shallow", (1, 28, 28), "random"), noise_images((1, 28, 28))
    trained = model_for("shallow", (1, 28, 28)).state_dict()
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "lrp_focus"):
        kept = LRP(model, composite)
        kept.attribute(inputs, 1)
        optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
        model.zero_grad()
        nn.functional.cross_entropy(model(inputs), torch.tensor([1, 2, 3])).backward()
        optimiser.step()
        torch.testing.assert_close(kept.attribute(inputs, 1), LRP(model, composite).attribute(inputs, 1))
        model.load_state_dict(trained)
        torch.testing.assert_close(kept.attribute(inputs, 1), LRP(model, composite).attribute(inputs, 1))


def test_cached_weights_see_edits_through_data():
    """In-place edits through ``param.data`` bypass version counters; the cache must still notice them."""
    model, inputs = editable_model("deep", (1, 28, 28), "random"), noise_images((1, 28, 28))
    kept = LRP(model, "epsilon_gamma_box")
    before = kept.attribute(inputs, 2)
    model.conv4.weight.data.mul_(-1.0)
    after = kept.attribute(inputs, 2)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, LRP(model, "epsilon_gamma_box").attribute(inputs, 2))
