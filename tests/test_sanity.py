"""attrlab.sanity: SSIM against scikit-image, the checks, injection, CSC, the simulation and the paper's theory."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from attrlab.attribution import make_method
from attrlab.lrp import LRP
from attrlab.lrp.inject import relevance_from
from attrlab.models import build_model
from attrlab.sanity import (
    SanityMethod,
    bootstrap_median,
    cascade,
    cascading_randomisation,
    cosine_baseline,
    csc,
    gradient_from,
    median_table,
    normalize_maps,
    parametrised_layers,
    random_classes,
    random_logit,
    reduce_channels,
    sanity_methods,
    simulate,
    simulation_frame,
    ssim,
    ssim_flipped,
)
from attrlab.sanity.residual import SmallResNet
from attrlab.sanity.simulation import model_matrices

LRP_Z = SanityMethod("LRP-z", "lrp", {"composite": "lrp_z"}, "sum", "lrp")
GRADIENT = SanityMethod("Gradient", "gradient", {}, "abs_max", "gradient")


def _model(name: str = "deep", trained: bool = True) -> nn.Sequential:
    from attribution_cases import model_for

    return model_for(name, (1, 28, 28), "trained" if trained else "random")


def _inputs(count: int = 6) -> torch.Tensor:
    return torch.rand((count, 1, 28, 28), generator=torch.Generator().manual_seed(5)) * 2 - 1


# ------------------------------------------------------------------------------------------------------ SSIM
def test_torch_ssim_equals_scikit_image():
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(0)
    a = torch.rand((5, 28, 20), generator=generator, dtype=torch.float64)
    b = (a + 0.3 * torch.randn((5, 28, 20), generator=generator, dtype=torch.float64)).clamp(0, 1)
    for win_size, data_range in [(5, 2.0), (5, 1.0), (7, 2.0)]:
        ours = ssim(a, b, win_size, data_range).numpy()
        expected = [
            structural_similarity(x, y, win_size=win_size, data_range=data_range) for x, y in zip(a.numpy(), b.numpy())
        ]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_normalisation_is_the_authors_code():
    maps = torch.randn((3, 12, 12), generator=torch.Generator().manual_seed(1))
    for image, normalised in zip(maps.numpy().astype(np.float64), normalize_maps(maps).numpy()):
        low, high = np.percentile(image, 99.5), np.percentile(image, 0.5)
        np.testing.assert_allclose(normalised, np.clip((image - low) / (high - low), 0, 1), atol=1e-12)


def test_ssim_of_a_map_with_itself_and_its_negation_is_one():
    maps = torch.randn((4, 28, 28), generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(ssim_flipped(maps, maps).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim_flipped(maps, -maps).numpy(), 1.0, atol=1e-12)
    assert (ssim_flipped(maps, maps.roll(1, 0)) < 0.5).all()
    assert torch.isnan(ssim_flipped(torch.zeros(1, 8, 8), torch.ones(1, 8, 8))).all()  # constant map: 0 / 0


def test_reduce_channels_and_bad_values():
    maps = torch.tensor([[[[1.0]], [[-3.0]], [[2.0]]]])
    assert reduce_channels(maps, "abs_max").item() == 3.0 and reduce_channels(maps, "sum").item() == 0.0
    with pytest.raises(ValueError, match="unknown reduce 'mean'.*abs_max, sum"):
        reduce_channels(maps, "mean")
    with pytest.raises(ValueError, match="win_size must be odd"):
        ssim(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), win_size=4)
    with pytest.raises(ValueError, match="unknown sanity methods"):
        sanity_methods(["LRP-zz"])


def test_bootstrap_median_agrees_with_scipy():
    from scipy.stats import bootstrap

    values = np.random.default_rng(3).normal(size=200)
    median, low, high = bootstrap_median(values)
    reference = bootstrap(
        (values,),
        np.median,
        confidence_level=0.99,
        n_resamples=10_000,
        method="percentile",
        random_state=np.random.default_rng(4),
    ).confidence_interval
    assert median == np.median(values) and low < median < high
    width = reference.high - reference.low
    assert abs(low - reference.low) < 0.15 * width and abs(high - reference.high) < 0.15 * width
    assert bootstrap_median(values, seed=7) == bootstrap_median(values, seed=7)
    assert np.isnan(bootstrap_median([np.nan])[0])


# ------------------------------------------------------------------------------------------------------ checks
def test_random_classes_are_uniform_over_the_others():
    labels = torch.arange(10).repeat(2000)
    drawn = random_classes(labels, 10, seed=3)
    assert not (drawn == labels).any()
    counts = np.bincount((drawn - labels).remainder(10).numpy(), minlength=10)[1:]
    assert counts.min() > 0.85 * counts.mean()
    assert torch.equal(drawn, random_classes(labels, 10, seed=3))


def test_random_logit_uses_one_call_with_two_targets():
    model, inputs = _model(), _inputs()
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    frame = random_logit(model, LRP_Z, inputs, labels, seed=1)
    other = torch.tensor(frame["random_class"].to_numpy())
    lrp = LRP(model, "lrp_z")
    expected = ssim_flipped(lrp.attribute(inputs, labels).sum(1), lrp.attribute(inputs, other).sum(1))
    np.testing.assert_allclose(frame["ssim"].to_numpy(), expected.numpy(), atol=1e-9)


def test_cascading_randomisation_changes_exactly_the_layers_it_should():
    model = _model()
    layers = parametrised_layers(model)
    assert layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1", "fc2"]
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    seen = []
    for depth, checkpoint, randomised in cascade(model, ["fc1", "conv5", "fc2"], seed=0):
        seen.append(checkpoint)
        changed = {
            name.split(".")[0] for name, p in randomised.named_parameters() if not torch.equal(p, original[name])
        }
        assert changed == set(layers[layers.index(checkpoint) :]), checkpoint
        assert depth == len(seen)
    assert seen == ["fc2", "fc1", "conv5"]
    assert all(torch.equal(p, original[name]) for name, p in model.named_parameters())  # the model is untouched
    first = [p.detach().clone() for p in next(iter(cascade(model, seed=4)))[2].parameters()]
    again = [p.detach().clone() for p in next(iter(cascade(model, seed=4)))[2].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_cascading_randomisation_scores_and_maps():
    model, inputs = _model(), _inputs()
    labels = torch.arange(6)
    result = cascading_randomisation(model, GRADIENT, inputs, labels, ["fc2", "conv1"], keep=2)
    assert list(result.scores["checkpoint"].unique()) == ["fc2", "conv1"]
    assert set(result.maps) == {"original", "fc2", "conv1"} and result.maps["fc2"].shape == (2, 28, 28)
    table = median_table(result.scores, ["checkpoint"], resamples=500)
    assert (table["low"] <= table["median"]).all() and (table["median"] <= table["high"]).all()
    with pytest.raises(ValueError, match="not parametrised layers.*conv1"):
        cascading_randomisation(model, GRADIENT, inputs, labels, ["relu1"])


# ------------------------------------------------------------------------------------------------- injection
@pytest.mark.parametrize("composite", ["lrp_z", "alpha2_beta1", "dtd", "cmp_alpha1_beta0"])
def test_lrp_injection_starts_with_the_given_relevance(composite):
    model, inputs = _model(), _inputs()
    lrp = LRP(model, composite)
    # starting at the logits with the explained logit reproduces the ordinary attribution
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    logits = model(inputs).detach()
    start = logits * nn.functional.one_hot(labels, 10)
    torch.testing.assert_close(relevance_from(lrp, inputs, "fc2", start, [None])[None], lrp.attribute(inputs, labels))
    torch.testing.assert_close(
        relevance_from(lrp, inputs, "fc2", start, ["conv4"])["conv4"], lrp.attribute(inputs, labels, layer="conv4")
    )
    # at a Conv2d the relevance is v on every unit (pre-activation); after its ReLU, v where the activation is not 0
    v = torch.randn((6, 64, 14, 14), generator=torch.Generator().manual_seed(0))
    pre = _recorded_at_injection(lrp, inputs, "conv4", v)
    torch.testing.assert_close(pre, v)
    post = _recorded_at_injection(lrp, inputs, "relu4", v)
    active = model[:9](inputs) != 0
    torch.testing.assert_close(post, torch.where(active, v, 0.0))
    with pytest.raises(ValueError, match="does not match the output of 'conv4'"):
        relevance_from(lrp, inputs, "conv4", v[:, :1], [None])


def _recorded_at_injection(lrp: LRP, inputs: torch.Tensor, layer: str, v: torch.Tensor) -> torch.Tensor:
    """The relevance at the injection layer itself, read as the relevance its own rule receives: one layer below,
    propagated with LRP-0 through an identity layer (a 1x1 identity convolution appended to the model's head)."""
    from attrlab.lrp.engine import plan
    from attrlab.lrp.inject import _injection_steps

    steps, _ = _injection_steps(plan(lrp.model, lrp.composite), layer)
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        out = x
        for step in steps:
            out = step.rule(step.layer, out, step.info)
        tap = out.detach().requires_grad_(True)
        seed = torch.where(tap != 0, v / torch.where(tap != 0, tap, 1.0), 0.0)
        (gradient,) = torch.autograd.grad(tap, tap, grad_outputs=seed)
    return tap.detach() * gradient


def test_gradient_injection_matches_autograd():
    model, inputs = _model(), _inputs()
    labels = torch.tensor([3, 1, 4, 1, 5, 9])
    onehot = nn.functional.one_hot(labels, 10).float()
    got = gradient_from(model, inputs, "fc2", onehot, [None, "conv3"])
    torch.testing.assert_close(got[None], make_method("gradient", model).attribute(inputs, labels))
    guided = make_method("guided_backprop", model)
    got = gradient_from(model, inputs, "fc2", onehot, [None], guided.substitutes)
    torch.testing.assert_close(got[None], guided.attribute(inputs, labels))
    # the residual model (not a Sequential) goes through forward hooks, which are removed afterwards
    resnet = SmallResNet().eval()
    got = gradient_from(resnet, inputs, "fc", onehot, [None, "block2.entry"])
    torch.testing.assert_close(got[None], make_method("gradient", resnet).attribute(inputs, labels))
    assert all(not m._forward_hooks for m in resnet.modules())


# ----------------------------------------------------------------------------------------------------- theory
def test_lrp_z_equals_input_times_gradient_with_biases():
    model, inputs = _model(), _inputs()
    assert any(m.bias is not None and m.bias.abs().sum() > 0 for m in model.modules() if hasattr(m, "bias"))
    labels = torch.tensor([0, 2, 4, 6, 8, 9])
    torch.testing.assert_close(
        LRP(model, "lrp_z").attribute(inputs, labels),
        make_method("input_x_gradient", model).attribute(inputs, labels),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0])
def test_alpha_beta_conserves_relevance_without_biases(alpha):
    """Sum of input relevance = the explained logit. Exact wherever every unit has contributions of both signs (a
    unit without negative ones loses its beta share, and z+ units with z > 0 always have positive ones): the seed
    model for alpha 1, a wide dense network (about 2^-30 odds of a one-signed unit) for the others."""
    if alpha == 1.0:
        model, inputs = _model(), _inputs()
    else:
        torch.manual_seed(1)
        model = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128, bias=False),
            nn.ReLU(),
            nn.Linear(128, 128, bias=False),
            nn.ReLU(),
            nn.Linear(128, 10, bias=False),
        ).eval()
        inputs = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    explanation = LRP(model, "alpha_beta", alpha=alpha, beta=alpha - 1).explain(inputs, target=[1, 2, 3, 4, 5, 6])
    explained = explanation.logits.gather(1, explanation.target[:, None])[:, 0]
    torch.testing.assert_close(explanation.attribution.flatten(1).sum(1), explained, rtol=1e-4, atol=1e-5)


def test_chains_of_positive_matrices_converge_within_a_few_layers():
    shapes = [(64, 64)] * 8
    positive = np.median(simulate(shapes, "positive", chains=20, seed=0), axis=0)
    assert 1 - positive[4] < 1e-6
    vanilla = np.median(simulate(shapes, "vanilla", chains=20, seed=0), axis=0)
    assert 1 - vanilla[-1] > 0.3  # random signed matrices do not converge
    alpha_one = simulate(shapes, "alpha_beta", alpha=1.0, chains=3, seed=1)
    np.testing.assert_array_equal(alpha_one, simulate(shapes, "non_negative", chains=3, seed=1))


def test_csc_converges_for_z_plus_and_stays_at_the_baseline_for_the_gradient():
    torch.manual_seed(0)
    width = 256
    layers = [("flatten", nn.Flatten()), ("fc0", nn.Linear(64, width)), ("relu0", nn.ReLU())]
    for index in range(1, 6):
        layers += [(f"fc{index}", nn.Linear(width, width)), (f"relu{index}", nn.ReLU())]
    layers.append(("out", nn.Linear(width, 10)))
    model = nn.Sequential(OrderedDict(layers)).eval()
    inputs = torch.rand(8, 1, 8, 8) * 2 - 1
    record = [f"fc{i}" for i in range(6)]
    gradient = csc(model, GRADIENT, inputs, ["fc5"], record)
    baseline = cosine_baseline(width)
    near = gradient[gradient["layer"] == "fc1"]["median"].item()
    assert abs(near - baseline) < 0.1, (near, baseline)
    zplus = SanityMethod("z+", "lrp", {"composite": "alpha1_beta0"}, "sum", "lrp")
    converged = csc(model, zplus, inputs, ["fc5"], record)
    assert converged[converged["layer"] == "fc1"]["median"].item() > 0.99


def test_csc_frame_and_baseline():
    model, inputs = _model(), _inputs(3)
    frame = csc(model, LRP_Z, inputs, ["fc1", "conv4"], [None, "conv2", "conv4", "conv6"], vectors=3)
    assert frame[frame["injection"] == "conv4"]["layer"].tolist() == ["input", "conv2"]
    assert frame[frame["injection"] == "fc1"]["layer"].tolist() == ["input", "conv2", "conv4", "conv6"]
    row = frame[(frame["injection"] == "fc1") & (frame["layer"] == "conv2")].iloc[0]
    assert row["values"] + row["dropped"] == 3 * 3 * 28 * 28 and row["channels"] == 32
    assert 0.0 < cosine_baseline(32) < 0.3 and cosine_baseline(1) == 1.0
    with pytest.raises(ValueError, match="not part of CSC"):
        csc(model, SanityMethod("SG", "smoothgrad", {}, "abs_max", "none"), inputs, ["fc1"], [None])


def test_model_matrices_and_simulation_frame():
    model = build_model("deep", seed=0)
    shapes = [m.shape for m in model_matrices(model)]
    assert shapes == [(10, 1024), (1024, 128), (128, 128), (128, 64), (64, 64), (64, 32), (32, 32)]
    frame = simulation_frame(shapes[:3], chains=2, rows=4, alphas=(1.0, 2.0))
    assert set(frame["setting"]) == {"vanilla", "relu", "non_negative", "positive", "stochastic", "alpha_beta"}
    assert len(frame) == (5 + 2) * 2 * 3


def test_sanity_tracker_writes_rows_from_initialisation_on(tmp_path, digits):
    from attrlab.sanity.callback import TABLE, SanityTracker
    from attrlab.train import Run, TrainConfig, train

    tracker = SanityTracker(
        [LRP_Z, GRADIENT], digits.test.x[:4], digits.test.y[:4], ["fc1"], [None, "conv2"], every=5, vectors=3
    )
    config = TrainConfig(dataset="digits", model="shallow", epochs=1, batch_size=200, eval_every=50)
    train(tmp_path / "run", config, callbacks=[tracker], dataset=digits, progress=False)
    frame = Run(tmp_path / "run").store.read_table(TABLE)
    steps = sorted(frame["step"].unique())
    assert steps[0] == 0 and steps[1] == 5 and steps[-1] == Run(tmp_path / "run").metrics["step"].max()
    at_start = frame[frame["step"] == 0]
    assert set(at_start["check"]) == {"csc", "random_logit"}
    assert len(at_start[at_start["check"] == "csc"]) == 2 * 2  # two methods x two recorded layers
    assert frame["value"].notna().all()
