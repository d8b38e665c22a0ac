"""The gamma search: the per-group composite, the metric battery's wiring, and the resumable Dask search (kill test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import attrlab.quality as q
from attrlab.canonize import canonize_layers
from attrlab.lrp import LRP, Gamma
from attrlab.lrp.engine import walk
from attrlab.models import build_model
from attrlab.quality.battery import METRICS, SEARCH_METRICS, BatterySettings, evaluate_battery
from attrlab.quality.gamma import GAMMAS, LAYER_GROUPS, GammaConfig, check_groups, gamma_composite, gamma_grid
from attrlab.quality.search import (
    SearchError,
    SearchSetup,
    config_maps,
    evaluate_grid,
    export_results,
    prepare_search,
    read_results,
    run_search,
    search_settings,
)
from attrlab.quality.setup import image_set

ROOT = Path(__file__).resolve().parents[1]


def test_full_grid_has_4802_distinct_configurations():
    grid = gamma_grid()
    assert len(grid) == 7**4 * 2 == 4802
    assert len({c.key for c in grid}) == 4802
    assert sum(c.canonized for c in grid) == 2401
    assert {c.low for c in grid} == set(GAMMAS)


def test_bad_gamma_and_grid_raise():
    with pytest.raises(ValueError, match="gamma of group 'low'"):
        GammaConfig(-1.0, 0.0, 0.0, 0.0, True)
    with pytest.raises(ValueError, match="distinct"):
        gamma_grid((0.0, 0.0))
    with pytest.raises(ValueError, match="no layer groups for model 'deep'"):
        SearchSetup(model="deep")


@pytest.mark.parametrize("name", sorted(LAYER_GROUPS))
def test_groups_cover_every_affine_layer_and_get_their_gamma(name):
    model = build_model(name, input_shape=(1, 64, 64), seed=0)
    groups = LAYER_GROUPS[name]
    check_groups(model, groups)
    config = GammaConfig(0.0, 0.25, 10.0, 50.0, True)
    layers = canonize_layers(walk(model))
    rules = dict(zip([n for n, _ in layers], gamma_composite(config, groups).rules(layers)))
    for group, gamma in config.gammas.items():
        for layer in groups[group]:
            assert isinstance(rules[layer], Gamma) and rules[layer].gamma == gamma
    with pytest.raises(ValueError, match="must cover"):
        check_groups(model, {**groups, "head": groups["head"][:1]})


def test_one_gamma_everywhere_equals_the_plain_gamma_composite():
    model = build_model("vgg_small_bn", input_shape=(1, 64, 64), seed=0).eval()
    x = image_set(3).x
    ours = LRP(model, gamma_composite(GammaConfig(0.25, 0.25, 0.25, 0.25, True), LAYER_GROUPS["vgg_small_bn"]))
    plain = LRP(model, {torch.nn.Conv2d: Gamma(0.25)})
    torch.testing.assert_close(ours.attribute(x, target=1), plain.attribute(x, target=1))


def test_settings_scaled_to_64_pixels():
    s = BatterySettings.scaled(64)
    assert (s.patch_size, s.blur_kernel_size, s.features_in_step, s.subset_size) == (4, 5, 37, 41)
    assert BatterySettings.scaled(224) == BatterySettings()
    reduced = search_settings()
    assert (reduced.patch_size, reduced.regions_evaluation, reduced.features_in_step, reduced.nr_samples) == (
        8,
        12,
        512,
        3,
    )
    with pytest.raises(ValueError, match="unknown mask 'ink'"):
        BatterySettings(mask="ink")


def test_battery_equals_the_metric_functions():
    model = build_model("vgg_small_bn", input_shape=(1, 64, 64), seed=0).eval()
    images = image_set(4)
    method = LRP(model, "epsilon_plus_flat")
    s = BatterySettings.scaled(64, nr_samples=2, nr_runs=5, regions_evaluation=6)
    scores = evaluate_battery(model, images.x, images.y, images.masks, method, s)
    assert list(scores) == list(METRICS)
    maps = method.attribute(images.x, target=images.y)
    heat = maps.sum(1)
    torch.testing.assert_close(scores["sparseness"], q.sparseness(heat))
    torch.testing.assert_close(scores["rma"], q.relevance_mass_accuracy(heat, images.masks))
    curves = q.region_perturbation(
        model, images.x, images.y, maps, patch_size=4, regions_evaluation=6, blur_kernel_size=5
    )
    torch.testing.assert_close(scores["aopc"], q.aopc(curves))
    flips = q.pixel_flipping(model, images.x, images.y, maps, features_in_step=37, baseline=0.0)
    torch.testing.assert_close(scores["pixel_flipping"], flips.mean(1))
    sens = q.avg_sensitivity(model, images.x, images.y, maps, method, nr_samples=2, lower_bound=0.2, seed=0)
    torch.testing.assert_close(scores["avg_sensitivity"], sens)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_battery(model, images.x, images.y, images.masks, method, s, metrics=("gini",))


SMALL = dict(images=2, settings=search_settings(nr_samples=2, regions_evaluation=4))


def _small_setup() -> SearchSetup:
    return SearchSetup(model="vgg_small_bn", **SMALL)  # type: ignore[arg-type]


def test_search_stores_rows_and_resumes(tmp_path):
    model = build_model("vgg_small_bn", input_shape=(1, 64, 64), seed=0).eval()
    configs = gamma_grid((0.0, 1.0), (True,))[:3]
    first = run_search(tmp_path, configs, _small_setup(), model=model, workers=1, progress=False)
    assert sorted(first.computed) == sorted(c.key for c in configs) and not first.failed
    table = read_results(tmp_path)
    assert len(table) == 3 and set(SEARCH_METRICS) <= set(table.columns)
    assert (tmp_path / "results.csv").exists()
    again = run_search(tmp_path, configs, _small_setup(), progress=False)
    assert again.computed == [] and len(again.skipped) == 3
    table_path, summary_path = export_results(tmp_path, tmp_path / "book")
    assert len(pd.read_csv(table_path)) == 3
    assert json.loads(summary_path.read_text())["configurations"] == 3
    live = evaluate_grid(model, "vgg_small_bn", configs, image_set(2), _small_setup().settings, progress=False)
    stored = table.set_index("low").sort_index()
    for metric in SEARCH_METRICS:  # the in-process grid gives the Dask search's numbers (torch threads may differ)
        assert live.set_index("low").sort_index()[metric].to_numpy() == pytest.approx(
            stored[metric].to_numpy(), rel=1e-4, abs=1e-6
        )
    maps = config_maps(model, "vgg_small_bn", table, image_set(2).x, image_set(2).y)
    assert maps.shape == (3, 2, 64, 64)
    other = SearchSetup(model="vgg_small_bn", images=3, settings=SMALL["settings"])  # type: ignore[arg-type]
    with pytest.raises(SearchError, match="another setup"):
        run_search(tmp_path, configs, other, progress=False)


def test_killed_search_recomputes_nothing_finished(tmp_path):
    """Kill the command (and its Dask workers) mid-run; the rerun computes exactly the configurations not stored."""
    model = build_model("vgg_small_bn", input_shape=(1, 64, 64), seed=0).eval()
    configs = gamma_grid((0.0, 1.0), (True,))  # 16 configurations
    setup = _small_setup()
    prepare_search(tmp_path, setup, model)  # the command resumes this setup with these weights
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "attrlab", "gamma-search", str(tmp_path), "--gammas", "0,1", "--canonized", "yes"]
    command += ["--images", "2", "--workers", "1", "--no-progress"]
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    folder = tmp_path / "configs"
    deadline = time.monotonic() + 240
    try:
        while len(list(folder.glob("*.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    stored = {path.name: (path.stat().st_mtime_ns, path.read_text()) for path in folder.glob("*.json")}
    assert 3 <= len(stored) < len(configs), process.stderr.read().decode()[-2000:] if process.stderr else ""
    result = run_search(tmp_path, configs, setup, workers=1, progress=False)
    assert len(result.skipped) == len(stored)
    assert len(result.computed) == len(configs) - len(stored)
    assert not set(result.computed) & {name[: -len(".json")] for name in stored}
    for name, (mtime, text) in stored.items():  # finished rows are neither recomputed nor rewritten
        assert (folder / name).stat().st_mtime_ns == mtime and (folder / name).read_text() == text
    assert len(read_results(tmp_path)) == len(configs)
