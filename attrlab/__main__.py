"""Command line of attrlab (also python -m attrlab): train one run, run a chapter sweep, build the book.

  attrlab train --run-dir DIR [--epochs N ...]   train, or resume, one run directory
  attrlab run SWEEP.yml [--workers N | --gpus] [--dry-run]
                                                  execute a chapter over a parameter grid (papermill on Dask)
  attrlab book [--incremental] [--no-strict]      build the Jupyter Book into _build/html, warnings as errors
  attrlab gamma-search OUTPUT [--run RUN_DIR] [--images N] [--scheduler ADDRESS]
                                                  the LRP gamma search of Pahde et al. (2023) on Dask, resumable
  attrlab canonization-study OUTPUT [--images N] [--only MODEL] [--export DIR]
                                                  the canonization study of Pahde et al. (2023), resumable

Errors are reported in one line (exit status 2); add --debug for the full traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

from .device import reuse_freed_memory
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


def _flag(text: str) -> bool:
    """argparse type: a boolean option's value, true/false (also 1/0, yes/no)."""
    choices = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return choices[text.lower()]


#: TrainConfig fields that are not options: ``extra`` (free-form) and ``objective`` (the name of a callable that
#: only Python code can pass to :func:`attrlab.train.train`)
_NOT_OPTIONS = ("extra", "objective")

#: help texts of the TrainConfig fields on the command line (choices and defaults are appended)
_TRAIN_HELP = {
    "dataset": "the dataset; digits is embedded, the others need their files in --data-root",
    "model": "the architecture",
    "epochs": "passes over the training split",
    "batch_size": "images per optimiser step",
    "lr": "learning rate of the optimiser",
    "optimizer": "adam, or sgd with momentum 0.9",
    "seed": "seeds the initial weights, the minibatch order and a random attribution set",
    "eval_every": "evaluate the test and attribution sets every this many steps",
    "eval_subset": "evaluate on a fixed random subset of this many test images (default: the whole test set)",
    "attr_per_class": "attribution-set images per class and split",
    "attr_selection": "how the attribution set is chosen",
    "checkpoint_every": "write a checkpoint at least every this many steps",
    "checkpoint_seconds": "and at least every this many seconds of training (0: steps only)",
    "device": "auto (CUDA when available), cpu, cuda or cuda:N",
    "data_root": "folder holding the downloaded datasets (must exist; not used for digits)",
    "deterministic": "true: deterministic kernels (CUDA included) for the run, false: the fastest ones",
    "loss": "the training loss (bce: binary cross-entropy on sigmoid(logit / temperature + b), as B-cos networks)",
    "temperature": "the logits' temperature T of the loss (divides the logits)",
    "weight_decay": "decoupled weight decay of the optimiser (0: none)",
    "lr_schedule": "learning-rate schedule over the run",
    "warmup_epochs": "epochs of linear warm-up of the cosine schedule",
    "lr_min": "the cosine schedule's final learning rate",
    "lr_step_epochs": "epochs between two learning-rate drops of the step schedule",
    "lr_gamma": "factor of each learning-rate drop of the step schedule",
    "augment": "on-device augmentation of each training batch (crop: random shifts in a padded frame)",
    "augment_pad": "pixels of padding for the random crops",
}


def _train_choices() -> dict[str, list[str]]:
    from .data import DATASETS, SELECTIONS
    from .models import available_models
    from .objectives import AUGMENTATIONS, LOSSES, SCHEDULES
    from .train import OPTIMIZERS

    return {
        "dataset": list(DATASETS),
        "model": available_models(),
        "optimizer": list(OPTIMIZERS),
        "attr_selection": list(SELECTIONS),
        "loss": list(LOSSES),
        "lr_schedule": list(SCHEDULES),
        "augment": list(AUGMENTATIONS),
    }


def _add_train(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "train",
        parents=[common],
        help="train, or resume, one run directory",
        description="Train, or resume, one run directory with the seed code's setup.",
    )
    parser.add_argument(
        "--run-dir",
        required=True,
        metavar="DIR",
        help="the run directory: created, resumed from its newest checkpoint, or reopened if finished",
    )
    defaults = TrainConfig()
    choices = _train_choices()
    for spec in dataclasses.fields(TrainConfig):
        if spec.name in _NOT_OPTIONS:
            continue
        default = getattr(defaults, spec.name)
        kind = {"int": int, "float": float, "str": str, "bool": _flag}.get(type(default).__name__, int)
        text = _TRAIN_HELP.get(spec.name, spec.name.replace("_", " "))
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            type=kind,
            default=default,
            choices=choices.get(spec.name),
            help=f"{text} (default: {default})",
        )
    parser.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also log losses, accuracies and the config to TensorBoard event files in DIR",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_run(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "run",
        parents=[common],
        help="execute a chapter over a parameter grid (papermill on Dask)",
        description="Execute a chapter for every point of a parameter grid, in parallel.",
    )
    parser.add_argument("sweep", help="the sweep's YAML file (keys: chapter, output, grid, fixed, description)")
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of an existing Dask scheduler, e.g. tcp://host:8786 (default: a new LocalCluster)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="LocalCluster workers, a positive integer (default: one per point, at most the CPU cores)",
    )
    parser.add_argument(
        "--gpus", action="store_true", help="one worker per visible GPU, each pinned to its GPU by CUDA_VISIBLE_DEVICES"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate every point's parameters and list them, run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_book(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "book",
        parents=[common],
        help="build the Jupyter Book into _build/html (warnings are errors)",
        description="Build the Jupyter Book of the repository, executing the chapters.",
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="the repository root (default: the cwd or the folder above it holding _config.yml)",
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="re-read only changed pages (faster, but warnings of unchanged pages are not repeated)",
    )
    parser.add_argument("--no-strict", action="store_true", help="do not turn warnings into errors")
    parser.add_argument(
        "--builder",
        default="html",
        metavar="NAME",
        help="a jupyter-book builder: html, singlehtml, pdfhtml, latex, ... (default: html)",
    )


def _add_gamma_search(subparsers, common) -> None:
    from .quality.gamma import GAMMAS, LAYER_GROUPS

    parser = subparsers.add_parser(
        "gamma-search",
        parents=[common],
        help="the LRP gamma search of Pahde et al. (2023): per-layer-group gammas, canonized or not, on Dask",
        description="Score every per-layer-group gamma configuration with the quality metrics; resumable: a rerun "
        "computes only the configurations not stored in OUTPUT yet.",
    )
    parser.add_argument("output", help="the search folder (created, or reopened to resume)")
    parser.add_argument(
        "--run",
        metavar="RUN_DIR",
        help="a finished training run whose model is explained (default: train one into OUTPUT/train)",
    )
    parser.add_argument(
        "--model", choices=sorted(LAYER_GROUPS), help="the model (default: vgg_small_bn, or the stored search's)"
    )
    parser.add_argument(
        "--images", type=_positive_int, help="size of the image set (default: 8, or the stored search's)"
    )
    parser.add_argument("--image-seed", type=int, help="seed of the image set (default: 0, or the stored search's)")
    parser.add_argument(
        "--gammas",
        default=",".join(f"{g:g}" for g in GAMMAS),
        help="comma-separated gamma values of each group (default: %(default)s)",
    )
    parser.add_argument(
        "--canonized",
        default="both",
        choices=("both", "yes", "no"),
        help="BatchNorm canonized, passed, or both (default: both)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of an existing Dask scheduler, e.g. tcp://host:8786 (default: a new LocalCluster)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, metavar="N", help="LocalCluster worker threads (default: the CPU cores)"
    )
    parser.add_argument("--epochs", type=_positive_int, default=8, help="training epochs without --run (default: 8)")
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="when the grid is complete, write its table and timing summary to DIR (gamma_search.csv, "
        "gamma_search_timing.json)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _gamma_search(args: argparse.Namespace) -> int:
    from .quality.gamma import gamma_grid
    from .quality.search import SearchSetup, run_search, stored_setup
    from .quality.setup import train_quality_model

    try:
        gammas = [float(g) for g in args.gammas.split(",")]
    except ValueError as err:
        raise ValueError(f"--gammas must be comma-separated numbers, got {args.gammas!r}") from err
    states = {"both": (False, True), "yes": (True,), "no": (False,)}[args.canonized]
    configs = gamma_grid(gammas, states)
    output = Path(args.output)
    given = {"model": args.model, "images": args.images, "image_seed": args.image_seed}
    given = {name: value for name, value in given.items() if value is not None}
    setup = stored_setup(output)
    if setup is None:
        setup = SearchSetup(**given)
    else:  # resuming: the stored setup, which options may repeat but not change
        changed = {name: value for name, value in given.items() if getattr(setup, name) != value}
        if changed:
            raise ValueError(f"{output} holds a search with {setup.to_dict()}; it cannot change {changed}")
    model = None
    if not (output / "model.pt").exists():
        if args.run:
            from .train import Run

            model = Run(args.run).load_model(device="cpu").eval()
        else:
            model = train_quality_model(output / "train", model=args.model, epochs=args.epochs)
    result = run_search(
        output,
        configs,
        setup,
        model=model,
        scheduler=args.scheduler,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(
        f"{len(result.computed)} computed, {len(result.skipped)} already finished, {len(result.failed)} failed "
        f"in {result.wall_seconds:.1f} s; rows in {output / 'configs'}"
    )
    for key, error in result.failed.items():
        print(f"FAILED {key}: {error}", file=sys.stderr)
    if args.export and not result.failed:
        from .quality.search import export_results

        for path in export_results(output, args.export):
            print(f"wrote {path}")
    return 1 if result.failed else 0


def _assignments(values: list[str] | None, option: str, convert) -> dict:
    """``MODEL=VALUE`` options as a dict, each value converted."""
    result = {}
    for text in values or []:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{option} takes MODEL=VALUE, got {text!r}")
        result[name] = convert(value)
    return result


def _add_canonization_study(subparsers, common) -> None:
    from .quality.study_store import STUDY_MODELS, StudySetup

    parser = subparsers.add_parser(
        "canonization-study",
        parents=[common],
        help="the canonization study of Pahde et al. (2023, Table 1) on the canvas models, resumable",
        description="Train (or reopen) each model on the canvases, then score every method, canonized or not, on "
        "the image set; each finished (model, method, canonized) job is stored in OUTPUT/scores and never "
        "recomputed. Processes given different --only models can share OUTPUT.",
    )
    parser.add_argument("output", help="the study folder (created, or reopened to resume)")
    parser.add_argument(
        "--models", default=",".join(STUDY_MODELS), help="comma-separated models of the study (default: %(default)s)"
    )
    parser.add_argument("--only", help="comma-separated models whose jobs this process runs (default: all)")
    parser.add_argument(
        "--canonized",
        default="both",
        choices=("both", "yes", "no"),
        help="run only the canonized jobs, only the others, or both (default: both)",
    )
    parser.add_argument(
        "--methods", help="comma-separated methods whose jobs this process runs: eb, lrp-a2b1, lrp-eplus (default: all)"
    )
    parser.add_argument(
        "--images", type=_positive_int, default=StudySetup.images, help="test canvases (default: %(default)s)"
    )
    parser.add_argument("--image-seed", type=int, default=0, help="seed of the image set (default: 0)")
    parser.add_argument("--metric-seed", type=int, default=0, help="seed of the metrics' draws (default: 0)")
    parser.add_argument("--epochs", type=_positive_int, default=8, help="training epochs (default: 8)")
    parser.add_argument(
        "--epochs-of", action="append", metavar="MODEL=N", help="training epochs of one model (repeatable)"
    )
    parser.add_argument(
        "--weights",
        action="append",
        metavar="MODEL=PATH",
        help="a stored state dict of one model instead of training it (repeatable)",
    )
    parser.add_argument(
        "--export",
        metavar="DIR",
        help="when every job is stored, write the summary and its description to DIR (canonization_study.csv, "
        "canonization_study.json)",
    )
    parser.add_argument(
        "--partial",
        action="store_true",
        help="with --export: export the models whose jobs are all stored, listing the others as missing",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def _canonization_study(args: argparse.Namespace) -> int:
    from .quality.setup import load_quality_model, test_accuracy, train_quality_model
    from .quality.study_store import (
        METHOD_KEYS,
        StudySetup,
        export_study,
        job_key,
        run_stored_study,
        stored_setup,
    )

    output = Path(args.output)
    setup = StudySetup(
        models=tuple(args.models.split(",")),
        images=args.images,
        image_seed=args.image_seed,
        metric_seed=args.metric_seed,
    )
    epochs = _assignments(args.epochs_of, "--epochs-of", _positive_int)
    weights = _assignments(args.weights, "--weights", Path)
    only = args.only.split(",") if args.only else list(setup.models)
    stray = [m for m in [*epochs, *weights, *only] if m not in setup.models]
    if stray:
        raise ValueError(f"models {stray} are not in the study; its models are {list(setup.models)}")

    states = {"both": (False, True), "yes": (True,), "no": (False,)}[args.canonized]
    labels = {key: label for label, key in METHOD_KEYS.items()}
    keys = args.methods.split(",") if args.methods else list(labels)
    if any(key not in labels for key in keys):
        raise ValueError(f"--methods takes {', '.join(labels)}, got {args.methods!r}")
    methods = [labels[key] for key in keys]
    stored = stored_setup(output)
    if stored is not None and stored != setup:  # before any training
        raise ValueError(f"{output} holds a study with {stored.to_dict()}; it cannot change to {setup.to_dict()}")

    def model_of(name: str):
        if name in weights:
            return load_quality_model(weights[name], name)
        epochs_of = epochs.get(name, args.epochs)
        return train_quality_model(output / "train" / name, model=name, epochs=epochs_of, progress=not args.no_progress)

    models = {name: model_of(name) for name in only}
    result = run_stored_study(output, setup, models, methods, states, progress=not args.no_progress)
    print(f"{len(result.computed)} jobs computed, {len(result.skipped)} already stored, in {result.wall_seconds:.1f} s")
    missing = [job for job in setup.jobs() if not (output / "scores" / f"{job_key(*job)}.csv").exists()]
    finished = [name for name in setup.models if all(job[0] != name for job in missing)]
    done = not missing
    if args.export and (done or (args.partial and finished)):
        accuracies = {name: test_accuracy(models[name] if name in models else model_of(name)) for name in finished}
        command = ["attrlab", "canonization-study", str(output), "--models", args.models, "--images", str(args.images)]
        command += ["--image-seed", str(args.image_seed), "--metric-seed", str(args.metric_seed)]
        command += ["--epochs", str(args.epochs)]
        command += [f"--epochs-of={name}={n}" for name, n in epochs.items()]
        command += [f"--weights={name}={path}" for name, path in weights.items()]
        command += ["--export", args.export] + (["--partial"] if args.partial and not done else [])
        for path in export_study(output, args.export, accuracies, command, partial=args.partial):
            print(f"wrote {path}")
    elif args.export:
        print("not every job is stored yet: nothing exported")
    return 0


def _jupyter_book() -> str:
    beside = Path(sys.executable).with_name("jupyter-book")
    found = str(beside) if beside.is_file() else shutil.which("jupyter-book")
    if found is None:
        raise SystemExit('attrlab book: jupyter-book is not installed; run pip install -e ".[book]"')
    return found


def build_book(
    root: str | Path | None = None, incremental: bool = False, strict: bool = True, builder: str = "html"
) -> int:
    """Build the book of the repository at ``root`` into ``<root>/_build/<builder>``; return the exit code.

    By default every page is read again (executed chapters still come from the cache), so a warning fails every
    build, not only the one that first met it.
    """
    from .chapters import book_root

    root = Path(root).resolve() if root else book_root()
    command = [
        _jupyter_book(),
        "build",
        str(root / "book"),
        "--config",
        str(root / "_config.yml"),
        "--toc",
        str(root / "book" / "_toc.yml"),
        "--path-output",
        str(root),
        "--builder",
        builder,
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
    result = run_sweep(
        sweep, scheduler=args.scheduler, workers=args.workers, progress=not args.no_progress, gpus=args.gpus
    )
    print(
        f"{len(result.done)} executed, {len(result.skipped)} already finished, {len(result.failed)} failed; "
        f"notebooks in {sweep.output}"
    )
    for name, error in result.failed.items():
        print(f"FAILED {name} (see {sweep.output / (name + '.failed.ipynb')}):\n  {error}", file=sys.stderr)
    return 1 if result.failed else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``attrlab`` command (subcommands train, run, book, gamma-search, canonization-study)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the full traceback of an error instead of its one-line message",
    )
    parser = argparse.ArgumentParser(
        prog="attrlab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of an error instead of its one-line message"
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="{train,run,book,gamma-search,canonization-study}"
    )
    _add_train(subparsers, common)
    _add_run(subparsers, common)
    _add_book(subparsers, common)
    _add_gamma_search(subparsers, common)
    _add_canonization_study(subparsers, common)
    return parser


def _command(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "gamma-search":
        return _gamma_search(args)
    if args.command == "canonization-study":
        return _canonization_study(args)
    if args.command == "book":
        return build_book(args.root, incremental=args.incremental, strict=not args.no_strict, builder=args.builder)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_OPTIONS}
    run = train(args.run_dir, TrainConfig(**values), progress=not args.no_progress, tensorboard=args.tensorboard)
    print(f"{run}: {len(run.metrics)} steps")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``attrlab`` command line; return its exit status (2 after an error, reported in one line)."""
    args = build_parser().parse_args(argv)
    reuse_freed_memory()  # this process is attrlab's own: large CPU tensors are not page-faulted in again each time
    try:
        return _command(args)
    except KeyboardInterrupt:
        print(f"attrlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every error becomes one line; --debug shows where it came from
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"attrlab {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
