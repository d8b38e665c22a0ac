"""The guidance study's selection and findings (attrlab.guidance.study) on hand-made rows."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attrlab.guidance.study import (
    BASELINE_EPOCHS,
    FINETUNE_LR,
    SETUPS,
    TRAIN_COUNT,
    Point,
    baseline_path,
    baselines,
    check_findings,
    configuration_fronts,
    macro_f1,
    pareto_front,
    shown_model,
    spurious_table,
)


def test_pareto_front_keeps_the_non_dominated_rows():
    rows = pd.DataFrame(
        {"f1": [80, 70, 79, 60, 80], "epg": [50, 70, 50, 60, 40], "iou": [30, 30, 31, 20, 30], "tag": list("abcde")}
    )
    front = pareto_front(rows)
    # d is dominated by b (70 >= 60, 70 >= 60, 30 >= 20); e by a; c is not dominated (best IoU)
    assert sorted(front["tag"]) == ["a", "b", "c"]
    assert list(pareto_front(rows, ("f1",))["tag"]) == ["a", "e"]  # ties on every metric dominate nobody


def test_shown_model_is_the_highest_epg_within_five_f1_points():
    front = pd.DataFrame({"f1": [80.0, 76.0, 70.0], "epg": [50.0, 60.0, 90.0]})
    assert shown_model(front, baseline_f1=80.0)["epg"] == 60.0
    assert shown_model(front, baseline_f1=95.0)["f1"] == 80.0  # none within: the best F1


def test_macro_f1():
    labels = torch.tensor([0, 0, 1, 1])
    assert macro_f1(labels, labels, 2) == 100.0
    predictions = torch.tensor([0, 1, 1, 1])
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 0 -> 4/5
    assert macro_f1(predictions, labels, 3) == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)


def test_point_validates_its_choices():
    assert Point(loss="energy", lam_index=2, annotated=0.01).lam > Point(loss="energy", lam_index=2).lam
    with pytest.raises(ValueError, match="unknown setup"):
        Point(setup="bcos@nowhere")
    with pytest.raises(ValueError, match="unknown loss"):
        Point(loss="dice")
    with pytest.raises(ValueError, match="annotated must be one of"):
        Point(annotated=0.5)
    with pytest.raises(ValueError, match="unknown mask"):
        Point(mask="edges")
    with pytest.raises(ValueError, match="lr must be a number >= 0"):
        Point(lr=-1.0)


def test_point_fine_tunes_at_its_models_rate_and_baselines_are_named_by_their_recipe(tmp_path):
    assert Point(setup="bcos@input").lr == FINETUNE_LR["bcos"] == 1e-4
    assert Point(setup="xdnn-ig@mid").lr == FINETUNE_LR["bcos_relu_twin_xdnn"]
    assert Point(setup="bcos@input", lr=3e-4).lr == 3e-4
    path = baseline_path(Point(setup="xdnn-ig@final"), tmp_path, 0)
    assert (
        path.name
        == f"bcos_relu_twin_xdnn-canvas-seed0-e{BASELINE_EPOCHS['bcos_relu_twin_xdnn']}-lr0.003-n{TRAIN_COUNT}"
    )
    assert SETUPS["xdnn-ig@mid"] == ("bcos_relu_twin_xdnn", "ig_xdnn", "relu4")


def _rows() -> pd.DataFrame:
    """A made-up study: Energy best in EPG, L1 best in IoU, on two setups."""
    base = {"dataset": "canvas", "annotated": 1.0, "dilation": 0.0, "mask": "box", "lam": 1.0}
    rows = []
    for setup, (f1, epg, iou) in {"bcos@input": (80, 50, 30), "vanilla-ixg@input": (78, 40, 25)}.items():
        for loss, (d_epg, d_iou) in {"energy": (20, 2), "l1": (10, 8), "rrr": (5, 1)}.items():
            rows.append(
                {
                    **base,
                    "setup": setup,
                    "loss": loss,
                    "step": 0,
                    "f1": f1,
                    "epg": epg,
                    "iou": iou,
                    "epg_input": epg,
                    "iou_input": iou,
                    "acc": f1,
                    "on_object": 50.0,
                }
            )
            rows.append(
                {
                    **base,
                    "setup": setup,
                    "loss": loss,
                    "step": 4,
                    "f1": f1 - 2,
                    "epg": epg + d_epg,
                    "iou": iou + d_iou,
                    "epg_input": epg + d_epg,
                    "iou_input": iou + d_iou,
                    "acc": f1,
                    "on_object": 60.0 if loss == "energy" else 55.0,
                }
            )
            rows.append(
                {
                    **base,
                    "setup": setup,
                    "loss": loss,
                    "step": 8,
                    "f1": f1 - 10,
                    "epg": epg + 2 * d_epg,
                    "iou": iou + 2 * d_iou,
                    "epg_input": epg,
                    "iou_input": iou,
                    "acc": f1,
                    "on_object": 50.0,
                }
            )
    return pd.DataFrame(rows)


def test_findings_are_computed_and_missing_regimes_are_not_run():
    rows = _rows()
    findings = check_findings(rows).set_index("finding")
    assert list(findings.index) == [f"R{i}" for i in range(1, 10)]
    assert findings.loc["R1", "here"] == "holds" and findings.loc["R2", "here"] == "holds"
    assert findings.loc["R3", "here"] == "holds"  # energy 60 % on the digit, L1 55 %
    assert findings.loc["R4", "here"] == "holds"  # B-cos 70 vs conventional 60
    assert findings.loc["R6", "here"] == "does not hold"  # every guided row loses F1
    for code in ("R5", "R7", "R8", "R9"):
        assert findings.loc[code, "here"] == "not run"
    worse = rows.copy()
    worse.loc[(worse["loss"] == "rrr") & (worse["step"] == 4), "epg"] = 99.0
    assert check_findings(worse).set_index("finding").loc["R1", "here"] == "does not hold"
    # an X-DNN at the input with a better Energy EPG than B-cos's makes R4 fail, and it is named in the evidence
    xdnn = rows[rows["setup"] == "vanilla-ixg@input"].assign(setup="xdnn-ig@input")
    xdnn.loc[xdnn["step"] == 4, "epg"] = 95.0
    r4 = check_findings(pd.concat([rows, xdnn], ignore_index=True)).set_index("finding").loc["R4"]
    assert r4["here"] == "does not hold" and "X-DNN IntGrad 95.0" in r4["evidence"]


def test_fronts_and_baselines_and_an_empty_spurious_table():
    rows = _rows()
    fronts = configuration_fronts(rows)
    assert (fronts["step"] > 0).all() and set(fronts["loss"]) == {"energy", "l1", "rrr"}
    assert baselines(rows).loc[("canvas", "bcos@input"), "f1"] == 80
    assert spurious_table(rows).empty
