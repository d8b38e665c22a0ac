"""The guided teacher on the spurious set and its students (attrlab.distill.spurious), and the seed sweep's tables
(attrlab.distill.study: writing, collecting, means and spreads, claims over seeds)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from attrlab.canvas import group_accuracy
from attrlab.distill import TrainingExplanation, study
from attrlab.distill.spurious import (
    ROLE_LABELS,
    ROLES,
    SPURIOUS_COLUMNS,
    Guidance,
    SpuriousSetup,
    check_spurious_claims,
    main,
    read_setup,
    read_spurious,
    spurious_data,
    spurious_layout,
    spurious_scores,
    spurious_study,
    write_spurious,
)
from attrlab.guidance.metrics import energy_pointing_game
from attrlab.models import build_model

TINY = dict(train_count=100, test_count=40, teacher_epochs=1, steps=2, batch_size=25)


def test_settings_are_checked_with_clear_errors():
    with pytest.raises(ValueError, match="unknown localisation loss 'nope'; valid choices: energy"):
        Guidance(loss="nope")
    with pytest.raises(ValueError, match="unknown mask 'outside'; valid choices: box, pixels"):
        Guidance(mask="outside")
    with pytest.raises(ValueError, match="lam must be a positive number, got 0"):
        Guidance(lam=0)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        SpuriousSetup(steps=0)
    with pytest.raises(ValueError, match="explanation must be 'method@layer'"):
        SpuriousSetup(explanation="ixg")
    with pytest.raises(ValueError, match="unknown explanation method 'lrp'"):
        SpuriousSetup(explanation="lrp@input")
    assert SpuriousSetup().training_explanation == TrainingExplanation("ixg", "input")


def test_scores_match_their_definitions():
    setup = SpuriousSetup(**TINY)
    data = spurious_data(setup)
    test = data.test
    model = build_model("shallow", data.input_shape, data.num_classes, seed=1).eval()
    other = build_model("shallow", data.input_shape, data.num_classes, seed=2).eval()
    explanation = TrainingExplanation("ixg", "input")
    scores = spurious_scores(model, test, explanation, teacher=other, batch_size=16)
    with torch.no_grad():
        predicted, reference = model(test.x).argmax(1), other(test.x).argmax(1)
    for key, value in group_accuracy(predicted, test).items():
        assert scores[key] == pytest.approx(value)
    unseen = (test.group == 1) | (test.group == 2)
    assert scores["unseen"] == pytest.approx(100 * (predicted == test.y)[unseen].float().mean().item())
    assert scores["unseen_agreement"] == pytest.approx(100 * (predicted == reference)[unseen].float().mean().item())
    maps = explanation(model, test.x, test.y).detach()
    expected = 100 * energy_pointing_game(maps, test.class_masks(test.y, "box")).nanmean().item()
    assert scores["epg"] == pytest.approx(expected, rel=1e-5)
    assert spurious_scores(model, test, explanation, teacher=model)["unseen_agreement"] == 100.0
    assert math.isnan(spurious_scores(model, test, explanation)["unseen_agreement"])


def test_study_runs_resumes_and_refuses_another_setup(tmp_path):
    setup = SpuriousSetup(**TINY)
    first = spurious_study(tmp_path / "seed0", setup)
    assert list(first.columns) == list(SPURIOUS_COLUMNS) and list(first["role"]) == list(ROLES)
    assert first[["worst", "overall", "epg"]].notna().all().all()
    assert (first.loc[first["role"] == "guided teacher", "unseen_agreement"] == 100.0).all()
    again = spurious_study(tmp_path / "seed0", setup)  # every run is finished: reopened and re-scored
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(ValueError, match="holds runs of another setup"):
        spurious_study(tmp_path / "seed0", SpuriousSetup(**{**TINY, "steps": 3}))


def _rows(seed: int, worst: dict[str, float], epg: dict[str, float]) -> list[dict[str, float]]:
    rows = []
    for role in ROLES:
        row = {column: 50.0 for column in SPURIOUS_COLUMNS[2:]}
        row.update(seed=seed, role=role, worst=worst[role], epg=epg[role], unseen_agreement=worst[role] + 1)
        rows.append(row)
    return rows


def test_claims_layout_and_table_round_trip(tmp_path):
    worst0 = {"teacher": 0.0, "guided teacher": 40.0, "baseline": 0.0, "kd": 5.0, "e2kd": 25.0}
    epg0 = {"teacher": 30.0, "guided teacher": 60.0, "baseline": 30.0, "kd": 35.0, "e2kd": 50.0}
    worst1 = {**worst0, "e2kd": 1.0}  # seed 1: e²KD below KD on the worst group
    table = pd.DataFrame(_rows(0, worst0, epg0) + _rows(1, worst1, epg0))
    claims = check_spurious_claims(table).set_index("claim")
    assert len(claims) == 6
    guided = claims.loc["model guidance raises the teacher's worst-group accuracy"]
    assert guided["ours"] == 40.0 and guided["holds"] and guided["seeds holding"] == "2 of 2"
    e2kd = claims.loc["e²KD students are more accurate than KD students on the worst group"]
    assert e2kd["ours"] == pytest.approx((25.0 + 1.0) / 2 - 5.0) and e2kd["seeds holding"] == "1 of 2"
    both = claims.iloc[-1]
    assert both["ours"] == pytest.approx(min(8.0, 15.0)) and both["holds"] and both["seeds holding"] == "1 of 2"

    layout = spurious_layout(table)
    assert list(layout.index) == [ROLE_LABELS[role] for role in ROLES]
    assert layout.loc["Student, + e²KD", "worst group"] == f"13.0 ± {pd.Series([25.0, 1.0]).std():.1f}"
    assert spurious_layout(table[table["seed"] == 0]).loc["Student, KD", "EPG"] == "35.0"

    path = tmp_path / "deep" / "spurious.csv"
    write_spurious(table, path)
    pd.testing.assert_frame_equal(read_spurious(path), table[list(SPURIOUS_COLUMNS)], check_dtype=False)
    with pytest.raises(ValueError, match="rows lack the columns"):
        write_spurious(table.drop(columns="epg"), path)
    with pytest.raises(FileNotFoundError, match="no spurious-set table"):
        read_spurious(tmp_path / "missing.csv")


def test_command_line_writes_the_table(tmp_path, capsys):
    table = tmp_path / "spurious.csv"
    argv = [str(tmp_path / "runs"), str(table), "--seeds", "0", "--teacher-epochs", "1", "--steps", "2"]
    assert main([*argv, "--train-count", "60"]) == 0
    frame = read_spurious(table)
    assert list(frame["role"]) == list(ROLES) and set(frame["seed"]) == {0}
    assert read_setup(table) == SpuriousSetup(train_count=60, teacher_epochs=1, steps=2)
    assert main([*argv, "--seeds", "x"]) == 2
    assert "error:" in capsys.readouterr().err


def _result_rows(seed: int, shift: float) -> pd.DataFrame:
    rows = []
    for data, shots in (("5 shots", 5), ("full", None)):
        for method, base in (("kd", 50.0), ("e2kd", 52.0)):
            rows.append(
                {
                    "teacher": "vgg_small",
                    "seed": seed,
                    "steps": 120,
                    "data": data,
                    "shots": shots,
                    "method": method,
                    "accuracy": base + shift,
                    "agreement": base + 2 * shift,
                    "similarity": 80.0 + shift,
                    "teacher_accuracy": 90.0,
                    "run": "x",
                }
            )
    return pd.DataFrame(rows)


def test_seed_sweep_tables_are_collected_and_summarised(tmp_path):
    for seed, shift in ((0, 0.0), (1, 4.0), (2, -6.0)):
        study.write_results(_result_rows(seed, shift), tmp_path / f"seed-{seed}" / study.RESULT_FILE)
    (tmp_path / "seed-3").mkdir()  # a point that has not finished: no table, left out
    rows = study.collect_sweep(tmp_path)
    assert list(rows.columns) == list(study.RESULT_COLUMNS) and sorted(set(rows["seed"])) == [0, 1, 2]
    summary = study.seed_summary(rows).set_index(["teacher", "data", "method"])
    cell = summary.loc[("vgg_small", "5 shots", "e2kd")]
    assert cell["seeds"] == 3
    assert cell["accuracy_mean"] == pytest.approx(52.0 - 2 / 3)
    assert cell["accuracy_std"] == pytest.approx(pd.Series([0.0, 4.0, -6.0]).std())
    wide = study.spread_layout(study.seed_summary(rows))
    assert list(wide.index) == ["KD", "+ e²KD"]
    assert wide.loc["+ e²KD", ("5 shots", "accuracy")] == f"{52 - 2 / 3:.1f} ± {cell['accuracy_std']:.1f}"
    claims = study.claims_over_seeds(rows).set_index("claim")
    few = claims.loc["e²KD raises the student's accuracy over KD with few data (5 shots)"]
    assert few["holds"] and few["ours"] == pytest.approx(2.0) and few["seeds holding"] == "3 of 3"
    assert study.main([str(tmp_path), str(tmp_path / "all.csv")]) == 0
    pd.testing.assert_frame_equal(study.read_results(tmp_path / "all.csv"), rows, check_dtype=False)
    assert study.main([str(tmp_path / "seed-3"), str(tmp_path / "none.csv")]) == 2
    with pytest.raises(ValueError, match="result rows lack the columns"):
        study.write_results(_result_rows(0, 0.0).drop(columns="seed"), tmp_path / "bad.csv")


def test_spurious_plot_draws_a_panel_per_score():
    from attrlab.plots.distill import SPURIOUS_PANELS, spurious_scores_plot

    worst = {"teacher": 0.0, "guided teacher": 40.0, "baseline": 0.0, "kd": 5.0, "e2kd": 25.0}
    table = pd.DataFrame(_rows(0, worst, worst) + _rows(1, worst, worst))
    fig = spurious_scores_plot(table, ROLES, {role: role for role in ROLES})
    assert len(fig.axes) == len(SPURIOUS_PANELS)
    assert [bar.get_height() for bar in fig.axes[0].patches] == [worst[role] for role in ROLES]
    with pytest.raises(ValueError, match="lacks the score columns"):
        spurious_scores_plot(table.drop(columns="epg"), ROLES, {role: role for role in ROLES})
