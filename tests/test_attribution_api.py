"""The call shape of the gradient, CAM and perturbation methods: registry, errors, target conventions, eval-mode
semantics, and that an attribution call leaves a training model exactly as it was (even mid training step)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from attribution_cases import images
from torch import nn

from attrlab.attribution import available_methods, get_method, make_method
from attrlab.models import build_model

#: every method of this family with settings that keep the tests fast
FAST_SETTINGS = {
    "gradient": {},
    "input_x_gradient": {},
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"n_samples": 3},
    "guided_backprop": {},
    "deconvolution": {},
    "deeplift": {},
    "rectgrad": {},
    "gradcam": {},
    "gradcam_pp": {},
    "layercam": {},
    "score_cam": {},
    "ablation_cam": {},
    "gradcam_seed_code": {},  # the training batch is added per test
    "occlusion": {"window": 7, "stride": 7},
    "rise": {"n_masks": 8},
    "lime": {"n_samples": 20},
    "pattern_net": {},  # patterns are fitted per test, on the model under test
    "pattern_attribution": {},
    "bcos": {},  # on a conventional network its contributions are the layer-wise linear ones (detached scales)
}
SHAPE = (1, 28, 28)


def _method(name: str, model: nn.Module):
    settings = dict(FAST_SETTINGS[name])
    if name == "gradcam_seed_code":
        settings["training_batch"] = (images(SHAPE, count=8, offset=50), torch.arange(8) % 10)
    if name.startswith("pattern_"):
        from attrlab.attribution.pattern import fit_patterns

        settings["patterns"] = fit_patterns(model, images(SHAPE, count=64, offset=200), progress=False)
    return make_method(name, model, **settings)


def test_registry_lists_the_family_and_resolves_each_class():
    assert set(FAST_SETTINGS) - {"gradcam_seed_code"} <= set(available_methods())
    for name in FAST_SETTINGS:
        assert get_method(name).name == name


def test_the_seed_code_gradcam_is_a_reproduction_not_a_method():
    """Reachable by name, listed apart, and it says through the generic protocol that it needs the training batch."""
    assert "gradcam_seed_code" not in available_methods()
    assert "gradcam_seed_code" in available_methods(include_reproductions=True)
    wanting = [name for name in available_methods(include_reproductions=True) if get_method(name).wants_training_batch]
    assert wanting == ["gradcam_seed_code"]
    model = build_model("shallow", SHAPE, seed=0)
    with pytest.raises(TypeError, match="'gradient' does not use a training batch"):
        make_method("gradient", model).set_training_batch(images(SHAPE, count=2), torch.tensor([0, 1]))


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: .*gradcam.*integrated_gradients"):
        get_method("grad_cam")


@pytest.mark.parametrize(
    "name, settings, error, message",
    [
        ("gradcam", {"colour": True}, TypeError, "bad settings for attribution method 'gradcam'"),
        ("gradcam", {"relu": "yes"}, TypeError, "relu must be True or False"),
        ("integrated_gradients", {"n_steps": 0}, ValueError, "n_steps must be an integer >= 1"),
        ("integrated_gradients", {"method": "riemann_left", "n_steps": 1}, ValueError, "integer >= 2"),
        ("integrated_gradients", {"method": "simpson"}, ValueError, "valid choices: gausslegendre"),
        ("integrated_gradients", {"baseline": "zero"}, ValueError, "baseline must be a finite number"),
        ("integrated_gradients", {"internal_batch_size": 0}, ValueError, "internal_batch_size"),
        ("rise", {"internal_batch_size": "big"}, ValueError, "None or 'auto', got 'big'"),
        ("smoothgrad", {"stdev": -0.1}, ValueError, "stdev must be a finite number >= 0"),
        ("smoothgrad", {"n_samples": 0}, ValueError, "n_samples"),
        ("occlusion", {"window": 0}, ValueError, "window must be an integer >= 1"),
        ("occlusion", {"window": 3, "stride": 4}, ValueError, "stride .* is larger than the window"),
        ("occlusion", {"output": "prob"}, ValueError, "valid choices: logit, probability"),
        ("rise", {"p": 0.0}, ValueError, r"p must be a probability in \(0, 1\]"),
        ("rise", {"cell_size": 2.5}, ValueError, "cell_size"),
    ],
)
def test_bad_settings_are_named(name, settings, error, message):
    model = build_model("shallow", SHAPE, seed=0)
    with pytest.raises(error, match=message):
        make_method(name, model, **settings)


@pytest.mark.parametrize("name", sorted(FAST_SETTINGS))
def test_bad_targets_layers_and_inputs_are_named(name):
    model = build_model("shallow", SHAPE, seed=0).eval()
    method = _method(name, model)
    x = images(SHAPE, count=3)
    with pytest.raises(ValueError, match="outside 0..9"):
        method.attribute(x, target=10)
    with pytest.raises(ValueError, match="target has 2 entries but the batch has 3"):
        method.attribute(x, target=[1, 2])
    with pytest.raises(TypeError, match="integer class indices"):
        method.attribute(x, target=torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="unknown layer 'conv9'; valid layers: conv1, relu1"):
        method.attribute(x, layer="conv9")
    with pytest.raises(ValueError, match="not a sub-module"):
        method.attribute(x, layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor"):
        method.attribute(x.numpy())
    with pytest.raises(TypeError, match="floating point"):
        method.attribute(x.long())


@pytest.mark.parametrize("name", sorted(FAST_SETTINGS))
def test_target_conventions(name):
    model = build_model("deep", SHAPE, seed=1).eval()
    method = _method(name, model)
    x = images(SHAPE, count=4)
    with torch.no_grad():
        logits = model(x)
    predicted = method.explain(x)
    assert torch.equal(predicted.target, logits.argmax(1))
    torch.testing.assert_close(predicted.logits, logits)
    assert torch.equal(predicted.attribution, method.attribute(x, target=logits.argmax(1)))
    as_int = method.explain(x, target=3)
    assert torch.equal(as_int.target, torch.full((4,), 3))
    assert torch.equal(as_int.attribution, method.attribute(x, target=[3, 3, 3, 3]))
    assert torch.equal(as_int.attribution, method.attribute(x, target=torch.tensor([3])))


def _model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "parameters": [p for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), key
    assert all(a is b for a, b in zip(before["parameters"], after["parameters"]))
    for key in ("requires_grad", "training", "hooks"):
        assert before[key] == after[key], key
    for a, b in zip(before["grad"], after["grad"]):
        assert (a is None and b is None) or torch.equal(a, b)


def _training_model() -> nn.Module:
    """deep_bn in train mode (BatchNorm would update its running statistics), one BN frozen in eval, conv1 frozen,
    and gradients already accumulated in every trainable parameter's ``.grad``."""
    model = build_model("deep_bn", SHAPE, seed=4).train()
    model.bn2.eval()
    model.conv1.weight.requires_grad_(False)
    for param in model.parameters():
        if param.requires_grad:
            param.grad = torch.full_like(param, 0.5)
    return model


#: the settings each method is checked with mid-training (LRP: every code path of its rules)
UNTOUCHED_VARIANTS = {
    "lrp": [{"composite": "epsilon_plus_flat"}, {"composite": "epsilon_gamma_box"}, {"composite": "seed000"}],
}


@pytest.mark.parametrize("name", available_methods(include_reproductions=True))
def test_model_is_untouched_even_between_a_training_forward_and_its_backward(name):
    """Every registered method (LRP and the reproductions included), at the input and at a layer, leaves parameters,
    buffers, flags (a frozen BatchNorm too), requires_grad, hooks and .grad as they were, and a pending training
    backward gives the gradients it would have given; the attribution is the eval-mode one."""
    x_train, y_train = images(SHAPE, count=16, offset=300), torch.arange(16) % 10
    x = images(SHAPE, count=3)

    reference = _training_model()
    F.cross_entropy(reference(x_train), y_train).backward()

    model = _training_model()
    loss = F.cross_entropy(model(x_train), y_train)  # the pending training step
    before = _model_state(model)
    for settings in UNTOUCHED_VARIANTS.get(name, [None]):
        method = _method(name, model) if settings is None else make_method(name, model, **settings)
        attribution = method.attribute(x)
        if not getattr(get_method(name), "input_only", False):
            method.attribute(x, target=[1, 2, 3], layer="conv4")
        _assert_same_state(before, _model_state(model))
        # the attribution is the eval-mode one (a copy: the training forward moved the BatchNorm statistics)
        evaluated = copy.deepcopy(model).eval()
        again = _method(name, evaluated) if settings is None else make_method(name, evaluated, **settings)
        assert torch.equal(attribution, again.attribute(x))
    loss.backward()
    for (key, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        assert (p.grad is None) == (p_ref.grad is None), key
        assert p.grad is None or torch.equal(p.grad, p_ref.grad), key
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name", ["gradient", "integrated_gradients", "gradcam", "occlusion"])
def test_methods_work_under_no_grad_and_leave_inputs_alone(name):
    model = build_model("shallow", SHAPE, seed=2).eval()
    method = _method(name, model)
    x = images(SHAPE, count=2)
    expected = method.attribute(x)
    with torch.no_grad():
        assert torch.equal(method.attribute(x), expected)
    x_grad = x.clone().requires_grad_(True)
    assert torch.equal(method.attribute(x_grad), expected)
    assert x_grad.grad is None


@pytest.mark.parametrize("name", ["integrated_gradients", "smoothgrad", "occlusion", "rise"])
def test_auto_passes_are_sized_for_the_cpu_and_change_no_value(name):
    from attrlab.attribution.checks import AUTO_VALUES_CPU, pass_rows

    x = torch.zeros(3, 1, 64, 64)
    assert pass_rows("auto", x, 10**6) == AUTO_VALUES_CPU // 4096 and pass_rows(None, x, 77) == 77
    model = build_model("shallow", SHAPE, seed=0).eval()
    images = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0))
    settings = {"n_masks": 300} if name == "rise" else {}  # more masks than one auto pass holds
    auto = make_method(name, model, **settings).attribute(images, target=1)
    whole = make_method(name, model, internal_batch_size=None, **settings).attribute(images, target=1)
    torch.testing.assert_close(auto, whole, rtol=1e-5, atol=1e-6)


CAM_METHODS = {"gradcam", "gradcam_pp", "layercam", "gradcam_seed_code", "score_cam", "ablation_cam"}


@pytest.mark.parametrize("name", available_methods(include_reproductions=True))
def test_layer_input_is_the_input_for_every_method(name):
    """``layer="input"`` is the input everywhere: the default (``None``) of the input methods, and for the CAM methods
    what the old workaround gave (an ``nn.Identity`` in front of the model, asked for by name)."""
    from collections import OrderedDict

    model = build_model("shallow", SHAPE, seed=0).eval()
    x = images(SHAPE, count=3)
    settings = {"composite": "epsilon_plus_flat"} if name == "lrp" else {}
    method = _method(name, model) if name in FAST_SETTINGS else make_method(name, model, **settings)
    explained = method.attribute(x, target=[1, 2, 3], layer="input")
    if name in CAM_METHODS:
        entry = nn.Sequential(OrderedDict([("entry", nn.Identity()), *model.named_children()])).eval()
        reference = _method(name, entry).attribute(x, target=[1, 2, 3], layer="entry")
        assert explained.shape == (3, 1, *SHAPE[1:])
    else:
        reference = method.attribute(x, target=[1, 2, 3], layer=None)
        assert explained.shape == x.shape
    assert torch.equal(explained, reference)


def test_resolve_layer_reads_the_input_sentinel_and_refuses_an_ambiguous_name():
    from collections import OrderedDict

    from attrlab.attribution import INPUT, resolve_layer

    model = build_model("shallow", SHAPE, seed=0)
    assert INPUT == "input" and resolve_layer(model, "input") is None and resolve_layer(model, None) is None
    assert resolve_layer(model, "conv2") is model.conv2
    clash = nn.Sequential(OrderedDict([("input", nn.Identity()), ("flatten", nn.Flatten())]))
    with pytest.raises(ValueError, match="'input' is ambiguous"):
        resolve_layer(clash, "input")
    assert resolve_layer(clash, clash[0]) is clash[0]
