"""Command line of attrlab (also ``python -m attrlab``): ``train`` one run, ``run`` a chapter sweep, build the ``book``.

- ``attrlab train --run-dir DIR [--epochs N ...]`` trains or resumes one run directory.
- ``attrlab run SWEEP.yml [--scheduler ADDRESS] [--workers N] [--dry-run]`` executes a chapter over a parameter grid
  with papermill on Dask (see :mod:`attrlab.sweep`).
- ``attrlab book [--incremental] [--no-strict]`` builds the Jupyter Book into ``_build/html``, warnings as errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from .train import TrainConfig, train


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train, or resume, one run directory")
    parser.add_argument("--run-dir", required=True, help="the run directory (created, resumed or left as it is)")
    defaults = TrainConfig()
    for spec in dataclasses.fields(TrainConfig):
        if spec.name == "extra":
            continue
        default = getattr(defaults, spec.name)
        kind = {"int": int, "float": float, "str": str}.get(type(default).__name__, int)
        parser.add_argument(f"--{spec.name.replace('_', '-')}", type=kind, default=default, help=f"default {default}")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_run(subparsers) -> None:
    parser = subparsers.add_parser("run", help="execute a chapter over a parameter grid (papermill on Dask)")
    parser.add_argument("sweep", help="the sweep's YAML file (keys: chapter, output, grid, fixed)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler (default: a new LocalCluster)")
    parser.add_argument("--workers", type=_positive_int, help="LocalCluster workers (default: one per point, at most the cores)")
    parser.add_argument("--dry-run", action="store_true", help="validate and list the points, run nothing")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_book(subparsers) -> None:
    parser = subparsers.add_parser("book", help="build the Jupyter Book into _build/html (warnings are errors)")
    parser.add_argument("--root", help="the repository root (default: the folder above the cwd holding _config.yml)")
    parser.add_argument("--incremental", action="store_true",
                        help="re-read only changed pages (faster, but warnings of unchanged pages are not repeated)")
    parser.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    parser.add_argument("--builder", default="html", help="a jupyter-book builder (default html)")


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise SystemExit('attrlab book: jupyter-book is not installed; run pip install -e ".[book]"')
    return found


def build_book(root: str | Path | None = None, incremental: bool = False, strict: bool = True,
               builder: str = "html") -> int:
    """Build the book of the repository at ``root`` into ``<root>/_build/<builder>``; return the exit code.

    By default every page is read again (executed chapters still come from the cache), so a warning fails every
    build, not only the one that first met it.
    """
    from .chapters import book_root

    root = Path(root).resolve() if root else book_root()
    command = [
        _jupyter_book(), "build", str(root / "book"), "--config", str(root / "_config.yml"),
        "--toc", str(root / "book" / "_toc.yml"), "--path-output", str(root), "--builder", builder,
    ]
    if strict:
        command += ["-W", "--keep-going"]
    if not incremental:
        command.append("--all")
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=root)


def _run(args: argparse.Namespace) -> int:
    from .sweep import Sweep, run_sweep

    sweep = Sweep.from_yaml(args.sweep)
    points = sweep.points()
    if args.dry_run:
        for point in points:
            status = "done" if point.done else "to run"
            print(f"{point.name}: {status} -> {point.notebook}")
        print(f"{len(points)} points, {sum(not p.done for p in points)} to run; parameters valid")
        return 0
    result = run_sweep(sweep, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress)
    print(f"{len(result.done)} executed, {len(result.skipped)} already finished, {len(result.failed)} failed; "
          f"notebooks in {sweep.output}")
    for name, error in result.failed.items():
        print(f"FAILED {name} (see {sweep.output / (name + '.failed.ipynb')}):\n  {error}", file=sys.stderr)
    return 1 if result.failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attrlab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_run(subparsers)
    _add_book(subparsers)
    args = parser.parse_args(argv)
    if args.command == "run":
        from .sweep import SweepError
        from .chapters import ParameterError

        try:
            return _run(args)
        except (SweepError, ParameterError, FileNotFoundError) as err:
            print(f"attrlab run: {err}", file=sys.stderr)
            return 2
    if args.command == "book":
        return build_book(args.root, incremental=args.incremental, strict=not args.no_strict, builder=args.builder)
    if args.command == "train":
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "extra"}
        try:
            config = TrainConfig(**values)
        except ValueError as err:
            parser.error(str(err))
        run = train(args.run_dir, config, progress=not args.no_progress)
        print(f"{run}: {len(run.metrics)} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
