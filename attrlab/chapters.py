"""Book chapters as parameterised notebooks: where they are, what parameters they take, where they keep their runs.

A chapter is ``book/<name>.md`` (MyST markdown, the source of truth) paired by jupytext with ``book/<name>.ipynb``
(what papermill executes). Its first code cell is tagged ``parameters`` and declares typed, commented defaults::

    epochs: int = 3  # passes over the training split

:func:`chapter_parameters` reads them with papermill's ``inspect_notebook`` (and fails when papermill cannot read
a line, e.g. one with ``=`` in its comment); :func:`validate_parameters` checks a set of values against them (unknown
names, wrong types, values outside their choices) before anything runs. Inside a running chapter,
:func:`check_parameters` does the same for the values papermill injected, in the chapter's first hidden cell.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

#: environment variable that overrides where chapters put their run directories
RUNS_ENV = "ATTRLAB_RUNS"
#: environment variable that overrides where chapters look for downloaded datasets
DATA_ENV = "ATTRLAB_DATA"

#: parameters that do not change a run's results, so not part of its identity (see :func:`run_dir_for`)
OUTSIDE_IDENTITY = ("data_root", "device", "progress", "checkpoint_every", "checkpoint_seconds", "tensorboard")


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
            # papermill's -p turns a bare number into an int (``-p schedule 5``); a chapter reads it as its text
            "str": lambda v: isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)),
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

    The hash covers every parameter that changes the results, so changing one of them starts a new run instead of
    clashing with the configuration stored in an existing run directory, and rerunning with the same ones resumes
    or reuses it. Settings that do not change the results (:data:`OUTSIDE_IDENTITY`: where the data lie, the device,
    progress and checkpoint frequency) are left out, so moving the data or switching to a GPU reuses the run.
    """
    identity = {name: value for name, value in parameters.items() if name not in OUTSIDE_IDENTITY}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return runs_root() / chapter / f"{prefix}-{digest}"


def parameter_choices() -> dict[str, tuple[str, ...]]:
    """The valid values of the parameters the chapters share, by name (one name means one thing in every chapter).

    A ``list`` parameter (``methods``) is checked element by element.
    """
    from .attribution import available_methods
    from .data import DATASETS, SELECTIONS
    from .models import available_models
    from .train import OPTIMIZERS

    return {
        "dataset": tuple(DATASETS),
        "model": tuple(available_models()),
        "methods": tuple(available_methods(include_reproductions=True)),
        "optimizer": tuple(OPTIMIZERS),
        "attr_selection": tuple(SELECTIONS),
        "device": ("auto", "cpu", "cuda"),  # "cuda:N" is accepted as well, see _valid_choice
    }


def _valid_choice(name: str, value: Any, valid: Iterable[Any]) -> bool:
    if name == "device" and isinstance(value, str) and value.startswith("cuda:") and value[5:].isdigit():
        return True
    return value in tuple(valid)


def _declared_names(source: str) -> list[tuple[str, int, str]]:
    """(name, line number, line) of every assignment in a ``parameters`` cell's source, in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        raise ParameterError(f"the parameters cell is not valid Python: {err}") from err
    lines = source.splitlines()
    found = []
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        for target in targets:
            if isinstance(target, ast.Name):
                found.append((target.id, node.lineno, lines[node.lineno - 1]))
    return found


def chapter_parameters(notebook: str | Path) -> dict[str, ChapterParameter]:
    """The parameters declared in the ``parameters`` cell of ``notebook`` (an .ipynb), in declaration order.

    Raises a :class:`ParameterError` when papermill cannot read a declared parameter (it skips such a line with a
    warning, and the chapter would then silently refuse, or ignore, that parameter).
    """
    import nbformat
    import papermill

    path = Path(notebook)
    if path.suffix != ".ipynb":
        raise ParameterError(f"papermill runs .ipynb notebooks; {path} is not one (use the chapter's paired .ipynb)")
    if not path.is_file():
        raise FileNotFoundError(f"chapter notebook {path} does not exist")
    found = papermill.inspect_notebook(str(path))
    cells = [c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if cells:
        missing = [(name, number, line) for name, number, line in _declared_names(cells[0].source) if name not in found]
        if missing:
            listing = "; ".join(f"line {number} {line.strip()!r}" for _, number, line in missing)
            raise ParameterError(
                f"{path}: papermill cannot read the parameters {[name for name, _, _ in missing]} ({listing}); "
                "write each as 'name: type = default  # help', with no '=' inside the comment"
            )
    return {
        name: ChapterParameter(name, spec["inferred_type_name"], spec["default"], spec["help"])
        for name, spec in found.items()
    }


def check_values(
    declared: Mapping[str, ChapterParameter],
    values: Mapping[str, Any],
    where: str = "the chapter",
    choices: Mapping[str, Iterable[Any]] | None = None,
) -> None:
    """Raise a :class:`ParameterError` naming every value of ``values`` that ``declared`` does not accept.

    ``choices`` (default: :func:`parameter_choices`) gives the valid values of parameters by name; a list value is
    checked element by element.
    """
    if not declared:
        raise ParameterError(f"{where} has no code cell tagged 'parameters', so it takes no parameters")
    choices = parameter_choices() if choices is None else choices
    problems = []
    for name, value in values.items():
        if name not in declared:
            problems.append(f"unknown parameter {name!r}")
        elif not declared[name].accepts(value):
            problems.append(
                f"parameter {name!r} must be {declared[name].type_name}, got {value!r} ({type(value).__name__})"
            )
        elif name in choices:
            valid = tuple(choices[name])
            items = value if isinstance(value, list) else [value]
            bad = [item for item in items if not _valid_choice(name, item, valid)]
            if bad:
                shown = bad[0] if not isinstance(value, list) else bad
                problems.append(
                    f"parameter {name!r} has invalid value {shown!r}; valid choices: {', '.join(map(str, valid))}"
                )
    if problems:
        listing = ", ".join(f"{p.name}: {p.type_name}" for p in declared.values())
        raise ParameterError(f"{where}: {'; '.join(problems)}. Valid parameters: {listing}")


def validate_parameters(notebook: str | Path, values: Mapping[str, Any]) -> dict[str, ChapterParameter]:
    """Check ``values`` against the parameters of ``notebook``; return the declared parameters."""
    declared = chapter_parameters(notebook)
    check_values(declared, values, where=str(notebook))
    return declared


def _annotation_name(annotation: Any) -> str:
    """``int`` -> "int", ``int | None`` -> "int | None", ``list[str]`` -> "list[str]" (as ChapterParameter reads it)."""
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("NoneType", "None")


def injected_parameters(namespace: Mapping[str, Any]) -> list[str]:
    """The names papermill assigned in its injected ``# Parameters`` cell of this kernel (none when run by hand).

    IPython keeps every executed cell's source in ``_ih``; papermill's injected cell starts with ``# Parameters``.
    """
    history = namespace.get("_ih") or namespace.get("In") or []
    for source in reversed(list(history)):
        if isinstance(source, str) and source.startswith("# Parameters"):
            return [name for name, _, _ in _declared_names(source)]
    return []


def check_parameters(
    namespace: Mapping[str, Any],
    choices: Mapping[str, Iterable[Any]] | None = None,
    where: str = "this chapter",
) -> None:
    """Validate a running chapter's parameters; call it as ``check_parameters(globals())`` in the first hidden cell.

    The declared parameters are the annotated names of the ``parameters`` cell (``namespace["__annotations__"]``);
    the values are what the namespace holds now, so papermill's ``-p`` values are checked, and a name papermill
    injected that the chapter does not declare (``-p modle deep``, which papermill only warns about) is an error.

    Parameters
    ----------
    namespace : Mapping[str, Any]
        The chapter's global namespace, ``globals()``.
    choices : Mapping[str, Iterable], optional
        Valid values by parameter name; default :func:`parameter_choices` (dataset, model, methods, ...).
    where : str
        How the error message names the chapter.

    Raises
    ------
    ParameterError
        Naming every unknown parameter, every ill-typed value and every value outside its choices, with the valid
        parameters and their types; raised before the chapter does any work.
    """
    annotations = dict(namespace.get("__annotations__") or {})
    declared = {
        name: ChapterParameter(name, _annotation_name(annotation), repr(namespace.get(name)), "")
        for name, annotation in annotations.items()
    }
    values = {name: namespace[name] for name in declared if name in namespace}
    for name in injected_parameters(namespace):
        if name not in declared:
            values[name] = namespace.get(name)
    check_values(declared, values, where=where, choices=choices)


#: the text values glued so far in this kernel, by name (what :func:`key_numbers` shows)
_GLUED: dict[str, Any] = {}


def glue(name: str, variable: Any, display: bool = True) -> None:
    """``myst_nb.glue``, remembering numbers and text for :func:`key_numbers`.

    The prose's ``{glue:text}`` roles render only in the built book; a notebook run by papermill or opened in
    JupyterLab shows the same values in the output of :func:`key_numbers`.
    """
    from myst_nb import glue as myst_glue

    if isinstance(variable, (str, int, float, bool)) or type(variable).__module__ == "numpy":
        _GLUED[name] = variable
    myst_glue(name, variable, display)


def key_numbers() -> pandas.DataFrame:
    """The numbers and texts :func:`glue` put into the prose so far, one row per name, in gluing order."""
    import pandas

    return pandas.DataFrame({"value": [str(v) for v in _GLUED.values()]}, index=pandas.Index(list(_GLUED), name="name"))
