"""environment.yml, pyproject.toml, the Makefile and CI agree with each other and with the pinned toolchain."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_pins():
    dependencies = _pyproject()["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies


def test_environment_yml_installs_the_project_with_existing_extras():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in environment["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in conda and "pip" in conda
    (pip_section,) = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    (editable,) = [line for line in pip_section if line.startswith("-e .")]
    extras = set(re.fullmatch(r"-e \.\[([\w,]+)\]", editable)[1].split(","))
    assert extras <= set(_pyproject()["project"]["optional-dependencies"])
    assert {"book", "test"} <= extras
    # every Python dependency comes from pyproject.toml: nothing else is listed for pip
    assert pip_section == [editable]


def test_python_version_agrees():
    requires = _pyproject()["project"]["requires-python"]
    assert requires == ">=3.11"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test$", ci, re.MULTILINE)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: venv\n\t\$\(PY\) -m pytest", makefile, re.MULTILINE)
