"""Every composite in every BatchNorm mode (attrlab.lrp.gallery) and the chapter's LRP figures (attrlab.plots.lrp)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

from attrlab.lrp import BATCHNORM_MODES, COMPOSITES, LRP
from attrlab.lrp.gallery import conservation, explain_all, mode_agreement, zero_bias_copy
from attrlab.models import build_model
from attrlab.plots.lrp import plot_composite_maps, plot_shift_maps
from attrlab.plots.style import MIN_FONT_PT, PAGE_WIDTH_IN


def _model(name: str = "resnet_small") -> nn.Module:
    model = build_model(name, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorms that do something, and non-zero biases
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                width = module.num_features
                module.running_mean.copy_(torch.randn(width, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(width, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(width, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(width, generator=generator) * 0.2)
    return model


def _inputs(count: int = 4) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1


def test_explain_all_runs_every_pair_and_matches_single_calls():
    model, x = _model(), _inputs()
    results = explain_all(model, x, 3)
    assert list(results) == [(c, m) for c in COMPOSITES for m in BATCHNORM_MODES]
    for pair in [("epsilon_plus_flat", "canonize"), ("alpha1_beta0", "pass"), ("lrp_z", "gradient")]:
        expected = LRP(model, pair[0], batchnorm=pair[1]).attribute(x, target=3)
        assert torch.equal(results[pair].attribution, expected)


def test_explain_all_refuses_unknown_names_before_any_work():
    with pytest.raises(ValueError, match="unknown composites"):
        explain_all(_model(), _inputs(), 0, composites=["epsilon", "z_plus"])
    with pytest.raises(ValueError, match="unknown batchnorm mode"):
        explain_all(_model(), _inputs(), 0, composites=["epsilon"], modes=["fold"])


@pytest.mark.parametrize("name", ["resnet_small", "densenet_small"])
def test_zero_biases_make_the_conserving_composites_exact(name):
    model = _model(name)
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    bias_free = zero_bias_copy(model)
    assert any(float(b.abs().sum()) > 0 for b in biases.values())
    assert all(float(p.detach().abs().sum()) == 0 for n, p in bias_free.named_parameters() if n.endswith("bias"))
    x = _inputs()
    composites = ["epsilon", "lrp_z", "epsilon_gamma_box"]
    table = conservation(explain_all(bias_free, x, 1, composites=composites, modes=["canonize", "pass"]))
    assert table["max_deviation"].max() < 1e-4, table
    # with the biases some relevance goes to them
    assert (
        conservation(explain_all(model, x, 1, composites=["lrp_z"], modes=["canonize"]))["max_deviation"].max() > 1e-3
    )
    # and the model itself is left alone
    assert all(torch.equal(p, biases[n]) for n, p in model.named_parameters() if n.endswith("bias"))


def test_conservation_rows():
    results = explain_all(zero_bias_copy(_model()), _inputs(), 2, composites=["epsilon"])
    table = conservation(results)
    assert list(table.columns) == ["composite", "batchnorm", "logit", "relevance", "max_deviation"]
    assert list(table["batchnorm"]) == list(BATCHNORM_MODES)
    explanation = results[("epsilon", "canonize")]
    logit = explanation.logits[:, 2].mean()
    assert table.loc[0, "logit"] == pytest.approx(float(logit), rel=1e-6)


def test_mode_agreement_is_one_for_equal_maps_and_names_the_modes():
    results = explain_all(_model(), _inputs(), 0, composites=["epsilon_plus", "alpha1_beta0"])
    table = mode_agreement(results)
    assert list(table.columns) == ["gradient", "pass"] and list(table.index) == ["epsilon_plus", "alpha1_beta0"]
    assert ((table > -1 - 1e-9) & (table < 1 + 1e-9)).all().all()
    same = {
        ("a", "canonize"): results[("epsilon_plus", "canonize")],
        ("a", "pass"): results[("epsilon_plus", "canonize")],
    }
    assert mode_agreement(same).loc["a", "pass"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference mode"):
        mode_agreement(results, reference="fold")


def test_plots_fit_the_page():
    maps = {
        "net": {(c, m): torch.randn(28, 28) for c in ("epsilon", "alpha1_beta0") for m in BATCHNORM_MODES},
        "other": {(c, m): torch.randn(28, 28) for c in ("epsilon", "alpha1_beta0") for m in BATCHNORM_MODES},
    }
    shift = plot_shift_maps(
        torch.rand(2, 56, 56), {"before": torch.randn(2, 56, 56), "after": torch.randn(2, 56, 56)}, 2, [0, 3]
    )
    for figure in (plot_composite_maps(maps, ["epsilon", "alpha1_beta0"], BATCHNORM_MODES), shift):
        assert figure.get_size_inches()[0] <= PAGE_WIDTH_IN + 1e-6
        texts = [
            t for t in figure.findobj(lambda a: hasattr(a, "get_fontsize")) if getattr(t, "get_text", lambda: "")()
        ]
        assert texts and min(t.get_fontsize() for t in texts) >= MIN_FONT_PT
        plt.close(figure)
    with pytest.raises(ValueError, match="lack"):
        plot_composite_maps(maps, ["epsilon", "lrp_z"], BATCHNORM_MODES)
    with pytest.raises(ValueError, match="same grids"):
        plot_shift_maps(torch.rand(2, 56, 56), {"before": torch.randn(3, 56, 56)}, 2, [0, 3])
