"""Sweeps: grid expansion, point names, validation against the chapter's parameters cell, a real sweep and rerun."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from attrlab.chapters import ParameterError, chapter_parameters
from attrlab.sweep import Sweep, SweepError, expand_grid, point_name, run_sweep

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "book" / "training.ipynb"


def _notebook(path: Path, parameters: str, body: str) -> Path:
    """A small chapter-like notebook: a title, a parameters cell and one code cell."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters_cell = nbformat.v4.new_code_cell(parameters)
    parameters_cell.metadata["tags"] = ["parameters"]
    notebook.cells = [nbformat.v4.new_markdown_cell("# Tiny chapter"), parameters_cell, nbformat.v4.new_code_cell(body)]
    nbformat.write(notebook, path)
    return path


def test_expand_grid_is_the_cartesian_product_in_written_order():
    points = expand_grid({"model": ["shallow", "deep"], "seed": [0, 1, 2]}, {"epochs": 1})
    assert len(points) == 6
    assert points[0] == {"model": "shallow", "seed": 0, "epochs": 1}
    assert points[1] == {"model": "shallow", "seed": 1, "epochs": 1}
    assert points[-1] == {"model": "deep", "seed": 2, "epochs": 1}
    assert expand_grid({}, {"epochs": 2}) == [{"epochs": 2}]


@pytest.mark.parametrize(
    ("grid", "fixed", "message"),
    [
        ({"seed": 3}, {}, "grid values are lists"),
        ({"model": "deep"}, {}, "grid values are lists"),
        ({"seed": []}, {}, "has no values"),
        ({"seed": [0]}, {"seed": 1}, "both in 'grid' and in 'fixed'"),
    ],
)
def test_expand_grid_rejects_bad_grids(grid, fixed, message):
    with pytest.raises(SweepError, match=message):
        expand_grid(grid, fixed)


def test_point_names_are_file_safe_and_readable():
    assert point_name({"model": "deep", "seed": 1}) == "model-deep_seed-1"
    assert point_name({"lr": 0.001, "flag": True}) == "lr-0.001_flag-true"
    assert point_name({"path": "a/b c"}) == "path-a-b-c"
    assert point_name({}) == "default"


def test_training_chapter_declares_typed_commented_parameters():
    declared = chapter_parameters(TRAINING)
    for name in ("dataset", "model", "epochs", "seed", "batch_size", "lr", "eval_every", "run_dir"):
        assert name in declared
        assert declared[name].type_name != "None", f"{name} has no type annotation"
        assert declared[name].help, f"{name} has no comment"
    assert declared["epochs"].type_name == "int" and declared["lr"].type_name == "float"


def test_unknown_parameter_is_named_with_the_valid_ones(tmp_path):
    sweep = Sweep(TRAINING, tmp_path / "out", grid={"seeds": [0, 1]})
    with pytest.raises(ParameterError, match=r"unknown parameter 'seeds'.*Valid parameters: dataset: str, model: str"):
        sweep.points()
    assert not (tmp_path / "out").exists()


def test_wrong_type_is_named_with_its_declared_type(tmp_path):
    sweep = Sweep(TRAINING, tmp_path / "out", grid={"model": ["shallow"]}, fixed={"epochs": "1"})
    with pytest.raises(ParameterError, match=r"parameter 'epochs' must be int, got '1' \(str\)"):
        sweep.points()
    sweep = Sweep(TRAINING, tmp_path / "out", fixed={"lr": 1})  # an int is a valid float
    assert sweep.points()[0].parameters["lr"] == 1


def test_yaml_description_errors(tmp_path):
    (tmp_path / "s.yml").write_text("chapter: nope.ipynb\noutput: out\n")
    with pytest.raises(SweepError, match="does not exist"):
        Sweep.from_yaml(tmp_path / "s.yml")
    (tmp_path / "s.yml").write_text(f"chapter: {TRAINING}\nout: x\n")
    with pytest.raises(SweepError, match=r"unknown keys \['out'\], missing keys \['output'\]"):
        Sweep.from_yaml(tmp_path / "s.yml")


def test_markdown_chapter_maps_to_its_paired_notebook_and_paths_are_relative_to_the_yaml(tmp_path):
    spec = f"chapter: {TRAINING.with_suffix('.md')}\noutput: sweeps/a\ngrid: {{seed: [0, 1]}}\n"
    (tmp_path / "s.yml").write_text(spec)
    sweep = Sweep.from_yaml(tmp_path / "s.yml")
    assert sweep.chapter == TRAINING and sweep.output == tmp_path / "sweeps" / "a"
    points = sweep.points()
    assert [p.name for p in points] == ["seed-0", "seed-1"]
    assert points[1].parameters["run_dir"] == str(tmp_path / "sweeps" / "a" / "seed-1")


@pytest.mark.slow
def test_real_sweep_of_the_training_chapter_then_rerun_skips(tmp_path):
    sweep = Sweep(TRAINING, tmp_path / "sweep", grid={"seed": [0, 1]}, fixed={"epochs": 1})
    result = run_sweep(sweep, workers=2, progress=False)
    assert sorted(result.done) == ["seed-0", "seed-1"] and not result.failed and not result.skipped
    for seed in (0, 1):
        executed = nbformat.read(tmp_path / "sweep" / f"seed-{seed}.ipynb", as_version=4)
        assert executed.cells[0].source.startswith(f"# Training a classifier (seed={seed})")
        assert not [c for c in executed.cells if "name" in c.metadata.get("mystnb", {}).get("figure", {})]
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert f"seed = {seed}" in injected[0].source
        marker = json.loads((tmp_path / "sweep" / f"seed-{seed}.done.json").read_text())
        assert marker["parameters"]["run_dir"] == str(tmp_path / "sweep" / f"seed-{seed}")
        assert (tmp_path / "sweep" / f"seed-{seed}" / "COMPLETE").is_file()
    assert not list((tmp_path / "sweep").glob(".*running*"))
    rerun = run_sweep(sweep, workers=2, progress=False)
    assert sorted(rerun.skipped) == ["seed-0", "seed-1"] and not rerun.done


def test_failing_point_is_kept_and_the_others_finish_on_an_existing_cluster(tmp_path):
    from distributed import LocalCluster

    chapter = _notebook(tmp_path / "tiny.ipynb", "x: int = 1  # a number", "assert x != 2, 'x must not be 2'")
    sweep = Sweep(chapter, tmp_path / "out", grid={"x": [1, 2]})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        result = run_sweep(sweep, scheduler=cluster.scheduler_address, progress=False)
    assert result.done == ["x-1"] and list(result.failed) == ["x-2"]
    assert "x must not be 2" in result.failed["x-2"]
    assert (tmp_path / "out" / "x-2.failed.ipynb").is_file() and not (tmp_path / "out" / "x-2.ipynb").exists()
    assert not (tmp_path / "out" / "x-2.done.json").exists()
    # an interrupted point (no marker, a temporary notebook left behind) runs again; the leftover goes
    (tmp_path / "out" / "x-1.done.json").unlink()
    (tmp_path / "out" / ".x-1.running-0badc0de.ipynb").write_text("{}")
    again = run_sweep(Sweep(chapter, tmp_path / "out", grid={"x": [1]}), workers=1, progress=False)
    assert again.done == ["x-1"] and (tmp_path / "out" / "x-1.done.json").is_file()
    assert not list((tmp_path / "out").glob(".*running*"))


def test_a_point_failing_before_its_first_step_leaves_no_run_directory(tmp_path):
    from attrlab.sweep import execute_point

    body = "from attrlab.runstore import RunStore\nRunStore.create(run_dir, {'x': x})\nassert x != 2, 'x is 2'"
    chapter = _notebook(tmp_path / "tiny.ipynb", 'x: int = 1  # a number\nrun_dir: str = ""  # the run', body)
    points = Sweep(chapter, tmp_path / "out", grid={"x": [1, 2]}).points()
    assert execute_point(str(chapter), points[0])["status"] == "done"
    assert execute_point(str(chapter), points[1])["status"] == "failed"
    assert (tmp_path / "out" / "x-1" / "config.json").is_file()
    assert not (tmp_path / "out" / "x-2").exists() and (tmp_path / "out" / "x-2.failed.ipynb").is_file()
