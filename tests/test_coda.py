"""CoDA networks: DAU layers against their explicit weight vectors, the norm bound, exact contributions, grids."""

from __future__ import annotations

import pytest
import torch

from attrlab.attribution import make_method
from attrlab.grids import grid_model
from attrlab.interpretable import DAUConv2d, dynamic_linear
from attrlab.models import build_model


@pytest.mark.parametrize("rescaling", ["l2", "sq", "wb"])
def test_dau_output_is_its_weight_vector_times_the_patch_and_bounded(rescaling):
    torch.manual_seed(0)
    layer = DAUConv2d(3, 5, rank=4, kernel_size=3, rescaling=rescaling).double()
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.normal_()
    patches = torch.randn(9, 3, 3, 3, dtype=torch.float64)
    weights = layer.weight_vectors(patches)  # (9, 5, 3, 3, 3): eq. 5.1 written out
    expected = (weights * patches[:, None]).flatten(2).sum(2)
    torch.testing.assert_close(layer(patches)[:, :, 0, 0], expected, rtol=1e-10, atol=1e-12)
    norms = weights.flatten(2).norm(dim=2)
    assert (norms <= 1 + 1e-9).all()  # L2: = 1, SQ: < 1, WB: <= ‖A'‖_F = 1
    if rescaling == "l2":
        torch.testing.assert_close(norms, torch.ones_like(norms))
    bound = patches.flatten(1).norm(dim=1, keepdim=True)
    assert (layer(patches)[:, :, 0, 0].abs() <= bound * (1 + 1e-9)).all()  # eq. 5.3


def test_convolution_equals_the_dau_on_every_patch():
    torch.manual_seed(1)
    layer = DAUConv2d(2, 4, rank=3, kernel_size=3, stride=2, padding=1, rescaling="sq").double()
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    out = layer(x)
    patches = torch.nn.functional.unfold(x, 3, padding=1, stride=2)  # (2, 18, 16)
    patches = patches.transpose(1, 2).reshape(-1, 2, 3, 3)
    unpadded = DAUConv2d(2, 4, rank=3, kernel_size=3, rescaling="sq").double()
    unpadded.load_state_dict(layer.state_dict())  # the same units, applied to one patch at a time
    single = unpadded(patches)[:, :, 0, 0].view(2, 16, 4).transpose(1, 2).reshape(2, 4, 4, 4)
    torch.testing.assert_close(out, single, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["coda", "coda_l2", "coda_wb"])
def test_contributions_sum_to_the_logits(digits, name):
    model = build_model(name, seed=0).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * parameter.std() * torch.randn_like(parameter))
    x = digits.test.x[:6].double()
    targets = torch.tensor([[c, 9 - c] for c in range(6)])
    explanation = make_method("bcos", model).explain(x, target=targets)
    torch.testing.assert_close(
        explanation.attribution.sum((2, 3, 4)), explanation.logits.gather(1, targets), rtol=1e-9, atol=1e-12
    )
    with dynamic_linear(model):
        torch.testing.assert_close(model(x), explanation.logits)  # detaching changes gradients, not values


def test_grid_wrappers_accept_coda_nets(digits):
    model = build_model("coda", seed=0).double().eval()
    cells = digits.test.x[:4].double()
    grid = torch.cat([torch.cat([cells[0], cells[1]], 2), torch.cat([cells[2], cells[3]], 2)], 1)[None]
    heads = grid_model(model, "difull", 2)(grid).view(10, 4).T
    torch.testing.assert_close(heads, model(cells), rtol=1e-7, atol=1e-12)


def test_bad_dau_settings_are_named():
    with pytest.raises(ValueError, match="unknown rescaling 'tanh'; valid choices: l2, sq, wb"):
        DAUConv2d(1, 2, 2, rescaling="tanh")
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        DAUConv2d(1, 2, 0)
