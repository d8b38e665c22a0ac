"""Grid evaluations: grid construction, the three settings, the localisation score, smoothing, AggAtt, evaluation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from attrlab.attribution import Attribution, Explanation, resolve_target
from attrlab.attribution.base import per_target, target_columns
from attrlab.grids import (
    BINS,
    ConfidentImages,
    MethodSpec,
    aggatt_order,
    attribution_map,
    bin_maps,
    bin_slices,
    cell_masks,
    confident_images,
    evaluate_setting,
    gaussian_sigma,
    grid_model,
    localisation,
    make_grids,
    smooth,
    tile,
)
from attrlab.grids.settings import to_cells
from attrlab.models import build_model


class InlineInputXGradient(Attribution):
    """Input x gradient by plain autograd (input only): the local reference method of these tests."""

    def explain(self, inputs, target=None, layer=None):
        assert layer in (None, "input")
        x = inputs.detach().requires_grad_(True)
        logits = self.model(x)
        index = resolve_target(target, logits)
        columns = target_columns(index)
        grads = [
            torch.autograd.grad(logits.gather(1, columns[:, t : t + 1]).sum(), x, retain_graph=True)[0]
            for t in range(columns.shape[1])
        ]
        return Explanation(per_target(x.detach()[:, None] * torch.stack(grads, 1), index), logits.detach(), index)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("vgg_small", seed=0).eval()


@pytest.fixture(scope="module")
def confident():
    """A synthetic confident set: 10 classes x 3 images whose pixels encode (class, image) for checking sources."""
    y = torch.arange(10).repeat_interleave(3)
    x = (y * 10 + torch.arange(30) % 3).float()[:, None, None, None].expand(30, 1, 28, 28).clone()
    return ConfidentImages(x, y, 0.99)


# ------------------------------------------------------------------ grid data
@pytest.mark.parametrize("n", [2, 3])
def test_distinct_grids_hold_distinct_classes_and_their_images(confident, n):
    grids = make_grids(confident, count=40, n=n, layout="distinct", seed=1)
    assert grids.images.shape == (40, 1, 28 * n, 28 * n)
    assert all(len(set(row)) == n * n for row in grids.labels.tolist())
    # every cell shows the image it claims to show, of its class
    cells = to_cells(grids.images, n)[:, 0, 0, 0].reshape(40, n * n)
    assert torch.equal(cells, confident.x[grids.sources][:, :, 0, 0, 0])
    assert torch.equal(confident.y[grids.sources], grids.labels)


def test_repeated_grids_repeat_top_left_class_bottom_right_with_another_image(confident):
    grids = make_grids(confident, count=200, n=2, layout="repeated", seed=0)
    labels = grids.labels
    assert torch.equal(labels[:, 0], labels[:, 3])
    assert all(len(set(row[:3])) == 3 for row in labels.tolist())
    assert bool((grids.sources[:, 0] != grids.sources[:, 3]).all())


def test_grids_are_seeded(confident):
    first = make_grids(confident, count=20, n=2, seed=5)
    again = make_grids(confident, count=20, n=2, seed=5)
    other = make_grids(confident, count=20, n=2, seed=6)
    assert torch.equal(first.images, again.images) and not torch.equal(first.sources, other.sources)


def test_cell_masks_partition_the_grid_row_by_row():
    masks = cell_masks(3, (4, 5))
    assert masks.shape == (9, 12, 15)
    assert bool((masks.sum(0) == 1).all())
    assert bool(masks[5, 4:8, 10:15].all()) and int(masks[5].sum()) == 20  # row 1, column 2


def test_tile_places_cells_row_by_row():
    cells = torch.arange(4.0)[None, :, None, None, None].expand(1, 4, 1, 2, 2)
    assert tile(cells, 2)[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_bad_grid_requests_raise(confident):
    with pytest.raises(ValueError, match="layout"):
        make_grids(confident, 5, layout="diagonal")
    with pytest.raises(ValueError, match="distinct classes"):
        make_grids(confident, 5, n=4)


def test_confident_images_keep_confident_correct_ones_and_name_short_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2) * 10)
    x = torch.tensor([[1.0, 0], [0, 1], [0.1, 0], [0, 1], [1, 0]])[:, :, None, None]
    y = torch.tensor([0, 1, 0, 0, 0])
    kept = confident_images(model, x, y, threshold=0.99, min_per_class=1)
    assert kept.y.tolist() == [0, 1, 0] and torch.equal(kept.x[:, :, 0, 0], x[[0, 1, 4], :, 0, 0])
    with pytest.raises(ValueError, match=r"classes \{1: 1\}"):
        confident_images(model, x, y, threshold=0.99, min_per_class=2)


# ------------------------------------------------------------------- settings
def test_gridpg_is_the_model_over_the_grid_and_difull_the_model_per_cell(model):
    x = torch.randn(3, 1, 56, 56)
    assert torch.equal(grid_model(model, "gridpg", 2)(x), model(x))
    per_cell = model(to_cells(x, 2)).reshape(3, 4, 10).transpose(1, 2).reshape(3, 40)
    torch.testing.assert_close(grid_model(model, "difull", 2)(x), per_cell, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 3])
def test_difull_heads_have_exactly_zero_gradient_from_other_cells(model, n):
    wrapped = grid_model(model, "difull", n)
    x = torch.randn(2, 1, 28 * n, 28 * n, requires_grad=True)
    logits = wrapped(x).reshape(2, 10, n * n).transpose(1, 2)
    masks = cell_masks(n, (28, 28))
    for cell in range(n * n):
        (grad,) = torch.autograd.grad(logits[:, cell].sum(), x, retain_graph=True)
        assert bool((grad[:, 0, ~masks[cell]] == 0).all())
        assert bool((grad[:, 0, masks[cell]] != 0).any())


def test_dipart_head_pools_only_its_own_cell_of_the_evidence_map(model):
    wrapped = grid_model(model, "dipart", 2)
    x = torch.randn(2, 1, 56, 56, requires_grad=False)
    features = x
    for name, module in wrapped.named_children():
        if name == "cell_pool":  # the per-cell pooling, followed by flatten
            break
        features = module(features)
    assert features.shape == (2, 10, 14, 14)
    expected = torch.stack(
        [features[:, :, :7, :7], features[:, :, :7, 7:], features[:, :, 7:, :7], features[:, :, 7:, 7:]], 1
    ).mean((3, 4))
    torch.testing.assert_close(wrapped(x).reshape(2, 10, 4).transpose(1, 2), expected)
    # DiPart is only partly disconnected: the receptive field reaches over the cell border, but not far
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(wrapped(x).reshape(2, 10, 4)[:, :, 3].sum(), x)
    assert bool((grad[:, 0, 20:28, 20:28] != 0).any())
    assert bool((grad[:, 0, :10, :10] == 0).all())


def test_head_targets_address_cell_heads(model):
    difull, gridpg = grid_model(model, "difull", 3), grid_model(model, "gridpg", 3)
    cells, classes = torch.tensor([0, 8, 4]), torch.tensor([3, 1, 9])
    assert difull.head_targets(cells, classes).tolist() == [27, 17, 85]
    logits = torch.arange(90.0)[None]  # the wrapper's flatten order: class-major
    assert logits.reshape(1, 10, 9)[0, 1, 8] == logits[0, difull.head_targets(torch.tensor(8), torch.tensor(1))]
    assert gridpg.head_targets(cells, classes).tolist() == [3, 1, 9]


def test_settings_reject_models_without_global_pooling():
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d"):
        grid_model(build_model("shallow"), "gridpg", 2)
    with pytest.raises(ValueError, match="valid settings"):
        grid_model(build_model("vgg_small"), "gridpg_plus", 2)


# --------------------------------------------------------------- localisation
def test_localisation_perfect_uniform_and_empty_maps():
    masks = cell_masks(3, (4, 4))
    perfect = masks[4].float()[None] * 2.5 - (~masks[4]).float()[None]  # negative elsewhere: ignored
    uniform = torch.ones(1, 12, 12)
    empty = -torch.ones(1, 12, 12)
    maps = torch.cat([perfect, uniform, empty])
    score, inside = localisation(maps, masks, torch.tensor([4, 4, 4]))
    torch.testing.assert_close(score, torch.tensor([1.0, 1 / 9, 0.0]))
    torch.testing.assert_close(inside, torch.tensor([40.0, 16.0, 0.0]))


def test_localisation_of_a_hand_made_split_map():
    masks = cell_masks(2, (2, 2))
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 0, 3] = 3.0, 1.0, -5.0
    score, _ = localisation(maps, masks, 0)
    assert score.item() == pytest.approx(0.75)


def test_attribution_map_sums_channels_then_upsamples_bilinearly():
    attribution = torch.randn(2, 3, 7, 7)
    summed = attribution.sum(1, keepdim=True)
    expected = nn.functional.interpolate(summed, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(attribution_map(attribution, (28, 28)), expected)
    # a map constant over each cell of a 2x2 layer stays exactly in its cell away from the border rows
    layer = torch.zeros(1, 1, 2, 2)
    layer[0, 0, 0, 0] = 1.0
    up = attribution_map(layer, (8, 8))
    assert up[0, :2, :2].eq(1).all() and up[0, 6:, 6:].eq(0).all()
    assert attribution_map(torch.ones(1, 2, 8, 8), (8, 8)).eq(2).all()


# ------------------------------------------------------------------ smoothing
def test_smoothing_uses_sigma_a_quarter_of_the_kernel_size():
    assert gaussian_sigma(9) == 2.25
    impulse = torch.zeros(1, 31, 31)
    impulse[0, 15, 15] = 1.0
    blurred = smooth(impulse, 9)[0]
    # the kernel is a normalised sampled Gaussian of sigma 9/4 over 9 taps
    taps = torch.exp(-((torch.arange(9.0) - 4) ** 2) / (2 * 2.25**2))
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    torch.testing.assert_close(blurred[11:20, 11:20], kernel, rtol=1e-5, atol=1e-6)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(smooth(impulse, 1), impulse)
    with pytest.raises(ValueError, match="odd"):
        smooth(impulse, 4)


# --------------------------------------------------------------------- AggAtt
def test_aggatt_sorts_by_score_then_cell_mass():
    scores = torch.tensor([0.5, 0.9, 0.5, 0.1])
    mass = torch.tensor([1.0, 0.0, 3.0, 9.0])
    assert aggatt_order(scores, mass).tolist() == [1, 2, 0, 3]


def test_aggatt_bins_follow_the_percentile_ranges():
    assert [(s.start, s.stop) for s in bin_slices(100)] == [(0, 2), (2, 5), (5, 50), (50, 95), (95, 98), (98, 100)]
    with pytest.raises(ValueError, match="at least 51"):
        bin_slices(20)
    # maps whose value is their rank: each bin's mean is the mean rank of its range
    count = 200
    ranks = torch.arange(count, dtype=torch.float32)
    scores = 1 - ranks / count  # best first = rank 0
    maps = ranks[:, None, None].expand(count, 2, 2)
    shuffle = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    bins = bin_maps(maps[shuffle], scores[shuffle], torch.zeros(count))
    expected = [sum(range(round(lo * 2), round(hi * 2))) / (round(hi * 2) - round(lo * 2)) for lo, hi in BINS]
    torch.testing.assert_close(bins[:, 0, 0], torch.tensor(expected))


# ----------------------------------------------------------------- evaluation
def test_batched_evaluation_equals_the_per_image_loop_and_difull_ixg_is_perfect(model, confident):
    grids = make_grids(confident, count=6, n=2, layout="repeated", seed=0)
    spec = MethodSpec("IxG", InlineInputXGradient, smoothing=(1, 5))
    kwargs = dict(layers={"input": None}, cells=[0, 3], progress=False)
    batched = evaluate_setting(model, grids, "difull", [spec], batch_size=64, **kwargs)
    looped = evaluate_setting(model, grids, "difull", [spec], batch_size=1, **kwargs)
    torch.testing.assert_close(
        torch.tensor(batched.scores["score"].to_numpy()), torch.tensor(looped.scores["score"].to_numpy())
    )
    raw = batched.scores.query("kernel_size == 1")
    assert len(raw) == 12 and sorted(raw["cell"].unique()) == [0, 3]
    assert raw["score"].eq(1.0).all()  # no gradient reaches other cells
    assert set(batched.scores["method"]) == {"IxG", "S-IxG"}
    assert batched.maps[("IxG", "input", 1)].shape == (6, 56, 56)


def test_evaluation_with_the_registered_methods_at_named_layers(model, confident, device):
    grids = make_grids(confident, count=4, n=2, layout="repeated", seed=0)
    specs = [MethodSpec("IxG", "input_x_gradient"), MethodSpec("Grad-CAM", "gradcam")]
    result = evaluate_setting(copy.deepcopy(model).to(device), grids, "difull", specs, progress=False)
    table = result.scores.groupby(["method", "layer"])["score"].min()
    assert len(table) == 6
    # IxG is exactly in-cell at the input; later layers lose a little to the bilinear upsampling only
    assert table[("IxG", "input")] == 1.0 and table[("IxG", "final")] > 0.8
    assert result.scores["score"].between(0, 1).all()


# ------------------------------------------------------ localisation over training
def test_grid_localisation_callback_writes_a_table_per_flush_and_leaves_training_mode(tmp_path, confident):
    from attrlab.data import load_dataset
    from attrlab.grids.callback import GridLocalisation
    from attrlab.train import Callback, train

    class ModeProbe(Callback):
        modes: list[bool] = []

        def on_step(self, trainer, step):
            self.modes.append(trainer.model.training)

    grids = {"difull": make_grids(confident, count=3, n=2, layout="repeated", seed=0)}
    callback = GridLocalisation(grids, [MethodSpec("IxG", InlineInputXGradient)], every=2, layers={"input": None})
    probe = ModeProbe()
    data = load_dataset("digits", device="cpu")
    small = type(data)(data.name, data.train.subset(100), data.test, data.classes)
    run = train(
        tmp_path / "run",
        model="vgg_small_bn",
        epochs=1,
        batch_size=30,
        checkpoint_every=2,
        eval_every=4,
        attr_per_class=1,
        callbacks=[callback, probe],
        dataset=small,
        progress=False,
    )
    table = run.table("grid_localisation")
    assert table["step"].tolist() == [2, 4]
    assert set(table["method"]) == {"IxG"} and table["median"].eq(1.0).all()
    assert all(probe.modes)  # the evaluation put the model back into training mode


def test_lrp_through_the_difull_wrapper_equals_lrp_of_each_cell_alone(model, confident):
    from attrlab.attribution import make_method

    grids = make_grids(confident, count=3, n=2, layout="repeated", seed=0)
    wrapped, single = grid_model(model, "difull", 2).eval(), grid_model(model, "gridpg", 1).eval()
    cells = torch.tensor([[0, 3]] * 3)
    classes = grids.labels.gather(1, cells)
    for composite in ("epsilon_plus_flat", "seed000"):
        for layer in ("input", "relu4"):
            grid_relevance = make_method("lrp", wrapped, composite=composite).attribute(
                grids.images, target=wrapped.head_targets(cells, classes), layer=layer
            )  # (3 grids, 2 heads, C, H, W)
            alone = make_method("lrp", single, composite=composite).attribute(
                to_cells(grids.images, 2).view(3, 4, 1, 28, 28)[:, [0, 3]].flatten(0, 1),
                target=classes.flatten(),
                layer=layer,
            )
            per_head = to_cells(grid_relevance.flatten(0, 1), 2).view(3, 2, 4, *alone.shape[1:])
            for head, cell in enumerate((0, 3)):
                torch.testing.assert_close(
                    per_head[:, head, cell], alone.view(3, 2, *alone.shape[1:])[:, head], rtol=1e-4, atol=1e-6
                )
                others = [c for c in range(4) if c != cell]
                assert per_head[:, head, others].abs().max() == 0  # nothing reaches another cell
    result = evaluate_setting(
        model, grids, "difull", [MethodSpec("LRP", "lrp")], layers={"input": "input"}, progress=False
    )
    assert result.scores["score"].eq(1.0).all() and len(result.scores) == 6


def test_evaluation_runs_on_a_copy_and_leaves_the_callers_model_as_it_was(model, confident):
    from attrlab.attribution import make_method
    from attrlab.grids import evaluation_copy, grid_maps

    training = build_model("vgg_small_bn", seed=1).train()
    parameters = [(p, p.requires_grad, p.stride()) for p in training.parameters()]
    grids = make_grids(confident, count=4, n=2, layout="distinct", seed=0)
    result = evaluate_setting(
        training, grids, "gridpg", [MethodSpec("LRP", "lrp")], layers={"input": "input"}, progress=False
    )
    assert training.training and all(m.training for m in training.modules())
    assert [(p, p.requires_grad, p.stride()) for p in training.parameters()] == parameters
    # the channels-last copy computes the same maps as the model in its own layout
    copy = evaluation_copy(model)
    assert copy is not model and not any(p.requires_grad for p in copy.parameters())
    targets = grid_model(model, "gridpg", 2).head_targets(torch.arange(4).expand(4, -1), grids.labels)
    for method in ("lrp", "gradcam", "occlusion"):
        ours = grid_maps(make_method(method, grid_model(copy, "gridpg", 2)), grids.images, targets, "input", 2)
        reference = grid_maps(make_method(method, grid_model(model, "gridpg", 2)), grids.images, targets, "input", 4)
        assert float((ours - reference).norm() / reference.norm()) < 1e-5, method  # float rounding only
    assert len(result.scores) == 16 and sorted(result.scores["cell"].unique()) == [0, 1, 2, 3]
