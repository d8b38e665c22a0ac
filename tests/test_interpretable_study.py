"""The B-cos study's tables and claims (attrlab.interpretable.study) on small made-up result tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attrlab.interpretable import study


def _scores(medians: dict[str, float]) -> pd.DataFrame:
    """A score table whose per-method median is the given value (three cells each: m - 0.1, m, m + 0.2)."""
    rows = [(method, value + delta) for method, value in medians.items() for delta in (-0.1, 0.0, 0.2)]
    return pd.DataFrame(rows, columns=["method", "score"])


def _sweep(inherent: dict[float, float], accuracy: dict[float, float], twin_best: float = 0.2) -> pd.DataFrame:
    frames = []
    for b in inherent:
        scores = _scores({"S-IxG": 0.15, "S-IntGrad": 0.2, "Grad-CAM": 0.3, "S-B-cos": inherent[b]})
        frames.append(study.result_rows(study.model_name(b, True), b, True, accuracy[b], scores, 10, 20))
    scores = _scores({"S-IxG": 0.12, "S-IntGrad": twin_best, "Grad-CAM": 0.18})
    frames.append(study.result_rows(study.TWIN, math.nan, False, 0.95, scores, 10, 8))
    return pd.concat(frames, ignore_index=True)


def test_parse_models_reads_b_and_maxout_and_names_bad_entries():
    assert study.parse_models("1.5, 2,2.5m") == [(1.5, False), (2.0, False), (2.5, True)]
    assert study.model_name(2.0, True) == "bcos_b2_maxout" and study.model_name(1.25, False) == "bcos_b1.25"
    with pytest.raises(ValueError, match=r"unknown B '3'.*valid B: 1, 1.25"):
        study.parse_models("2,3")
    with pytest.raises(ValueError, match="unknown B 'x'"):
        study.parse_models("x")
    with pytest.raises(ValueError, match="twice"):
        study.parse_models("2m,2m")
    with pytest.raises(ValueError, match="no B given"):
        study.parse_models(" , ")


def test_result_rows_hold_medians_means_and_settings():
    rows = study.result_rows("bcos_b2", 2.0, False, 0.9, _scores({"S-B-cos": 0.5, "Grad-CAM": 0.3}), 7, 3)
    assert list(rows.columns) == list(study.RESULT_COLUMNS)
    assert rows.set_index("method")["median"].to_dict() == pytest.approx({"S-B-cos": 0.5, "Grad-CAM": 0.3})
    assert rows.set_index("method")["mean"]["S-B-cos"] == pytest.approx(0.5 + 0.1 / 3)
    assert set(rows["n_grids"]) == {7} and set(rows["epochs"]) == {3} and not rows["maxout"].any()


def test_collect_sweep_merges_points_and_averages_the_twin(tmp_path):
    sweep = _sweep({1.0: 0.3, 2.0: 0.5}, {1.0: 0.97, 2.0: 0.95})
    nets = sweep[sweep["model"] != study.TWIN]
    twin = sweep[sweep["model"] == study.TWIN]
    other_twin = twin.assign(median=twin["median"] + 0.1, accuracy=0.85)
    for index, (b, part) in enumerate(nets.groupby("b")):
        twin_rows = twin if index == 0 else other_twin
        study.write_results(pd.concat([part, twin_rows]), tmp_path / f"b_values-{b:g}m" / study.RESULT_FILE)
    collected = study.collect_sweep(tmp_path)
    assert set(collected["model"]) == {"bcos_b1_maxout", "bcos_b2_maxout", study.TWIN}
    twin_rows = collected[collected["model"] == study.TWIN].set_index("method")
    assert twin_rows["accuracy"].iloc[0] == pytest.approx(0.9)
    assert twin_rows.loc["S-IntGrad", "median"] == pytest.approx(0.25)
    assert twin_rows["n_grids"].iloc[0] == 20
    target = tmp_path / "table.csv"
    assert study.main([str(tmp_path), str(target)]) == 0
    pd.testing.assert_frame_equal(study.read_results(target), collected, check_dtype=False, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="has the sweep run"):
        study.collect_sweep(tmp_path / "empty")


def test_accuracy_table_has_table_6_1_layout():
    sweep = _sweep({1.0: 0.3, 2.0: 0.5}, {1.0: 0.97, 2.0: 0.95})
    plain = study.result_rows("bcos_b2", 2.0, False, 0.9, _scores({"S-B-cos": 0.6}), 10, 20)
    table = study.accuracy_table(pd.concat([sweep, plain]))
    assert table.loc["1", "MaxOut, digits here"] == 97.0 and table.loc["1", "MaxOut, thesis CIFAR10"] == 93.5
    assert table.loc["2", "plain, digits here"] == 90.0 and table.loc["2", "plain, thesis CIFAR10"] == 91.5
    assert math.isnan(table.loc["1.25", "MaxOut, digits here"])  # the thesis' row stays, ours is missing
    local = study.localisation_table(pd.concat([sweep, plain]))
    assert list(local.index) == [1.0, 2.0] and local.loc[2.0, "S-B-cos"] == pytest.approx(0.5)


def test_check_claims_hold_on_a_table_that_shows_them():
    sweep = _sweep({1.0: 0.35, 1.5: 0.4, 2.0: 0.5, 2.5: 0.6}, {1.0: 0.97, 1.5: 0.965, 2.0: 0.96, 2.5: 0.95})
    claims = study.check_claims(sweep)
    assert len(claims) == 4 and claims["holds"].tolist() == [True, True, True, True]
    assert "1: 0.350" in claims["measured"].iloc[0]


def test_check_claims_fail_on_a_table_that_contradicts_them():
    # localisation falls with B, the post-hoc Grad-CAM (0.3) beats the inherent maps at B = 1, accuracy drops 10 points
    sweep = _sweep({1.0: 0.25, 1.5: 0.4, 2.0: 0.35, 2.5: 0.31}, {1.0: 0.97, 1.5: 0.9, 2.0: 0.88, 2.5: 0.87}, 0.45)
    claims = study.check_claims(sweep).set_index("claim")["holds"]
    assert not any(claims.tolist())
    few = study.check_claims(_sweep({2.0: 0.5}, {2.0: 0.9}))
    assert few["holds"].iloc[0] is None and few["holds"].iloc[-1] is None


def test_plan_nets_lists_bcos_and_coda_nets_and_checks_them():
    plan = study.plan_nets("2,2.5m", "0.1, 10", temperature=1.0)
    assert [net.model for net in plan] == ["bcos_b2", "bcos_b2.5_maxout", "coda", "coda"]
    assert [net.temperature for net in plan] == [1.0, 1.0, 0.1, 10.0]
    assert [net.inherent for net in plan] == ["B-cos", "B-cos", "CoDA", "CoDA"]
    assert plan[1].label == "B = 2.5, MaxOut" and plan[3].label == "CoDA, T = 10"
    assert [net.model for net in study.plan_nets("", "1", 1.0)] == ["coda"]
    with pytest.raises(ValueError, match="no nets to train"):
        study.plan_nets("", "", 1.0)
    with pytest.raises(ValueError, match="temperature '-1'"):
        study.plan_nets("2", "-1", 1.0)
    with pytest.raises(ValueError, match="twice"):
        study.parse_temperatures("1,1.0")


def _coda(medians: dict[float, float], accuracy: dict[float, float]) -> pd.DataFrame:
    frames = []
    for t in medians:
        scores = _scores({"S-IxG": 0.15, "Grad-CAM": 0.3, "S-CoDA": medians[t]})
        frames.append(study.result_rows(study.CODA, math.nan, False, accuracy[t], scores, 10, 8, temperature=t))
    return pd.concat(frames, ignore_index=True)


def test_coda_claims_and_temperature_table():
    table = _coda({0.1: 0.3, 1.0: 0.4, 10.0: 0.6}, {0.1: 0.95, 1.0: 0.96, 10.0: 0.94})
    local = study.temperature_table(table)
    assert list(local.index) == [0.1, 1.0, 10.0] and local.loc[10.0, "S-CoDA"] == pytest.approx(0.6)
    claims = study.coda_claims(table)
    assert list(claims.columns) == list(study.CLAIM_COLUMNS)
    assert claims["holds"].tolist() == [True, True, False]  # at T = 0.1 Grad-CAM (0.3) ties the inherent maps
    falling = study.coda_claims(_coda({0.1: 0.6, 1.0: 0.5, 10.0: 0.4}, {0.1: 0.99, 1.0: 0.9, 10.0: 0.8}))
    assert falling["holds"].tolist() == [False, False, True]
    # B-cos tables and CoDA rows stay apart
    mixed = pd.concat([_sweep({1.0: 0.3, 2.0: 0.5, 2.5: 0.6}, {1.0: 0.97, 2.0: 0.95, 2.5: 0.94}), table])
    assert list(study.localisation_table(mixed).index) == [1.0, 2.0, 2.5]
    assert (
        study.check_claims(mixed)["holds"].tolist()
        == study.check_claims(mixed[mixed["model"] != "coda"])["holds"].tolist()
    )
    with pytest.raises(ValueError, match="no 'coda' nets"):
        study.temperature_table(_sweep({2.0: 0.5}, {2.0: 0.9}))


def test_claims_of_a_table_without_bcos_nets_are_undecided():
    claims = study.check_claims(_coda({1.0: 0.5}, {1.0: 0.9}))
    assert claims["holds"].isna().all()


def test_alignment_claim():
    assert study.alignment_claim([0.99, 0.98, 0.97])["holds"].item() is True
    assert study.alignment_claim([0.99, 0.5, 0.97])["holds"].item() is False


def test_removal_curves_follow_pixel_flipping_in_both_orders():
    from attrlab.quality import pixel_flipping

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).eval()
    x = torch.randn(8, 1, 6, 6)
    y = model(x).argmax(1)
    with torch.no_grad():  # the exact contributions of the linear model to the target logit
        contributions = (model[1].weight[y] * x.flatten(1)).view_as(x)
    noise = torch.randn_like(x)
    curves = {
        order: study.removal_curves(model, x, y, {"exact": contributions, "noise": noise}, order, step=4, limit=0.5)
        for order in study.REMOVAL_ORDERS
    }
    for order, table in curves.items():
        assert list(table.columns) == ["method", "order", "fraction", "probability"]
        exact = table[table["method"] == "exact"]
        assert exact["fraction"].tolist() == pytest.approx([0, 4 / 36, 8 / 36, 12 / 36, 16 / 36])
        with torch.no_grad():
            start = float(model(x).softmax(1).gather(1, y[:, None]).mean())
        assert exact["probability"].iloc[0] == pytest.approx(start)
        signed = -contributions if order == "lerf" else contributions
        expected = pixel_flipping(model, x, y, signed, features_in_step=4, baseline=0.0, normalise="none").mean(0)
        assert exact["probability"].iloc[1:].tolist() == pytest.approx(expected[:4].tolist())
    # removing the most relevant pixels first hurts more than removing them by a random map; the least, less
    morf = curves["morf"].groupby("method")["probability"].mean()
    lerf = curves["lerf"].groupby("method")["probability"].mean()
    assert morf["exact"] < morf["noise"] and lerf["exact"] > lerf["noise"]
    with pytest.raises(ValueError, match="unknown removal order"):
        study.removal_curves(model, x, y, {"exact": contributions}, "random")


def test_removal_claims_compare_the_inherent_curve_with_the_post_hoc_ones():
    rows = []
    for method, lerf, morf in (("B-cos", 0.9, 0.3), ("IxG", 0.8, 0.5), ("Grad-CAM", 0.85, 0.2)):
        rows += [(method, "lerf", f, lerf) for f in (0.0, 0.1)] + [(method, "morf", f, morf) for f in (0.0, 0.1)]
    curves = pd.DataFrame(rows, columns=["method", "order", "fraction", "probability"])
    claims = study.removal_claims(curves, "B-cos")
    assert list(claims.columns) == list(study.CLAIM_COLUMNS)
    assert claims["holds"].tolist() == [True, False]  # Grad-CAM's MoRF curve falls lower


def test_convergence_measures_the_approach_to_the_final_maps():
    final = torch.randn(4, 5, 5)
    start = torch.randn(4, 5, 5)
    weights = [0.0, 0.5, 0.9, 0.2, 1.0, 1.0]  # a dip at step 40: converged only from step 50 on
    maps = torch.stack([(1 - w) * start + w * final for w in weights])
    frame = study.convergence([10, 20, 30, 40, 50, 60], maps.numpy())
    assert frame["similarity"].iloc[-1] == pytest.approx(1.0)
    cosine = torch.nn.functional.cosine_similarity(start.flatten(1), final.flatten(1), dim=1).mean()
    assert frame["similarity"].iloc[0] == pytest.approx(float(cosine))
    assert study.convergence_step(frame, level=0.99) == 50
    assert study.convergence_step(frame, level=-1.0) == 10
    late = study.convergence([10, 20, 30, 40, 50, 60], torch.stack([start] * 5 + [final]).numpy())
    claim = study.convergence_claim(frame, late, level=0.99)
    assert claim["holds"].item() is True and "B-cos at 83%, LRP at 100%" in claim["measured"].item()
    assert study.convergence_claim(late, frame, level=0.99)["holds"].item() is False
    with pytest.raises(ValueError, match="maps hold 6 steps"):
        study.convergence([1, 2], maps.numpy())


def test_bias_share_table_and_claims_follow_the_shares():
    shares = {
        "BatchNorm": [0.9, 0.7, 0.6, float("nan")],  # the NaN (a tie) is dropped
        "InstanceNorm": [0.8, 0.6, 0.55],
        "LayerNorm": [0.1, -0.1, 0.0],
        "PositionNorm": [-0.3, 0.1, -0.2],
        "AllNorm": [0.2, 0.3, 0.1],
        "bias-free": [0.0, 0.0, 0.0],
    }
    frame = study.bias_share_frame(shares)
    assert len(frame) == 18 and list(dict.fromkeys(frame["net"])) == list(shares)
    table = study.bias_share_table(frame)
    assert table.loc["BatchNorm", "median"] == pytest.approx(0.7)
    assert table.loc["BatchNorm", "share >= 0.5"] == pytest.approx(1.0)
    assert table.loc["PositionNorm", "mean"] == pytest.approx(-0.4 / 3)
    biased = {kind: label for kind, label in zip(study.NORM_LABELS, study.NORM_LABELS.values())}
    claims = study.bias_claims(table, biased, "bias-free")
    assert list(claims.columns) == list(study.CLAIM_COLUMNS)
    assert claims["holds"].tolist() == [True, True, True, True]
    # the opposite shares contradict every claim
    flipped = study.bias_share_table(
        study.bias_share_frame(
            {
                "BatchNorm": [0.1],
                "InstanceNorm": [0.9],
                "LayerNorm": [0.9],
                "PositionNorm": [0.2],
                "bias-free": [0.0, 1e-9],
            }
        )
    )
    assert study.bias_claims(flipped, biased, "bias-free")["holds"].tolist() == [False, False, False, False]
    # a missing net leaves its claim undecided
    assert study.bias_claims(table.drop("InstanceNorm"), biased, "none")["holds"].tolist() == [None, True, True, None]
