"""make gpu-check (bench/gpu_check.py): a clear refusal without a GPU, and its whole path run on the CPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_stops_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _module().main(["--results", str(tmp_path)]) == 2
    assert "no CUDA GPU is visible here" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_gpu_steps_cover_the_tests_and_every_benchmark():
    steps = _module().steps("cuda", False, Path("results"))
    commands = [" ".join(step.command[1:]) for step in steps]
    assert commands[0].startswith("-m pytest -m cuda")
    for script in ("bench/attribution.py", "bench/tracking.py", "bench/grids.py", "bench/bcos.py", "bench/guidance.py"):
        assert any(command.startswith(script) and "--quick" in command for command in commands), script
    assert any(command.startswith("bench/sanity.py --device cuda") for command in commands)
    (quality,) = [step for step in steps if step.command[1] == "bench/quality.py"]
    assert quality.requires == "quantus" and "--quick" in quality.command  # Quantus is its reference
    assert all("--out" in step.command for step in steps if step.command[1] in ("bench/sanity.py", "bench/quality.py"))
    assert any("--batch 4096" in command for command in commands)
    assert any("--n 3" in command for command in commands)
    assert sum(step.limit_s for step in steps) <= 2 * _module().BUDGET_S


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path is for machines without a GPU")
def test_the_cpu_path_runs_every_step_and_writes_a_report(tmp_path):
    """What make gpu-check does, with the package found through PYTHONPATH only, on the CPU at tiny sizes."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--allow-cpu", "--results", str(tmp_path)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (report,) = tmp_path.glob("gpu-check-cpu-*.md")
    text = report.read_text()
    # 7 steps; the quality benchmark is skipped, and says so, where Quantus is not installed
    assert "all steps passed" in text and text.count(": ok,") + text.count(": SKIPPED (quantus") == 7
    assert "batch 8" in text and "method" in text  # the benchmarks' own tables are in it
    assert (tmp_path / "grids.csv").is_file() and not list(tmp_path.glob(".*tmp"))
