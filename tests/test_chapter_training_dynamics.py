"""The training-dynamics chapter runs under papermill, and what it glues into the prose is what the run computed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from notebook_outputs import glued_values

from attrlab.analysis import correlations
from attrlab.chapters import validate_parameters
from attrlab.sweep import Sweep
from attrlab.track import tracked_frame
from attrlab.train import Run

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "training_dynamics.ipynb"


@pytest.mark.slow
def test_chapter_runs_and_reads_its_numbers(tmp_path):
    output, run_dir = tmp_path / "out.ipynb", tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("papermill")),
        str(CHAPTER),
        str(output),
        "--no-progress-bar",
        "-p",
        "epochs",
        "1",
        "-p",
        "schedule",
        "3",
        "-p",
        "snapshots",
        "log:3",
        "-p",
        "bootstrap_resamples",
        "50",
        "-p",
        "run_dir",
        str(run_dir),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT / "book", env={**os.environ})
    assert completed.returncode == 0, completed.stderr[-3000:]
    executed = nbformat.read(output, as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 6
    run = Run(run_dir)
    tracked = tracked_frame(run_dir)
    assert set(tracked["method"]) == {"lrp", "gradcam", "gradcam_seed_code"}
    assert tracked["step"].unique().tolist() == [3, 6, 9, 12, 15]
    glued = glued_values(executed)
    assert glued["steps"] == "15" and glued["tracked_steps"] == "5"
    lrp = correlations(run.metrics, tracked_frame(run_dir, "lrp"), bootstrap=False)
    rho = lrp.query("performance == 'test loss' and summary == 'positive norm'")["rho"].item()
    assert glued["lrp_test_norm"].startswith(f"'{rho:.2f} (95% block-bootstrap interval")


def test_regime_files_validate_against_the_chapter():
    regimes = sorted((ROOT / "book" / "regimes").glob("*.yml"))
    assert len(regimes) == 4
    combos = set()
    for path in regimes:
        sweep = Sweep.from_yaml(path)
        assert sweep.chapter.resolve() == CHAPTER
        (point,) = sweep.points()
        validate_parameters(CHAPTER, point.parameters)
        combos.add((point.parameters["dataset"], point.parameters["model"], point.parameters["epochs"]))
    assert combos == {
        ("fashionmnist", "shallow", 10),
        ("fashionmnist", "deep", 10),
        ("cifar10", "shallow", 20),
        ("cifar10", "deep", 20),
    }
