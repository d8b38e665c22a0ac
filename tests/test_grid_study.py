"""The grid study's protocol, tables and claims (attrlab.grids.study) on hand-made scores and maps."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from attrlab.attribution import METHODS
from attrlab.grids import ConfidentImages, GridResult, cell_masks, make_grids, study
from attrlab.grids.aggatt import bin_maps, bin_scores

LAYER_KEYS = ("input", "middle", "final")


# -------------------------------------------------------------------- protocol
def test_thesis_specs_cover_the_registry_with_the_protocols_settings():
    specs = {s.method: s for s in study.thesis_specs(ig_steps=7, rise_masks=11, seed=3, smooth_kernel=9)}
    assert set(specs) == set(study.THESIS_METHODS) & set(METHODS)
    assert specs["integrated_gradients"].settings == {"n_steps": 7}
    assert specs["rise"].settings == {"n_masks": 11, "seed": 3}
    assert specs["lrp"].settings == {"composite": "lrp_focus"} and specs["lrp"].label == "LRP"
    occlusion = specs["occlusion"]
    assert occlusion.settings == {"window": 4, "stride": 4}
    assert occlusion.layer_settings["final"] == {"window": 2, "stride": 1}
    assert {m for m, s in specs.items() if s.smoothing == (1, 9)} == set(study.SMOOTHED)
    assert all(s.smoothing == (1,) for m, s in specs.items() if m not in study.SMOOTHED)
    assert [s.method for s in study.thesis_specs(["rise", "gradient"])] == ["rise", "gradient"]


def test_grid_size_and_tracking_specs():
    specs = study.thesis_specs()
    chosen = study.grid_size_specs(specs)
    assert [s.method for s in chosen] == ["gradcam", "gradient", "input_x_gradient", "layercam", "lrp"]
    assert all(s.smoothing == (1,) for s in chosen)
    assert [s.label for s in study.tracking_specs()] == ["IxG", "Grad-CAM", "LRP"]
    sweep = study.smoothing_specs([1, 5, 9], ig_steps=4)
    assert [s.smoothing for s in sweep] == [(1, 5, 9)] * 2 and sweep[1].settings == {"n_steps": 4}


def test_labels_and_their_order():
    specs = study.thesis_specs(["input_x_gradient", "rise", "gradient"], smooth_kernel=5)
    labels = study.scored_labels(specs)
    assert labels == ["IxG", "RISE", "Grad", "S-IxG"]
    assert study.method_order(labels + ["new_method"]) == ["Grad", "IxG", "S-IxG", "RISE", "new_method"]
    assert study.aggatt_labels(["RISE", "lrp_b", "IxG", "LRP-a", "Occlusion"]) == ["IxG", "Occlusion", "LRP-a"]


# ---------------------------------------------------------------------- tables
def _medians(values: dict[tuple[str, str, str], float], default: float = 0.5) -> pd.Series:
    methods = ["Grad", "IxG", "IntGrad", "S-IxG", "Grad-CAM", "LRP"]
    index = pd.MultiIndex.from_product(
        [("gridpg", "dipart", "difull"), methods, LAYER_KEYS], names=["setting", "method", "layer"]
    )
    return pd.Series([values.get(key, default) for key in index], index=index, name="score")


def test_median_table_has_a_row_per_method_in_order_and_setting_layer_columns():
    medians = _medians({("dipart", "IxG", "middle"): 0.7})
    table = study.median_table(medians, ["LRP", "IxG", "absent"])
    assert list(table.index) == ["LRP", "IxG"]
    assert list(table.columns) == [(s, l) for s in ("gridpg", "dipart", "difull") for l in LAYER_KEYS]
    assert table.loc["IxG", ("dipart", "middle")] == 0.7


def test_grid_size_comparison_relates_each_grid_to_its_uniform_level():
    medians = pd.Series([0.5, 0.8], index=pd.MultiIndex.from_tuples([("IxG", "input"), ("LRP", "input")]))
    scores = pd.DataFrame({"method": ["IxG"] * 3, "layer": ["input"] * 3, "score": [0.1, 0.3, 0.9]})
    compare = study.grid_size_comparison(medians, scores)
    assert list(compare.index) == [("IxG", "input")]  # only pairs evaluated on both grid sizes
    row = compare.iloc[0]
    assert row["3x3"] == pytest.approx(0.3) and row["3x3 / uniform"] == pytest.approx(2.7)
    assert row["2x2 / uniform"] == pytest.approx(2.0)


def _smoothing(gains: dict[str, float]) -> pd.DataFrame:
    rows = []
    for model, gain in gains.items():
        rows += [
            {"model": model, "setting": "gridpg", "method": "IxG", "kernel_size": 1, "score": 0.4},
            {"model": model, "setting": "gridpg", "method": "S-IxG", "kernel_size": 15, "score": 0.4 + gain},
            {"model": model, "setting": "difull", "method": "S-IxG", "kernel_size": 15, "score": 0.0},
        ]
    return pd.DataFrame(rows)


def test_claims_hold_and_fail_as_their_tests_say():
    holding = _medians(
        {
            **{("difull", m, l): 0.95 for m in ("Grad", "IxG", "IntGrad", "LRP") for l in LAYER_KEYS},
            ("difull", "Grad-CAM", "final"): 0.3,
            ("gridpg", "Grad-CAM", "final"): 0.6,
            ("gridpg", "IxG", "input"): 0.3,
            ("gridpg", "IxG", "final"): 0.5,
            ("gridpg", "IntGrad", "input"): 0.3,
            ("gridpg", "IntGrad", "final"): 0.5,
        }
    )
    compare = pd.DataFrame({"2x2": [0.5, 0.6], "3x3": [0.3, 0.4]})
    claims = study.check_claims(holding, _smoothing({"vgg_small": 0.2, "vgg_small_bn": 0.0}), compare, margin=0.05)
    assert list(claims.columns) == ["claim (thesis ch. 4)", "test", "measured", "holds"]
    assert len(claims) == 6 and claims["holds"].all()
    assert claims.loc[0, "test"] == "lowest median over Grad, IxG, IntGrad, LRP x 3 layers >= 0.9"
    assert claims.loc[4, "measured"] == "without BN +0.200, with BN +0.000"

    failing = holding.copy()
    failing[("difull", "LRP", "middle")] = 0.85  # one backprop median below 0.9
    failing[("gridpg", "IxG", "final")] = 0.34  # an improvement of 0.04 < margin
    claims = study.check_claims(
        failing,
        _smoothing({"vgg_small": 0.2, "vgg_small_bn": 0.1}),
        pd.DataFrame({"2x2": [0.5, 0.6], "3x3": [0.3, 0.7]}),
        margin=0.05,
    )
    assert claims["holds"].tolist() == [False, True, False, True, False, False]
    assert claims.loc[0, "measured"] == "lowest: LRP middle = 0.850"
    assert claims.loc[5, "measured"] == "lower in 1 of 2"
    # a sweep without smoothing has no gain to report
    unsmoothed = _smoothing({"vgg_small": 0.0, "vgg_small_bn": 0.0}).query("kernel_size == 1")
    assert not study.check_claims(holding, unsmoothed, compare, margin=0.05).loc[4, "holds"]


# ------------------------------------------------------------------------ maps
@pytest.fixture(scope="module")
def repeated():
    y = torch.arange(10).repeat_interleave(2)
    confident = ConfidentImages(torch.zeros(20, 1, 4, 4), y, 0.99)
    return make_grids(confident, count=60, n=2, layout="repeated", seed=0)


def test_cell_share_is_the_median_positive_share_in_the_cell(repeated):
    masks = cell_masks(2, (4, 4))
    maps = torch.zeros(60, 8, 8)
    maps[:20] = masks[3] * 2.0  # all positive mass in the bottom-right cell
    maps[20:40] = masks[0].float() - masks[3].float()  # none of it (the negative part does not count)
    maps[40:] = 1.0  # a uniform map: a quarter
    result = GridResult(pd.DataFrame(), {("IxG", "final", 1): maps}, {})
    assert study.cell_share(result, repeated, "IxG", "final", 3) == pytest.approx(0.25)
    maps[40:] = masks[3] * 1e-9  # a positive total <= 1e-7 counts as an empty map, as in the localisation score
    assert study.cell_share(result, repeated, "IxG", "final", 3) == 0.0


def test_aggatt_panels_read_the_smoothed_maps_for_smoothed_labels():
    maps = {key: torch.rand(60, 8, 8) for key in [("IxG", l, 1) for l in LAYER_KEYS] + [("S-IxG", "input", 5)]}
    scores = {key: (torch.rand(60), torch.rand(60)) for key in maps}
    result = GridResult(pd.DataFrame(), maps, scores)
    bins, means = study.aggatt_panels(result, ["IxG"], smooth_kernel=5)
    assert list(bins) == [("IxG", l) for l in LAYER_KEYS]
    middle = ("IxG", "middle", 1)
    torch.testing.assert_close(bins[("IxG", "middle")], bin_maps(maps[middle], *scores[middle]))
    torch.testing.assert_close(means[("IxG", "final")], bin_scores(*scores[("IxG", "final", 1)]))
    bins, _ = study.aggatt_panels(result, ["S-IxG"], smooth_kernel=5, layers=["input"])
    smoothed = ("S-IxG", "input", 5)
    torch.testing.assert_close(bins[("S-IxG", "input")], bin_maps(maps[smoothed], *scores[smoothed]))
