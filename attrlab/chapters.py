"""Book chapters as parameterised notebooks: where they are, what parameters they take, where they keep their runs.

A chapter is ``book/<name>.md`` (MyST markdown, the source of truth) paired by jupytext with ``book/<name>.ipynb``
(what papermill executes). Its first code cell is tagged ``parameters`` and declares typed, commented defaults::

    epochs: int = 3  # passes over the training split

:func:`chapter_parameters` reads them with papermill's ``inspect_notebook``; :func:`validate_parameters` checks a
set of values against them (unknown names, wrong types) before anything runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

#: environment variable that overrides where chapters put their run directories
RUNS_ENV = "ATTRLAB_RUNS"
#: environment variable that overrides where chapters look for downloaded datasets
DATA_ENV = "ATTRLAB_DATA"


class ParameterError(ValueError):
    """Values given for a chapter do not match its ``parameters`` cell."""


@dataclass(frozen=True)
class ChapterParameter:
    """One entry of a chapter's ``parameters`` cell."""

    name: str
    type_name: str  #: the annotation as written, e.g. "int", "str | None"; "None" when not annotated
    default: str  #: the default value as source text
    help: str

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` fits the annotation (unannotated or unknown annotations accept anything)."""
        checks = {
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "bool": lambda v: isinstance(v, bool),
            "None": lambda v: v is None,
            "list": lambda v: isinstance(v, list),
            "dict": lambda v: isinstance(v, dict),
        }
        # "int | None" -> ["int", "None"]; "list[int]" is checked as "list"
        alternatives = [part.strip().split("[")[0] for part in self.type_name.split("|")]
        if self.type_name == "None" or any(alternative not in checks for alternative in alternatives):
            return True
        return any(checks[alternative](value) for alternative in alternatives)


def book_root(start: str | Path | None = None) -> Path:
    """The repository root holding ``_config.yml`` and ``book/_toc.yml``: ``start`` (default: cwd) or an ancestor."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file() and (folder / "book" / "_toc.yml").is_file():
            return folder
    raise FileNotFoundError(f"no attrlab book (_config.yml next to book/_toc.yml) in {here} or any folder above it")


def _book_folder(variable: str, name: str) -> Path:
    """``$variable`` if set, else ``<book root>/name``, else ``./name`` outside any book."""
    if os.environ.get(variable):
        return Path(os.environ[variable]).resolve()
    try:
        return book_root() / name
    except FileNotFoundError:
        return (Path.cwd() / name).resolve()


def runs_root() -> Path:
    """Where chapters keep run directories: ``$ATTRLAB_RUNS``, else ``runs/`` at the book root, else ``./runs``.

    The book build executes chapters inside ``book/`` and papermill wherever it is called; resolving against the
    book root makes both use (and resume) the same run directories.
    """
    return _book_folder(RUNS_ENV, "runs")


def data_root() -> Path:
    """Where chapters find datasets (FashionMNIST, CIFAR10): ``$ATTRLAB_DATA``, else ``data/`` at the book root.

    Like :func:`runs_root`, so a chapter finds the same files whether the book build or papermill runs it.
    """
    return _book_folder(DATA_ENV, "data")


def run_dir_for(chapter: str, prefix: str, **parameters: Any) -> Path:
    """``runs_root()/<chapter>/<prefix>-<hash>``: one directory per distinct set of ``parameters``.

    The hash covers every parameter, so changing any of them starts a new run instead of clashing with the
    configuration stored in an existing run directory, and rerunning with the same ones resumes or reuses it.
    """
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return runs_root() / chapter / f"{prefix}-{digest}"


def chapter_parameters(notebook: str | Path) -> dict[str, ChapterParameter]:
    """The parameters declared in the ``parameters`` cell of ``notebook`` (an .ipynb), in declaration order."""
    import papermill

    path = Path(notebook)
    if path.suffix != ".ipynb":
        raise ParameterError(f"papermill runs .ipynb notebooks; {path} is not one (use the chapter's paired .ipynb)")
    if not path.is_file():
        raise FileNotFoundError(f"chapter notebook {path} does not exist")
    found = papermill.inspect_notebook(str(path))
    return {
        name: ChapterParameter(name, spec["inferred_type_name"], spec["default"], spec["help"])
        for name, spec in found.items()
    }


def check_values(
    declared: Mapping[str, ChapterParameter], values: Mapping[str, Any], where: str = "the chapter"
) -> None:
    """Raise a :class:`ParameterError` naming every value of ``values`` that ``declared`` does not accept."""
    if not declared:
        raise ParameterError(f"{where} has no code cell tagged 'parameters', so it takes no parameters")
    problems = []
    for name, value in values.items():
        if name not in declared:
            problems.append(f"unknown parameter {name!r}")
        elif not declared[name].accepts(value):
            problems.append(
                f"parameter {name!r} must be {declared[name].type_name}, got {value!r} ({type(value).__name__})"
            )
    if problems:
        listing = ", ".join(f"{p.name}: {p.type_name}" for p in declared.values())
        raise ParameterError(f"{where}: {'; '.join(problems)}. Valid parameters: {listing}")


def validate_parameters(notebook: str | Path, values: Mapping[str, Any]) -> dict[str, ChapterParameter]:
    """Check ``values`` against the parameters of ``notebook``; return the declared parameters."""
    declared = chapter_parameters(notebook)
    check_values(declared, values, where=str(notebook))
    return declared
