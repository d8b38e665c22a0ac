"""Sweeps on GPUs (``attrlab run --gpus``): one worker per visible GPU, each pinned by CUDA_VISIBLE_DEVICES.

No GPU is needed: the device count is mocked, and the points report the CUDA_VISIBLE_DEVICES their kernel saw.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

import attrlab.__main__ as cli
from attrlab.sweep import Sweep, SweepError, gpu_worker_specs, run_sweep, visible_gpus


def _chapter(path: Path) -> Path:
    """A chapter-like notebook that writes the CUDA_VISIBLE_DEVICES of its kernel to ``<out>``."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    parameters = nbformat.v4.new_code_cell('out: str = "seen.txt"  # file the kernel writes its GPU list to')
    parameters.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        "import os, pathlib\npathlib.Path(out).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"
    )
    notebook.cells = [nbformat.v4.new_markdown_cell("# GPU probe"), parameters, body]
    nbformat.write(notebook, path)
    return path


def test_visible_gpus_follow_the_device_count_and_an_existing_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5,7")
    assert visible_gpus() == ["3", "5"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert visible_gpus() == []


def test_gpu_worker_specs_pin_one_single_threaded_worker_per_gpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    specs = gpu_worker_specs(["0", "1"], cpus=16)
    assert list(specs) == ["gpu-0", "gpu-1"]
    for gpu, spec in zip("01", specs.values()):
        options = spec["options"]
        assert options["env"] == {"CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": "8"}
        assert options["nthreads"] == 1 and options["resources"] == {"GPU": 1}


def test_gpus_without_a_gpu_and_gpus_with_workers_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sweep = Sweep(_chapter(tmp_path / "probe.ipynb"), tmp_path / "out", grid={"out": [str(tmp_path / "a.txt")]})
    with pytest.raises(SweepError, match="no GPU is visible"):
        run_sweep(sweep, gpus=True, progress=False)
    with pytest.raises(SweepError, match="workers and gpus exclude each other"):
        run_sweep(sweep, gpus=True, workers=2, progress=False)
    spec = tmp_path / "sweep.yml"
    spec.write_text(f"chapter: {tmp_path / 'probe.ipynb'}\noutput: out2\ngrid: {{out: [{tmp_path / 'b.txt'}]}}\n")
    assert cli.main(["run", str(spec), "--gpus", "--no-progress"]) == 2
    assert not (tmp_path / "b.txt").exists()


@pytest.mark.slow
def test_each_point_runs_on_its_own_gpu(tmp_path, monkeypatch):
    """Two points on two (mocked) GPUs: each kernel sees exactly one GPU, and both GPUs are used."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    outputs = [str(tmp_path / f"seen-{index}.txt") for index in range(2)]
    sweep = Sweep(_chapter(tmp_path / "probe.ipynb"), tmp_path / "out", grid={"out": outputs})
    result = run_sweep(sweep, gpus=True, progress=False)
    assert len(result.done) == 2 and not result.failed, result.failed
    assert sorted(Path(out).read_text() for out in outputs) == ["0", "1"]
