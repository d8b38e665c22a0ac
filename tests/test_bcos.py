"""B-cos layers and networks: exact contributions, the magnitude bound, B = 1, bias-free norms, the registered
method, the grid wrappers, and deterministic training with resume."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrlab.attribution import make_method
from attrlab.data import ImageDataset
from attrlab.grids import grid_model
from attrlab.interpretable import (
    BcosConv2d,
    BcosLinear,
    PairEncoding,
    bias_free_norm,
    dynamic_linear,
)
from attrlab.models import build_model
from attrlab.train import Callback, TrainConfig, Trainer, train


def _digits(digits, count: int = 8) -> torch.Tensor:
    return digits.test.x[:count].clone()


def _nudged(name: str, seed: int = 0) -> nn.Module:
    """A B-cos net with its weights moved off the initialisation by a deterministic perturbation."""
    model = build_model(name, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name", ["bcos", "bcos_b1.5_maxout", "bcos_b1", "bcos_b2.5"])
def test_contributions_sum_to_the_logits(digits, name):
    model = _nudged(name).double()
    x = _digits(digits).double()
    targets = torch.tensor([[c, (c + 3) % 10] for c in range(8)])
    explanation = make_method("bcos", model).explain(x, target=targets)
    assert explanation.attribution.shape == (8, 2, 1, 28, 28)
    expected = explanation.logits.gather(1, targets)
    torch.testing.assert_close(explanation.attribution.sum((2, 3, 4)), expected, rtol=1e-9, atol=1e-9)
    # at a layer too: a_l ⊙ df/da_l sums to the logit
    at_layer = make_method("bcos", model).attribute(x, target=targets[:, 0], layer="conv4")
    torch.testing.assert_close(at_layer.sum((1, 2, 3)), expected[:, 0], rtol=1e-9, atol=1e-9)


def test_contributions_sum_to_the_logits_in_float32(digits):
    model = _nudged("bcos")
    explanation = make_method("bcos", model).explain(_digits(digits), target=3)
    torch.testing.assert_close(explanation.attribution.sum((1, 2, 3)), explanation.logits[:, 3], rtol=1e-4, atol=1e-4)


class _Bias(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, classes, dtype=torch.float64))

    def forward(self, x):
        return x + self.bias


def test_a_bias_breaks_the_sum_by_exactly_its_value(digits):
    model = nn.Sequential(_nudged("bcos").double(), _Bias(10)).eval()
    explanation = make_method("bcos", model).explain(_digits(digits).double(), target=9)
    gap = explanation.logits[:, 9] - explanation.attribution.sum((1, 2, 3))
    torch.testing.assert_close(gap, torch.full_like(gap, 1.0), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("b, max_out", [(1.0, 1), (1.5, 2), (2.0, 1), (2.5, 3)])
def test_unit_output_is_bounded_by_the_patch_norm(b, max_out):
    torch.manual_seed(0)
    layer = BcosConv2d(3, 5, kernel_size=3, stride=2, padding=1, b=b, max_out=max_out, scale=7.0)
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    layer.double()
    out = layer(x)
    patches = F.unfold(x, 3, padding=1, stride=2).pow(2).sum(1).sqrt().view(4, 1, 5, 5)
    assert (out.abs() <= 7.0 * patches * (1 + 1e-5)).all()
    # equality for an input patch aligned with a unit's weight (B-cos is maximal iff x is parallel to w)
    linear = BcosLinear(6, 2, b=b, scale=1.0).double()
    a = 3.0 * linear.weight[0].detach()[None]
    torch.testing.assert_close(linear(a)[0, 0], a.norm(), rtol=1e-5, atol=0)
    v = torch.randn(20, 6, dtype=torch.float64)
    assert (linear(v).abs() <= v.norm(dim=1, keepdim=True) * (1 + 1e-5)).all()


def test_b_equal_one_is_linear_with_unit_norm_weights():
    torch.manual_seed(0)
    layer = BcosConv2d(2, 4, kernel_size=3, padding=1, b=1.0, scale=2.0).double()
    x, y = torch.randn(2, 3, 2, 8, 8, dtype=torch.float64)
    unit = layer.weight / layer.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(layer(x), 2.0 * F.conv2d(x, unit, padding=1))
    torch.testing.assert_close(layer(2.0 * x - 3.0 * y), 2.0 * layer(x) - 3.0 * layer(y))
    torch.testing.assert_close(unit.flatten(1).norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_dynamic_mode_changes_gradients_not_values(digits):
    model = _nudged("bcos")
    x = _digits(digits)
    with dynamic_linear(model):
        detached = model(x)
        assert all(layer.detach_dynamics for layer in model.modules() if hasattr(layer, "detach_dynamics"))
    torch.testing.assert_close(detached, model(x))
    assert not any(getattr(layer, "detach_dynamics", False) for layer in model.modules())


@pytest.mark.parametrize("kind", ["batch", "layer", "instance", "position", "all"])
def test_bias_free_norms_keep_the_network_dynamic_linear(kind):
    torch.manual_seed(0)
    model = nn.Sequential(
        PairEncoding(),
        BcosConv2d(2, 6, 3, padding=1, b=2.0),
        bias_free_norm(kind, 6),
        BcosConv2d(6, 4, 1, b=2.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).double()
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64) * 2 - 1
    model.train()
    model(x)  # one training pass updates a running variance
    for mode in (True, False):
        model.train(mode)
        explanation = make_method("bcos", model).explain(x, target=torch.tensor([0, 1, 2, 3, 0]))
        torch.testing.assert_close(
            explanation.attribution.sum((1, 2, 3)),
            explanation.logits.gather(1, explanation.target[:, None])[:, 0],
            rtol=1e-9,
            atol=1e-9,
        )
    with pytest.raises(ValueError, match="unknown normalisation 'group'; valid choices: batch, layer"):
        bias_free_norm("group", 6)


def test_explanation_leaves_the_model_untouched(digits):
    model = _nudged("bcos_b1.5_maxout").train()
    before = copy.deepcopy(model.state_dict())
    make_method("bcos", model).attribute(_digits(digits), target=None, layer="conv2")
    make_method("bcos", model).attribute(_digits(digits))
    assert model.training and all(module.training for module in model.modules())
    assert all(parameter.grad is None and parameter.requires_grad for parameter in model.parameters())
    assert not any(getattr(layer, "detach_dynamics", False) for layer in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    "kwargs, message",
    [({"b": 0.5}, "B must be >= 1"), ({"max_out": 0}, "max_out must be a positive integer"), ({"scale": 0.0}, "scale")],
)
def test_bad_layer_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BcosConv2d(1, 2, **kwargs)


def test_grid_wrappers_accept_bcos_nets(digits):
    model = _nudged("bcos").double()
    cells = digits.test.x[:4].double()
    grid = torch.cat([torch.cat([cells[0], cells[1]], 2), torch.cat([cells[2], cells[3]], 2)], 1)[None]
    single = model(cells)
    difull = grid_model(model, "difull", 2)
    heads = difull(grid).view(10, 4).T  # head of each cell = the model on that cell alone
    torch.testing.assert_close(heads, single, rtol=1e-7, atol=1e-9)
    # no cell contributes to another cell's head; each head's contributions sum to its logit
    target = difull.head_targets(torch.tensor([[0, 3]]), torch.tensor([[4, 7]]))
    explanation = make_method("bcos", difull).explain(grid, target=target, layer="input")
    maps = explanation.attribution[0, :, 0]
    assert maps[0, :, 28:].abs().max() == 0 and maps[0, 28:, :].abs().max() == 0
    assert maps[1, :28, :].abs().max() == 0 and maps[1, :, :28].abs().max() == 0
    torch.testing.assert_close(maps.sum((1, 2)), explanation.logits[0, target[0]], rtol=1e-9, atol=1e-9)
    gridpg = grid_model(model, "gridpg", 2)
    assert gridpg(grid).shape == (1, 10)
    assert grid_model(model, "dipart", 2)(grid).shape == (1, 40)


class _Stop(Callback):
    def on_step(self, trainer, step):
        if step == 3:
            raise KeyboardInterrupt


def test_bcos_training_is_deterministic_and_resumes_exactly(tmp_path, digits):
    small = ImageDataset("digits", digits.train.subset(200, 0), digits.test.subset(100, 0), digits.classes)
    config = TrainConfig(
        model="bcos_b1.5_maxout",
        epochs=2,
        batch_size=50,
        checkpoint_every=2,
        eval_every=4,
        attr_per_class=2,
        device="cpu",
        loss="bce",
        lr_schedule="cosine",
        augment="crop",
    )
    reference = train(tmp_path / "a", config, dataset=small, progress=False).metrics
    again = train(tmp_path / "b", config, dataset=small, progress=False).metrics
    pd.testing.assert_frame_equal(reference, again)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "c", callbacks=[_Stop()], dataset=small, progress=False).fit()
    resumed = train(tmp_path / "c", config, dataset=small, progress=False).metrics
    pd.testing.assert_frame_equal(reference, resumed)
    assert reference["train_loss"].notna().all() and len(reference) == 8


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box", "seed000"])
def test_lrp_on_the_twin_folds_zennits_relevance_of_the_encoding(composite, device):
    """LRP explains the conventional twin in its [u, 1 - u] encoding (zennit on the net behind the encoding, with the
    encoding's bounds [0, 1] for z^B) and gives each pixel the sum of its two channels' relevances."""
    zennit_attribution = pytest.importorskip("zennit.attribution")
    zennit_composites = pytest.importorskip("zennit.composites")
    zennit_rules = pytest.importorskip("zennit.rules")
    zennit_types = pytest.importorskip("zennit.types")
    torch.manual_seed(0)
    model = build_model("bcos_relu_twin").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.bias.normal_(0.0, 0.1)  # the twin starts with zero biases: make them matter
    model = model.to(device)
    x = (torch.rand(3, 1, 28, 28) * 2 - 1).to(device)
    target = [1, 4, 9]
    settings = {} if composite == "epsilon_plus_flat" else {"low": 0.0, "high": 1.0}
    explanation = make_method("lrp", model, composite=composite, **settings).explain(x, target=target)
    if composite == "seed000":  # LRP-0 dense, gamma 0.25 conv, z^B first conv, average pooling as zennit's Norm
        layer_map = zennit_composites.layer_map_base() + [
            (zennit_types.Convolution, zennit_rules.Gamma(0.25)),
            (nn.Linear, zennit_rules.Epsilon(0.0)),
        ]
        first = [(zennit_types.Convolution, zennit_rules.ZBox(0.0, 1.0))]
        reference = zennit_composites.SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first)
    elif composite == "epsilon_plus_flat":
        reference = zennit_composites.EpsilonPlusFlat()
    else:
        reference = zennit_composites.EpsilonGammaBox(low=0.0, high=1.0)
    encoded = PairEncoding()(x)
    with zennit_attribution.Gradient(model[1:], reference) as attributor:
        onehot = torch.eye(10, device=device)[target]
        _, relevance = attributor(encoded, lambda out: out * onehot)
    expected = relevance[:, :1] + relevance[:, 1:]  # u's channel and 1 - u's channel of each pixel
    assert explanation.attribution.shape == x.shape
    scale = expected.abs().max()
    assert (explanation.attribution - expected).abs().max() <= 1e-4 * scale
    # layer="encode": the two channels apart, which fold to the pixels' relevance
    apart = make_method("lrp", model, composite=composite, **settings).attribute(x, target=target, layer="encode")
    assert apart.shape == (3, 2, 28, 28)
    assert torch.allclose(PairEncoding.fold(apart), explanation.attribution, rtol=0, atol=1e-6 * float(scale))
    # a hidden layer's relevance is its own (shaped like its output), never folded
    hidden = make_method("lrp", model, composite=composite, **settings).attribute(x, target=target, layer="conv2")
    assert hidden.shape == (3, 16, 14, 14)


def test_lrp_finds_the_encoding_behind_leading_identities():
    """An identity in front (as a wrapper's named input) leaves the encoding the input of LRP's rules."""
    from collections import OrderedDict

    model = build_model("bcos_relu_twin", seed=0).eval()
    wrapped = nn.Sequential(OrderedDict([("pre", nn.Identity()), *model.named_children()])).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = make_method("lrp", model).attribute(x, target=[1, 2])
    assert torch.allclose(make_method("lrp", wrapped).attribute(x, target=[1, 2]), expected)
    assert torch.allclose(make_method("lrp", wrapped).attribute(x, target=[1, 2], layer="pre"), expected)
