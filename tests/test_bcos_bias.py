"""The biased normalisation layers and the bias term of B-cos logits (thesis eq. 6.31, Fig. 6.13)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrlab.interpretable.bcos import NORMS, BiasedNorm, bias_probes
from attrlab.interpretable.bias import bias_share, logit_decomposition, top2
from attrlab.models import build_model
from attrlab.models.bcos import norm_model_name


def _biased(kind: str, seed: int = 0) -> nn.Module:
    """The digits B-cos net with biased ``kind`` norms, with non-zero β and running means (as after training)."""
    model = build_model(norm_model_name(kind, True), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BiasedNorm):
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
                if module.uses_batch:
                    module.running_mean.copy_(0.3 * torch.randn(module.running_mean.shape, generator=generator))
    return model.eval()


def _images(count: int = 6) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(7)) * 2 - 1


@pytest.mark.parametrize("kind", list(NORMS))
def test_linear_part_and_bias_add_up_to_the_logit_difference(kind):
    model, x = _biased(kind), _images()
    pair = top2(model, x)
    parts = logit_decomposition(model, x, pair)
    with torch.no_grad():
        logits = model(x)
    difference = logits.gather(1, pair[:, :1])[:, 0] - logits.gather(1, pair[:, 1:])[:, 0]
    assert torch.allclose(parts.logit, difference)
    assert parts.bias.abs().max() > 1e-3 * difference.abs().max()  # the biases matter here ...
    assert torch.allclose(parts.linear + parts.bias, difference, rtol=0, atol=1e-5 * float(difference.abs().max()))
    # ... and a single logit splits the same way
    single = logit_decomposition(model, x, pair[:, 0])
    assert torch.allclose(single.linear + single.bias, logits.gather(1, pair[:, :1])[:, 0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(NORMS))
def test_the_share_is_exactly_zero_without_biases(kind):
    model, x = build_model(norm_model_name(kind, False), seed=0).eval(), _images()
    parts = logit_decomposition(model, x, top2(model, x))
    assert torch.equal(parts.bias, torch.zeros_like(parts.bias))
    assert torch.equal(bias_share(model, x), torch.zeros(x.shape[0]))
    assert torch.allclose(parts.linear, parts.logit, rtol=1e-4, atol=1e-6)


def test_zero_biases_give_a_zero_share():
    model = build_model(norm_model_name("batch", True), seed=0).eval()  # β = 0 and running mean 0 at initialisation
    assert bias_share(model, _images()).abs().max() < 1e-6


def test_the_decomposition_leaves_the_model_as_it_was():
    model, x = _biased("batch"), _images()
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bias_share(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(m.bias_probe is None for m in model.modules() if isinstance(m, BiasedNorm))


def test_probes_change_no_output():
    model, x = _biased("layer"), _images()
    with torch.no_grad():
        before = model(x)
    with bias_probes(model, x.shape[0]) as probes, torch.no_grad():
        during = model(x)
    assert len(probes) == 6 and torch.equal(before, during)


@pytest.mark.parametrize(
    "kind,reference",
    [
        ("batch", lambda c: nn.BatchNorm2d(c)),
        ("layer", lambda c: nn.GroupNorm(1, c)),
        ("instance", lambda c: nn.InstanceNorm2d(c, affine=True)),
        ("position", None),
    ],
)
def test_biased_norms_match_torch(kind, reference):
    """BiasedNorm is the conventional layer: torch's BatchNorm2d (train and eval, running statistics included),
    GroupNorm with one group (LayerNorm over C, H, W), InstanceNorm2d; PositionNorm by hand over the channels."""
    torch.manual_seed(0)
    ours = BiasedNorm(kind, 5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.normal_()
    a = torch.randn(4, 5, 6, 6) * 2 + 1
    if reference is None:
        centred = a - a.mean(1, keepdim=True)
        expected = centred / (a.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt()
        expected = expected * ours.weight.view(1, -1, 1, 1) + ours.bias.view(1, -1, 1, 1)
        assert torch.allclose(ours(a), expected, atol=1e-5)
        return
    theirs = reference(5)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    for _ in range(3):
        assert torch.allclose(ours(a), theirs(a), atol=1e-5)
    if kind == "batch":
        assert torch.allclose(ours.running_mean.view(-1), theirs.running_mean, atol=1e-6)
        assert torch.allclose(ours.running_var.view(-1), theirs.running_var, atol=1e-5)
        ours.eval(), theirs.eval()
        assert torch.allclose(ours(a), theirs(a), atol=1e-5)


def test_bad_targets_and_norms_are_named():
    model, x = _biased("batch"), _images(2)
    with pytest.raises(ValueError, match="one class or two"):
        logit_decomposition(model, x, torch.tensor([[0, 1, 2], [0, 1, 2]]))
    with pytest.raises(ValueError, match="unknown normalisation 'group'"):
        BiasedNorm("group", 3)
