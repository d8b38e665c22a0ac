"""Command line: ``attrlab train`` (or ``python -m attrlab train``) trains or resumes one run directory."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .train import TrainConfig, train


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attrlab", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    args = parser.parse_args(argv)
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
