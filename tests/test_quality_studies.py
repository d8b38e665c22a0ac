"""The analyses of the quality studies: marginal curves, Pareto front, best/worst, the claims of Pahde et al. (2023)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attrlab.quality.canonization import check_canonization_claims, claims_by_model, summarise_study, table_one
from attrlab.quality.gamma import GAMMAS, GROUPS, gamma_grid
from attrlab.quality.search_analysis import (
    best_and_worst,
    check_search_claims,
    complete_grid,
    group_effects,
    largest_complete_grid,
    marginal_curves,
    pareto_front,
)


def synthetic_search(shift_faithfulness: bool = True) -> pd.DataFrame:
    """A full grid whose metrics are known functions of the gammas."""
    rows = [c.as_row() for c in gamma_grid()]
    table = pd.DataFrame(rows)
    log = {g: np.log1p(table[g]) for g in GROUPS}
    table["avg_sensitivity"] = 1.0 - 0.2 * log["low"] - 0.01 * log["head"]  # lower is better: falls with low gamma
    table["random_logit"] = 0.5 - 0.1 * log["head"] - 0.01 * log["low"]  # mostly the head
    optimum = np.where(table.canonized & shift_faithfulness, 10.0, 50.0)
    table["aopc"] = -((table["low"] - optimum) ** 2) / 1000 + 0.001 * log["middle"]
    table["sparseness"] = 0.5 + 0.05 * log["low"] + 0.01 * log["high"]
    return table


def test_marginal_curves_average_over_the_other_groups():
    table = synthetic_search()
    curves = marginal_curves(table, ["sparseness"])
    assert len(curves) == len(GROUPS) * 7 * 2
    one = curves[(curves.group == "low") & (curves.gamma == 10.0) & curves.canonized]
    expected = table[(table["low"] == 10.0) & table.canonized]["sparseness"].mean()
    assert one["value"].item() == pytest.approx(expected)
    effects = group_effects(table, ["sparseness"])
    assert (effects.idxmax(axis=1) == "low").all()


def test_complete_grids():
    table = synthetic_search()
    full, gammas = largest_complete_grid(table)
    assert len(full) == 4802 and len(gammas) == 7
    missing = table[~((table["low"] == 0.1) & (table["head"] == 10.0))]
    coarse, gammas = largest_complete_grid(missing)
    assert gammas == (0.0, 0.25, 1.0, 50.0) and len(coarse) == 4**4 * 2
    assert complete_grid(missing, GAMMAS) is None
    assert largest_complete_grid(missing[missing["low"] != 0.0]) is None


def test_pareto_front_by_brute_force():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"rra": rng.random(300), "avg_sensitivity": rng.random(300), "canonized": True})
    front = pareto_front(table, ["rra", "avg_sensitivity"])
    for i in range(len(table)):  # rra higher is better, sensitivity lower is better
        better = (table.rra >= table.rra[i]) & (table.avg_sensitivity <= table.avg_sensitivity[i])
        strictly = (table.rra > table.rra[i]) | (table.avg_sensitivity < table.avg_sensitivity[i])
        assert front[i] == (not (better & strictly).any())
    assert front.sum() >= 1


def test_best_and_worst_follow_the_metric_direction():
    table = synthetic_search()
    bw = best_and_worst(table, ["avg_sensitivity", "sparseness"]).set_index(["metric", "which"])
    assert bw.loc[("avg_sensitivity", "best"), "low"] == 50.0
    assert bw.loc[("avg_sensitivity", "worst"), "low"] == 0.0
    assert bw.loc[("sparseness", "best"), "value"] == table.sparseness.max()


def test_search_claims_hold_on_a_table_built_to_satisfy_them_and_fail_otherwise():
    claims = check_search_claims(synthetic_search()).set_index("claim")
    assert claims["holds"].all(), claims
    assert len(claims) == 4
    unshifted = check_search_claims(synthetic_search(shift_faithfulness=False))
    assert not unshifted.loc[unshifted.claim.str.startswith("(3)"), "holds"].item()
    flipped = synthetic_search()
    flipped["avg_sensitivity"] = 1.0 - 0.2 * np.log1p(flipped["head"]) + 0.01 * np.log1p(flipped["low"])
    claims = check_search_claims(flipped)
    assert not claims.loc[claims.claim.str.startswith("(1)"), "holds"].item()
    assert not claims.loc[claims.claim.str.startswith("(4)"), "holds"].item()


def synthetic_scores(effect: float) -> pd.DataFrame:
    """Per-image scores where canonization adds ``effect`` to every metric."""
    rng = np.random.default_rng(1)
    frames = []
    for model in ("vgg_small_bn", "densenet_small"):
        for method in ("EB", "LRP-ε+"):
            for metric in ("sparseness", "aopc", "rra", "random_logit"):
                base = rng.random(20)
                for canonized in (False, True):
                    frames.append(
                        pd.DataFrame(
                            {
                                "model": model,
                                "method": method,
                                "canonized": canonized,
                                "metric": metric,
                                "image": np.arange(20),
                                "value": base + (effect if canonized else 0.0),
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def test_summary_intervals_and_claims():
    summary = summarise_study(synthetic_scores(0.1), n_resamples=200)
    assert np.allclose(summary["diff"], 0.1) and np.allclose(summary.diff_low, 0.1)
    assert (summary.orig_low <= summary.orig).all() and (summary.orig <= summary.orig_high).all()
    assert summary.loc[summary.metric == "random_logit", "improves"].eq(False).all()  # lower is better
    claims = check_canonization_claims(summary).set_index("claim")
    holds = claims["holds"].to_dict()
    assert holds["(1) canonization mostly improves complexity"]
    assert holds["(4) Random Logit scores rise (worse) with canonization"]
    assert not holds["(5) DenseNet maps get less sparse when canonized"]
    worse = check_canonization_claims(summarise_study(synthetic_scores(-0.1), n_resamples=200)).set_index("claim")
    assert not worse.loc["(3) canonization mostly improves localisation", "holds"]
    assert worse.loc["(5) DenseNet maps get less sparse when canonized", "holds"]
    table = table_one(summary)
    assert table.loc[("vgg_small_bn", "EB"), "aopc"].count("/") == 1


def with_statistics(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh BatchNorms are identities: give them statistics to canonize."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            size = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(size, generator=generator))
            module.bias.data.copy_(0.2 * torch.randn(size, generator=generator))
    return model


def test_canonization_study_runs_every_combination():
    from attrlab.models import build_model
    from attrlab.quality.battery import BatterySettings
    from attrlab.quality.canonization import STUDY_METHODS, run_canonization_study
    from attrlab.quality.setup import image_set

    model = with_statistics(build_model("vgg_small_bn", input_shape=(1, 64, 64), seed=0).eval())
    images = image_set(3)
    settings = BatterySettings.scaled(64)
    scores = run_canonization_study({"vgg_small_bn": model}, images, settings, metrics=("sparseness", "rma"))
    assert len(scores) == len(STUDY_METHODS) * 2 * 2 * 3
    wide = scores.pivot_table(index=["metric", "image"], columns=["method", "canonized"], values="value")
    assert not np.allclose(wide[("EB", True)], wide[("LRP-ε+", True)])  # the 1x1 head gets epsilon in LRP-ε+
    assert not np.allclose(wide[("LRP-ε+", True)], wide[("LRP-ε+", False)])  # canonizing changes the maps
    with pytest.raises(ValueError, match="unknown methods"):
        run_canonization_study({"vgg_small_bn": model}, images, settings, methods=("LRP-z",))


def test_claims_per_model_test_densenet_sparseness_on_the_densenet_only():
    summary = summarise_study(synthetic_scores(-0.1), n_resamples=200)
    claims = check_canonization_claims(summary, by_model=True).set_index(["model", "claim"])
    sparse = "(5) DenseNet maps get less sparse when canonized"
    assert claims.loc[("densenet_small", sparse), "holds"]
    assert claims.loc[("vgg_small_bn", sparse), "holds"] is None
    assert not claims.loc[("vgg_small_bn", "(2) canonization mostly improves faithfulness"), "holds"]
    assert claims.loc[("densenet_small", "(2) canonization mostly improves faithfulness"), "measured"] == (
        "better in 0 of 2 cells"
    )
    table = claims_by_model(summary, models=["vgg_small_bn", "densenet_small"])
    assert list(table.columns) == ["vgg_small_bn", "densenet_small", "all models"]
    assert table.loc["(1) canonization mostly improves complexity", "all models"].endswith("(better in 0 of 4 cells)")
    assert table.loc[sparse, "vgg_small_bn"] == "not tested"
    assert table.loc[sparse, "densenet_small"] == "holds (sparseness lower in 2 of 2 methods)"


@pytest.mark.parametrize("name", ["resnet_small", "densenet_small"])
def test_canonization_study_on_residual_and_dense_models(name):
    from attrlab.models import build_model
    from attrlab.quality.battery import BatterySettings
    from attrlab.quality.canonization import run_canonization_study, study_dense_layers
    from attrlab.quality.setup import image_set

    model = with_statistics(build_model(name, input_shape=(1, 64, 64), seed=0).eval())
    assert study_dense_layers(name, model) == {"resnet_small": ("fc",), "densenet_small": ("classifier",)}[name]
    images = image_set(2)
    scores = run_canonization_study({name: model}, images, BatterySettings.scaled(64), metrics=("sparseness", "rma"))
    wide = scores.pivot_table(index=["metric", "image"], columns=["method", "canonized"], values="value")
    assert np.isfinite(wide.to_numpy()).all()
    for method in ("EB", "LRP-α2β1", "LRP-ε+"):  # canonizing the blocks' BatchNorms changes the maps
        assert not np.allclose(wide[(method, True)], wide[(method, False)])
    assert not np.allclose(wide[("EB", True)], wide[("LRP-ε+", True)])  # the dense layer: epsilon, not z+
    assert not np.allclose(wide[("LRP-α2β1", True)], wide[("LRP-ε+", True)])  # the convolutions inside the blocks


def test_study_dense_layers():
    from torch import nn

    from attrlab.quality.canonization import study_dense_layers

    assert study_dense_layers("deep_bn", nn.Identity()) == ("fc1", "fc2")
    assert study_dense_layers("vgg_small_bn", nn.Identity()) == ("head1", "head2")
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        study_dense_layers("fully_convolutional", nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_stored_study_resumes_job_by_job_and_exports(tmp_path):
    import json

    from attrlab.models import build_model
    from attrlab.quality.canonization import run_canonization_study
    from attrlab.quality.setup import image_set
    from attrlab.quality.study_store import StudySetup, export_study, run_stored_study, stored_scores

    models = {
        name: with_statistics(build_model(name, input_shape=(1, 64, 64), seed=0).eval())
        for name in ("vgg_small_bn", "densenet_small")
    }
    setup = StudySetup(models=tuple(models), images=2, metrics=("sparseness", "rra"))
    first = run_stored_study(tmp_path, setup, {"densenet_small": models["densenet_small"]}, canonized=(True,))
    assert len(first.computed) == 3 and not first.skipped
    first = run_stored_study(tmp_path, setup, {"densenet_small": models["densenet_small"]})
    assert len(first.computed) == 3 and len(first.skipped) == 3
    with pytest.raises(ValueError, match="not complete"):
        export_study(tmp_path, tmp_path / "out", {"vgg_small_bn": 0.9, "densenet_small": 0.8})
    table, info = export_study(tmp_path, tmp_path / "part", {"densenet_small": 0.8}, partial=True)
    assert set(pd.read_csv(table).model) == {"densenet_small"}
    assert json.loads(info.read_text())["missing_models"] == ["vgg_small_bn"]
    second = run_stored_study(tmp_path, setup, models)
    assert len(second.computed) == 6 and len(second.skipped) == 6
    assert not run_stored_study(tmp_path, setup, models).computed  # nothing recomputed
    with pytest.raises(ValueError, match="cannot change"):
        run_stored_study(tmp_path, StudySetup(models=tuple(models), images=3), models)
    with pytest.raises(ValueError, match="unknown models"):
        StudySetup(models=("vgg_small_bn", "no_such_model"))
    stored = stored_scores(tmp_path).sort_values(["model", "method", "canonized", "metric", "image"])
    direct = run_canonization_study(models, image_set(2), setup.settings(), metrics=setup.metrics).sort_values(
        ["model", "method", "canonized", "metric", "image"]
    )
    assert np.allclose(stored["value"].to_numpy(), direct["value"].to_numpy())  # same numbers as in one process
    table, info = export_study(tmp_path, tmp_path / "out", {"vgg_small_bn": 0.9, "densenet_small": 0.8}, ["x"])
    summary = pd.read_csv(table)
    assert len(summary) == 2 * 3 * 2 and {"orig_low", "canon_high", "diff_low", "improves"} <= set(summary.columns)
    description = json.loads(info.read_text())
    assert description["accuracies"] == {"vgg_small_bn": 0.9, "densenet_small": 0.8}
    assert description["setup"]["images"] == 2 and description["wall_seconds"] > 0 < description["job_wall_seconds"]
    assert not list((tmp_path / "out").glob(".*tmp"))
