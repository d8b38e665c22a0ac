"""The thesis' appendix A.8 construction: same function, z+ relevance moved to the disconnected cells, other rules not."""

from __future__ import annotations

import pytest
import torch

from attrlab.attribution import make_method
from attrlab.grids import cell_masks, grid_model
from attrlab.grids.construction import ShiftedDiFull, compare_shift, outside_share, shift_claims, shifted_difull
from attrlab.models import build_model

CELL = 28


def _setting(name: str = "vgg_small", n: int = 2, seed: int = 0):
    model = build_model(name, seed=seed).eval()
    if name == "vgg_small_bn":  # non-trivial running statistics, so the BatchNorms do something
        generator = torch.Generator().manual_seed(seed + 1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                width = module.num_features
                module.running_mean.copy_(torch.randn(width, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(width, generator=generator) + 0.5)
                module.weight.data.copy_(torch.rand(width, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(width, generator=generator) * 0.1)
    grid = grid_model(model, "difull", n)
    x = torch.rand(6, 1, n * CELL, n * CELL, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return grid, x


def _targets(grid, x):
    """Each grid's explained cell (cycling) and the logit of its head's top class (positive for these models)."""
    n = grid.n
    cells = torch.arange(x.shape[0]) % (n * n)
    with torch.no_grad():
        logits = grid(x).reshape(x.shape[0], grid.num_classes, n * n)
    classes = logits[torch.arange(x.shape[0]), :, cells].argmax(1)
    targets = grid.head_targets(cells, classes)
    assert bool((grid(x).gather(1, targets[:, None]) > 0).all())
    return cells, targets


@pytest.mark.parametrize("name,n", [("vgg_small", 2), ("vgg_small", 3), ("vgg_small_bn", 2)])
def test_the_function_is_unchanged(name, n):
    grid, x = _setting(name, n)
    grid, x = grid.double(), x.double()  # +p - p cancels only to the rounding of p (float32: ~1e-7 p)
    with torch.no_grad():
        expected = grid(x)
        plain = shifted_difull(grid, CELL, extra_neurons=False)(x)
        shifted = shifted_difull(grid, CELL)(x)
    scale = expected.abs().max()
    assert shifted.shape == expected.shape
    assert torch.allclose(plain, expected, atol=1e-12 * scale, rtol=0)
    assert torch.allclose(shifted, expected, atol=1e-10 * scale, rtol=0)


def test_float32_outputs_agree_to_the_rounding_of_the_aggregates():
    grid, x = _setting()
    model = shifted_difull(grid, CELL)
    with torch.no_grad():
        expected, shifted = grid(x), model(x)
        aggregate = model.gather(
            model.body(x.reshape(-1, 1, 2, CELL, 2, CELL).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, CELL, CELL)).reshape(
                x.shape[0], -1
            )
        )
    assert float((shifted - expected).abs().max()) <= 1e-6 * float(aggregate.abs().max())


def test_the_extra_neurons_are_wired_as_the_thesis_says():
    grid, x = _setting()
    model = shifted_difull(grid, CELL)
    channels, height, width = model.feature_shape
    lift = model.lift.weight[:, :, 0, 0]
    assert torch.equal(lift[:channels, :channels], torch.eye(channels))  # identity on the connected features
    assert lift[channels, channels] == 1 and lift[channels + 1, channels] == -1  # the two aggregators
    assert torch.equal(lift[channels:, :channels], torch.zeros(2, channels))
    extra = model.head1.weight[:, channels:, 0, 0]
    assert torch.equal(extra, torch.ones_like(extra))  # weight 1 to every neuron of l_c
    assert torch.equal(model.head1.weight[:, :channels], grid.head1.weight)
    # gather: a cell's sum never reads its own region, and reads every activation of every other cell once
    gather = model.gather.weight.reshape(4, height * width, 4, channels * height * width)
    for cell in range(4):
        assert float(gather[cell, :, cell].abs().sum()) == 0.0
        others = [c for c in range(4) if c != cell]
        assert torch.equal(gather[cell][:, others], torch.ones(height * width, 3, channels * height * width))


@pytest.mark.parametrize("composite", ["alpha1_beta0", "epsilon", "lrp_z"])
def test_without_extra_neurons_the_maps_equal_the_grid_models(composite):
    grid, x = _setting()
    cells, targets = _targets(grid, x)
    expected = make_method("lrp", grid, composite=composite).attribute(x, target=targets)
    got = make_method("lrp", shifted_difull(grid, CELL, extra_neurons=False), composite=composite).attribute(
        x, target=targets
    )
    assert torch.allclose(got, expected, atol=1e-5 * expected.abs().max(), rtol=0)


@pytest.mark.parametrize("composite", ["alpha1_beta0", "excitation_backprop", "epsilon_plus"])
def test_z_plus_sends_nearly_all_relevance_to_the_disconnected_cells(composite):
    grid, x = _setting()
    cells, targets = _targets(grid, x)
    before = make_method("lrp", grid, composite=composite).attribute(x, target=targets)
    after = make_method("lrp", shifted_difull(grid, CELL), composite=composite).attribute(x, target=targets)
    assert float(outside_share(before, 2, cells).max()) == 0.0  # DiFull: nothing outside the cell before
    share = outside_share(after, 2, cells)
    assert float(share.min()) > 0.9, share
    # z+ with zero biases conserves: the same total relevance, now mostly in the other cells
    assert torch.allclose(after.sum((1, 2, 3)), before.sum((1, 2, 3)), rtol=1e-4)


def test_epsilon_cancels_the_two_aggregators():
    grid, x = _setting()
    cells, targets = _targets(grid, x)
    grid, x = grid.double(), x.double()  # the cancellation is exact up to the rounding of the aggregates
    before = make_method("lrp", grid, composite="epsilon").attribute(x, target=targets)
    after = make_method("lrp", shifted_difull(grid, CELL), composite="epsilon").attribute(x, target=targets)
    # the positive and the negative aggregator hand back +aR/z and -aR/z to every disconnected activation: they cancel
    assert float(outside_share(after, 2, cells).max()) < 1e-12
    outside = ~cell_masks(2, (CELL, CELL))[cells][:, None]
    assert float(after.masked_select(outside).abs().max()) < 1e-12 * float(before.abs().max())
    # inside the cell the map stays, up to what epsilon absorbs in the identity part of l_c', a / (a + eps) per activation
    assert torch.allclose(after, before, atol=1e-3 * before.abs().max(), rtol=0)


def test_alpha2_beta1_is_shifted_too():
    grid, x = _setting()
    cells, targets = _targets(grid, x)
    after = make_method("lrp", shifted_difull(grid, CELL), composite="alpha2_beta1").attribute(x, target=targets)
    assert float(outside_share(after, 2, cells).min()) > 0.9


@pytest.mark.parametrize("method", ["gradient", "input_x_gradient"])
def test_gradient_methods_are_implementation_invariant(method):
    grid, x = _setting()
    _, targets = _targets(grid, x)
    before = make_method(method, grid).attribute(x, target=targets)
    after = make_method(method, shifted_difull(grid, CELL)).attribute(x, target=targets)
    assert torch.allclose(after, before, atol=1e-5 * before.abs().max(), rtol=0)


def test_bad_models_are_refused():
    model = build_model("vgg_small", seed=0)
    with pytest.raises(ValueError, match="DiFull"):
        ShiftedDiFull(grid_model(model, "gridpg", 2), CELL)
    with pytest.raises(ValueError, match="DiFull"):
        shifted_difull(model, CELL)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cell_size"):
        shifted_difull(grid_model(model, "difull", 2), 0)


def test_outside_share():
    attribution = torch.zeros(3, 1, 4, 4)
    attribution[0, 0, 0, 0] = 3.0  # all in cell 0
    attribution[1, 0, 0, 0], attribution[1, 0, 3, 3] = 1.0, 3.0  # 3/4 in cell 3
    attribution[1, 0, 0, 3] = -5.0  # negative relevance does not count
    share = outside_share(attribution, 2, torch.tensor([0, 0, 1]))
    assert share[0] == 0.0 and share[1] == 0.75 and torch.isnan(share[2])
    with pytest.raises(ValueError, match="3x3"):
        outside_share(attribution, 3, 0)


def test_compare_shift_and_its_claims():
    grid, x = _setting()
    cells, targets = _targets(grid, x)
    result = compare_shift(grid, CELL, x, cells, targets)
    table = result.table.set_index("method")
    assert list(table.index) == ["LRP z+", "LRP epsilon", "LRP alpha2-beta1", "Gradient", "IxG"]
    assert table.loc["LRP z+", "outside before"] == 0.0 and table.loc["LRP z+", "outside after"] > 0.9
    assert table.loc["Gradient", "map change"] < 1e-4
    assert result.logit_change_float64 < 1e-10 and result.logit_change < 1e-4
    assert set(result.maps) == {(label, when) for label in table.index for when in ("before", "after")}
    claims = shift_claims(result, nearly_all=0.9)
    assert list(claims.columns) == ["claim", "test", "measured", "holds"]
    assert claims["holds"].all(), claims
    assert not shift_claims(result, nearly_all=1.0)["holds"].iloc[1]  # the threshold is read, not typed in
    with pytest.raises(ValueError, match="no method"):
        shift_claims(result, z_plus="LRP zplus")
