"""Parameter sweeps: one chapter executed by papermill for every point of a parameter grid, in parallel on Dask.

A sweep is described in YAML (paths relative to the YAML file)::

    chapter: book/training.ipynb      # a chapter notebook (its paired .md is accepted and mapped to the .ipynb)
    output: runs/sweeps/depth         # where executed notebooks and run directories go
    grid: {model: [shallow, deep], seed: [0, 1]}   # every combination, in the order written
    fixed: {epochs: 10}               # the same for every point
    description: "depth against seed" # optional free text

Every name and value is checked against the chapter's ``parameters`` cell before anything runs. Point
``model=deep, seed=1`` becomes ``<output>/model-deep_seed-1.ipynb``, with its run directory
``<output>/model-deep_seed-1/`` when the chapter has a ``run_dir`` parameter the sweep does not set. A notebook is
executed under a temporary name and renamed when it has finished; ``<output>/<point>.done.json`` then marks the point
finished, so rerunning an interrupted sweep skips it (and removes the temporary notebooks a killed sweep left
behind; run one sweep per output folder at a time). A failing point is kept as ``<output>/<point>.failed.ipynb``.

Each point runs in its own Jupyter kernel, started by a Dask task: a threaded ``LocalCluster`` by default (the
work happens in the kernels, so worker threads only wait), or any cluster by its scheduler address, provided the
workers see the same file system.

On GPUs (``gpus=True``, ``attrlab run --gpus``) every visible GPU gets one worker process of its own whose
``CUDA_VISIBLE_DEVICES`` names that GPU alone, so the kernels it starts see one device each and a sweep uses every
GPU once at a time; points ask for the worker resource ``GPU=1``. On an existing cluster (``--scheduler``) start each
GPU worker with ``--resources GPU=1`` and its own ``CUDA_VISIBLE_DEVICES`` (dask-cuda's ``dask cuda worker`` sets
the latter).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .chapters import ParameterError, chapter_parameters, check_values
from .runstore import RunStore, atomic_write_text

SPEC_KEYS = ("chapter", "output", "grid", "fixed", "description")  # description: free text
#: seconds to wait for the Dask scheduler given by its address before giving up
SCHEDULER_TIMEOUT = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


class SweepError(RuntimeError):
    """A sweep cannot start (bad description) or some of its points failed."""


def expand_grid(grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every combination of the ``grid`` values (first key varies slowest), each merged with ``fixed``."""
    fixed = dict(fixed or {})
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise SweepError(f"grid values are lists; {name!r} has {values!r} (put single values under 'fixed')")
        if len(values) == 0:
            raise SweepError(f"grid parameter {name!r} has no values")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"parameters {both} are both in 'grid' and in 'fixed'; keep each in one of them")
    names = list(grid)
    return [{**dict(zip(names, values, strict=True)), **fixed} for values in itertools.product(*grid.values())]


def point_name(values: Mapping[str, Any]) -> str:
    """A file-name-safe name for a point: ``{"model": "deep", "seed": 1}`` -> ``model-deep_seed-1``."""
    if not values:
        return "default"
    parts = []
    for name, value in values.items():
        text = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else str(value)
        parts.append(f"{name}-{_UNSAFE.sub('-', text).strip('-') or 'empty'}")
    return "_".join(parts)


@dataclass(frozen=True)
class Point:
    """One grid point: its name, every parameter it passes to the chapter, and where its files go."""

    name: str
    label: str  #: the grid values as "model=deep, seed=1", appended to the executed notebook's title
    parameters: dict[str, Any]
    output: Path

    @property
    def notebook(self) -> Path:
        return self.output / f"{self.name}.ipynb"

    @property
    def marker(self) -> Path:
        return self.output / f"{self.name}.done.json"

    @property
    def failed_notebook(self) -> Path:
        return self.output / f"{self.name}.failed.ipynb"

    @property
    def done(self) -> bool:
        return self.marker.is_file() and self.notebook.is_file()


@dataclass
class Sweep:
    """A chapter, a parameter grid and an output folder; see the module docstring for the YAML form."""

    chapter: Path
    output: Path
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.chapter = Path(self.chapter)
        self.output = Path(self.output)
        if self.chapter.suffix == ".md" and self.chapter.with_suffix(".ipynb").is_file():
            self.chapter = self.chapter.with_suffix(".ipynb")  # papermill needs the paired notebook
        if not self.chapter.is_file():
            raise SweepError(f"chapter notebook {self.chapter} does not exist")

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], base: str | Path = ".") -> Sweep:
        """A sweep from its YAML mapping; relative ``chapter`` and ``output`` paths are taken from ``base``."""
        if not isinstance(spec, Mapping):
            raise SweepError(f"a sweep description is a mapping with keys {', '.join(SPEC_KEYS)}; got {spec!r}")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        missing = [key for key in ("chapter", "output") if key not in spec]
        if unknown or missing:
            raise SweepError(
                f"sweep description: unknown keys {unknown}, missing keys {missing}; valid keys: {', '.join(SPEC_KEYS)}"
            )
        for key in ("grid", "fixed"):
            if not isinstance(spec.get(key) or {}, Mapping):
                raise SweepError(f"'{key}' maps parameter names to values; got {spec[key]!r}")
        base = Path(base)
        return cls(
            base / spec["chapter"], base / spec["output"], dict(spec.get("grid") or {}), dict(spec.get("fixed") or {})
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Sweep:
        path = Path(path)
        if not path.is_file():
            raise SweepError(f"sweep file {path} does not exist")
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
            problem = getattr(err, "problem", None) or str(err)
            raise SweepError(f"{where}: not valid YAML ({' '.join(str(problem).split())})") from err
        try:
            return cls.from_dict(spec, base=path.parent)
        except SweepError as err:
            raise SweepError(f"{path}: {err}") from err

    def points(self) -> list[Point]:
        """Every point, validated against the chapter's ``parameters`` cell (a :class:`ParameterError` if not)."""
        declared = chapter_parameters(self.chapter)
        points = []
        for values in expand_grid(self.grid, self.fixed):
            varying = {key: values[key] for key in self.grid}
            name = point_name(varying)
            label = ", ".join(f"{key}={value}" for key, value in varying.items()) or "default parameters"
            parameters = dict(values)
            if "run_dir" in declared and "run_dir" not in parameters:
                parameters["run_dir"] = str((self.output / name).resolve())
            check_values(declared, parameters, where=f"chapter {self.chapter} (point {name})")
            points.append(Point(name, label, parameters, self.output.resolve()))
        names = [point.name for point in points]
        if len(set(names)) != len(names):
            clashing = sorted({name for name in names if names.count(name) > 1})
            raise SweepError(f"different grid values give the same point names {clashing}; make the values distinct")
        return points


def _prepare_for_book(notebook: Any, label: str) -> None:
    """Make an executed point notebook fit into a book next to the chapter and the other points.

    Its first top-level heading gets ``label`` appended, so each page names its point, and the figure labels
    (``mystnb.figure.name``) are dropped, since a label may exist only once in a book.
    """
    titled = False
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and not titled:
            lines = cell.source.splitlines()
            for index, line in enumerate(lines):
                if line.startswith("# "):
                    lines[index] = f"{line} ({label})"
                    cell.source = "\n".join(lines)
                    titled = True
                    break
        cell.metadata.get("mystnb", {}).get("figure", {}).pop("name", None)


def execute_point(chapter: str, point: Point) -> dict[str, Any]:
    """Run ``chapter`` with the point's parameters in a new kernel (the Dask task); return its outcome."""
    import nbformat
    import papermill

    point.output.mkdir(parents=True, exist_ok=True)
    temporary = point.output / f".{point.name}.running-{uuid.uuid4().hex[:8]}.ipynb"
    started = time.perf_counter()
    try:
        try:
            papermill.execute_notebook(
                chapter,
                str(temporary),
                parameters=point.parameters,
                cwd=str(Path(chapter).parent),
                progress_bar=False,
                log_output=False,
            )
        except Exception as err:  # papermill raises its own error for a failing cell, others for kernel trouble
            if temporary.is_file():
                os.replace(temporary, point.failed_notebook)
            run_dir = point.parameters.get("run_dir")
            if isinstance(run_dir, str) and run_dir:
                RunStore(run_dir).remove_if_stub()  # a point that failed before its first step leaves no directory
            return {"name": point.name, "status": "failed", "error": f"{type(err).__name__}: {err}"[:4000]}
        executed = nbformat.read(temporary, as_version=4)
        _prepare_for_book(executed, point.label)
        nbformat.write(executed, temporary)
        os.replace(temporary, point.notebook)
    finally:
        temporary.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    point.failed_notebook.unlink(missing_ok=True)
    record = {"chapter": chapter, "parameters": point.parameters, "seconds": round(seconds, 3)}
    atomic_write_text(point.marker, json.dumps(record, indent=2, default=str) + "\n")
    return {"name": point.name, "status": "done", "seconds": seconds}


@dataclass
class SweepResult:
    """What a call of :func:`run_sweep` did, by point name."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _kernel_threads(workers: int) -> Iterator[None]:
    """Give each of ``workers`` concurrent kernels its share of the CPU cores (unless OMP_NUM_THREADS is set).

    Kernels inherit the environment; without this every kernel's torch would use all cores at once.
    """
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (an existing setting is kept and narrowed).

    The count comes from ``torch.cuda.device_count()``, which asks the driver without starting CUDA in this process.
    """
    import torch

    count = torch.cuda.device_count()
    listed = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in os.environ else [str(index) for index in range(count)]


def gpu_worker_specs(gpus: Sequence[str], cpus: int | None = None) -> dict[str, dict[str, Any]]:
    """Dask worker specs, one single-threaded worker process per GPU with ``CUDA_VISIBLE_DEVICES`` set to it."""
    from distributed import Nanny

    threads = str(max(1, (cpus or os.cpu_count() or 1) // max(1, len(gpus))))
    return {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)},
                "dashboard_address": None,
            },
        }
        for gpu in gpus
    }


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, gpus: bool = False) -> Iterator[Any]:
    """A Dask client of the cluster at ``scheduler``, of a new threaded LocalCluster with ``workers`` workers, or
    (``gpus=True``, no scheduler) of a new cluster with one worker process per visible GPU."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as err:
            raise SweepError(
                f"cannot reach a Dask scheduler at {scheduler!r} within {SCHEDULER_TIMEOUT} s "
                f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); is it running, and is the address right?"
            ) from err
        with client:
            yield client
        return
    if gpus:
        from distributed import Scheduler, SpecCluster

        found = visible_gpus()
        if not found:
            raise SweepError("--gpus was given but no GPU is visible (torch.cuda.device_count() is 0)")
        specs = gpu_worker_specs(found)
        scheduler_spec = {"cls": Scheduler, "options": {"dashboard_address": None}}
        with SpecCluster(workers=specs, scheduler=scheduler_spec) as cluster, Client(cluster) as client:
            yield client
        return
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise SweepError(f"workers must be a positive number, got {workers}")
    with (
        _kernel_threads(workers),
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run_sweep(
    sweep: Sweep,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    gpus: bool = False,
) -> SweepResult:
    """Validate every point, skip the finished ones and execute the rest on Dask; failures do not stop the others.

    ``gpus=True`` runs each point on one GPU of its own (one worker per visible GPU; see the module docstring).
    """
    if gpus and workers is not None:
        raise SweepError("workers and gpus exclude each other: with gpus there is one worker per visible GPU")
    points = sweep.points()
    result = SweepResult(skipped=[point.name for point in points if point.done])
    todo = [point for point in points if not point.done]
    if not todo:
        return result
    for point in todo:  # leftovers of a killed sweep (one sweep per output folder at a time)
        for stale in point.output.glob(f".{point.name}.running-*.ipynb"):
            stale.unlink()
    chapter = str(sweep.chapter.resolve())
    with dask_client(scheduler, workers or min(len(todo), os.cpu_count() or 1), gpus=gpus) as client:
        from distributed import as_completed

        resources = {"GPU": 1} if gpus else None
        futures = [
            client.submit(
                execute_point,
                chapter,
                point,
                key=f"attrlab-{point.name}-{uuid.uuid4().hex[:8]}",
                pure=False,
                resources=resources,
            )
            for point in todo
        ]
        bar = tqdm(total=len(futures), desc=f"sweep {sweep.output.name}", disable=not progress)
        for future in as_completed(futures):
            outcome = future.result()
            if outcome["status"] == "done":
                result.done.append(outcome["name"])
            else:
                result.failed[outcome["name"]] = outcome["error"]
            bar.update(1)
        bar.close()
    return result


__all__ = [
    "ParameterError",
    "Point",
    "Sweep",
    "SweepError",
    "SweepResult",
    "dask_client",
    "execute_point",
    "expand_grid",
    "gpu_worker_specs",
    "point_name",
    "run_sweep",
    "visible_gpus",
]
