"""X-DNNs: bias-free copies of models, on which Integrated Gradients from zero equals Input x Gradient (one pass)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from attribution_cases import digits_images
from torch import nn

from attrlab.attribution import make_method
from attrlab.models import build_model
from attrlab.models.xdnn import BiasFreeBatchNorm, has_bias, remove_biases


def _trained(model: nn.Module, shape=(1, 28, 28), steps: int = 6) -> nn.Module:
    x, y = digits_images(shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (32,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x[index]), y[index]).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", ["shallow", "deep", "deep_bn", "vgg_small"])
def test_integrated_gradients_equals_input_x_gradient_on_xdnns(name):
    model = _trained(build_model(name, seed=0, bias=False))
    assert not has_bias(model)
    # noise images: digits' flat background gives max-pool ties, which rounding in f(a x) breaks either way
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():  # positively homogeneous: f(a x) = a f(x)
        torch.testing.assert_close(model(0.3 * x), 0.3 * model(x), rtol=1e-4, atol=1e-5)
    ixg = make_method("input_x_gradient", model).attribute(x, target=3)
    ig = make_method("integrated_gradients", model, n_steps=8).attribute(x, target=3)
    torch.testing.assert_close(ig, ixg, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # and both are complete: they sum to f(x) - f(0) = f(x)
        torch.testing.assert_close(ixg.flatten(1).sum(1), model(x)[:, 3], rtol=1e-4, atol=1e-4)
    biased = _trained(build_model(name, seed=0))
    ixg_biased = make_method("input_x_gradient", biased).attribute(x, target=3)
    ig_biased = make_method("integrated_gradients", biased, n_steps=8).attribute(x, target=3)
    assert (ig_biased - ixg_biased).norm() > 1e-3 * ixg_biased.norm()  # with biases the two differ


def test_remove_biases_copies_and_keeps_names_and_weights():
    model = build_model("deep_bn", seed=1)
    with torch.no_grad():
        model.bn1.running_var.fill_(4.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    free = remove_biases(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # original untouched
    assert has_bias(model) and not has_bias(free)
    assert isinstance(free.bn1, BiasFreeBatchNorm) and free.conv1.bias is None and free.fc2.bias is None
    assert torch.equal(free.conv1.weight, model.conv1.weight)
    free.eval()
    x = torch.randn(2, 32, 5, 5)
    torch.testing.assert_close(
        free.bn1(x), x * (model.bn1.weight / torch.sqrt(torch.tensor(4.0) + 1e-5)).view(1, -1, 1, 1)
    )
    same = build_model("deep_xdnn", seed=3)
    torch.testing.assert_close(same.conv2.weight, build_model("deep", seed=3).conv2.weight)
    assert not has_bias(same)


def test_remove_biases_names_what_it_cannot_handle():
    with pytest.raises(ValueError, match="layer '1' \\(LayerNorm\\)"):
        remove_biases(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)))
    with pytest.raises(TypeError, match="bias must be True or False"):
        build_model("deep", bias="no")
