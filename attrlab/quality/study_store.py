"""The canonization study run job by job into a folder: resumable, and exported as the small table the book reads.

:func:`attrlab.quality.canonization.run_canonization_study` holds every score in memory and stops with its process;
the full study (four models, three methods, canonized or not: 24 jobs) runs for tens of minutes on this machine, so
:func:`run_stored_study` stores each finished (model, method, canonized) job as its own table (temporary file, then
rename) and a rerun computes only the jobs not stored yet. The folder's ``setup.json`` fixes the image set and the
metric seed, so a resumed run cannot mix image sets. :func:`export_study` writes the bootstrap summary
(:func:`attrlab.quality.canonization.summarise_study`) and a JSON of the run (models' test accuracies, image count,
wall time, the command) to the book's results folder. The command line is ``attrlab canonization-study``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .battery import METRICS, BatterySettings
from .canonization import STUDY_METHODS, study_job, summarise_study
from .setup import image_set

#: the models of Pahde et al.'s Table 1 here (VGG, a deeper VGG, ResNet, DenseNet)
STUDY_MODELS: tuple[str, ...] = ("vgg_small_bn", "deep_bn", "resnet_small", "densenet_small")
#: file-name-safe keys of the methods
METHOD_KEYS: dict[str, str] = {"EB": "eb", "LRP-α2β1": "lrp-a2b1", "LRP-ε+": "lrp-eplus"}
#: the exported table and its description in the results folder
SUMMARY_FILE = "canonization_study.csv"
INFO_FILE = "canonization_study.json"


@dataclass(frozen=True)
class StudySetup:
    """What a stored study explains: its models, the size and seed of its image set, the seed of the metrics.

    Parameters
    ----------
    models : tuple of str
        Registry names of the models.
    images : int
        Test canvases (:func:`attrlab.quality.setup.image_set`).
    image_seed : int
        Seed of the image set.
    metric_seed : int
        Seed of the metrics' random draws (:meth:`BatterySettings.scaled`).
    methods : tuple of str
        Labels of :data:`attrlab.quality.canonization.STUDY_METHODS`.
    metrics : tuple of str
        Metrics of :data:`attrlab.quality.battery.METRICS`.
    """

    models: tuple[str, ...] = STUDY_MODELS
    images: int = 100
    image_seed: int = 0
    metric_seed: int = 0
    methods: tuple[str, ...] = field(default=tuple(STUDY_METHODS))
    metrics: tuple[str, ...] = field(default=tuple(METRICS))

    def __post_init__(self) -> None:
        from ..models import MODELS

        unknown = [m for m in self.models if m not in MODELS]
        if unknown or not self.models:
            raise ValueError(f"unknown models {unknown or list(self.models)}; valid choices: {', '.join(MODELS)}")
        bad = [m for m in self.methods if m not in STUDY_METHODS]
        if bad or not self.methods:
            raise ValueError(f"unknown methods {bad or list(self.methods)}; valid choices: {', '.join(STUDY_METHODS)}")
        odd = [m for m in self.metrics if m not in METRICS]
        if odd or not self.metrics:
            raise ValueError(f"unknown metrics {odd or list(self.metrics)}; valid choices: {', '.join(METRICS)}")
        if not isinstance(self.images, int) or self.images < 2:
            raise ValueError(f"images must be an int >= 2 (bootstrap intervals), got {self.images!r}")

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySetup:
        values: dict[str, Any] = {key: tuple(v) if isinstance(v, list) else v for key, v in data.items()}
        return cls(**values)

    def jobs(self) -> list[tuple[str, str, bool]]:
        """Every (model, method, canonized), models slowest."""
        return [(model, method, canon) for model in self.models for method in self.methods for canon in (False, True)]

    def settings(self) -> BatterySettings:
        """The metrics' parameters: Pahde et al.'s, scaled to 64 x 64 canvases."""
        return BatterySettings.scaled(64, seed=self.metric_seed)


def job_key(model: str, method: str, canonized: bool) -> str:
    """A file-name-safe name of a job, e.g. ``resnet_small_lrp-eplus_canon``."""
    return f"{model}_{METHOD_KEYS[method]}_{'canon' if canonized else 'orig'}"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def stored_setup(output: str | Path) -> StudySetup | None:
    """The setup of the study stored in ``output`` (None when there is none)."""
    path = Path(output) / "setup.json"
    return StudySetup.from_dict(json.loads(path.read_text())) if path.exists() else None


@dataclass
class StudyRun:
    """The outcome of :func:`run_stored_study`: the jobs computed now and those found finished."""

    computed: list[str]
    skipped: list[str]
    wall_seconds: float


def run_stored_study(
    output: str | Path,
    setup: StudySetup,
    models: Mapping[str, nn.Module],
    methods: Sequence[str] | None = None,
    canonized: Sequence[bool] = (False, True),
    progress: bool = False,
) -> StudyRun:
    """Run every job of ``setup``'s models in ``models`` not stored in ``output`` yet; each finished job is stored at
    once, so processes given different models can share one folder.

    Parameters
    ----------
    output : str or Path
        The study folder (created; reopened to resume).
    setup : StudySetup
        Models, image set and seeds; must equal the stored setup when resuming.
    models : mapping of str to nn.Module
        The trained models by registry name (some or all of ``setup``'s), in eval mode; their jobs run on their
        device, the other models' jobs are left as they are.
    methods : sequence of str, optional
        Run only these methods' jobs (default: all of ``setup``'s).
    canonized : sequence of bool
        Run only the jobs of these canonization states.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    StudyRun
    """
    from tqdm.auto import tqdm

    output = Path(output)
    unknown = [m for m in models if m not in setup.models]
    if unknown:
        raise ValueError(f"models {unknown} are not in the study; its models are {list(setup.models)}")
    stored = stored_setup(output)
    if stored is not None and stored != setup:
        raise ValueError(f"{output} holds a study with {stored.to_dict()}; it cannot change to {setup.to_dict()}")
    scores = output / "scores"
    scores.mkdir(parents=True, exist_ok=True)
    if stored is None:
        _write_atomic(output / "setup.json", json.dumps(setup.to_dict(), indent=1))
    started = time.perf_counter()
    images = image_set(setup.images, seed=setup.image_seed)
    settings = setup.settings()
    computed, skipped = [], []
    methods = setup.methods if methods is None else tuple(methods)
    jobs = [job for job in setup.jobs() if job[0] in models and job[1] in methods and job[2] in canonized]
    for model_name, method, canon in tqdm(jobs, desc="canonization study", disable=not progress):
        key = job_key(model_name, method, canon)
        if (scores / f"{key}.csv").exists():
            skipped.append(key)
            continue
        model = models[model_name]
        device = next(model.parameters()).device
        job_started, cpu_started = time.perf_counter(), time.process_time()
        table = study_job(model_name, model, method, canon, images.to(device), settings, setup.metrics)
        timing = {
            "wall_seconds": time.perf_counter() - job_started,
            "cpu_seconds": time.process_time() - cpu_started,
            "finished": time.time(),  # the span of a study run in several processes is from these
        }
        _write_atomic(scores / f"{key}.json", json.dumps(timing))
        _write_atomic(scores / f"{key}.csv", table.to_csv(index=False))  # last: its presence marks the job done
        computed.append(key)
    return StudyRun(computed, skipped, time.perf_counter() - started)


def stored_scores(output: str | Path) -> pd.DataFrame:
    """Every stored job's per-image scores (columns ``model, method, canonized, metric, image, value``)."""
    files = sorted((Path(output) / "scores").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no stored jobs in {Path(output) / 'scores'}")
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def export_study(
    output: str | Path,
    directory: str | Path,
    accuracies: Mapping[str, float],
    command: Sequence[str] = (),
    n_resamples: int = 2000,
    seed: int = 0,
    partial: bool = False,
) -> list[Path]:
    """Write the study's summary (:data:`SUMMARY_FILE`) and its description (:data:`INFO_FILE`).

    Parameters
    ----------
    output : str or Path
        The study folder of :func:`run_stored_study`; every job of its setup must be stored (unless ``partial``).
    directory : str or Path
        Where the two files go (created).
    accuracies : mapping of str to float
        Each model's test accuracy, recorded with the table.
    command : sequence of str
        The command that made the study, recorded with the table.
    n_resamples, seed : int
        The bootstrap of :func:`attrlab.quality.canonization.summarise_study`.
    partial : bool
        Export the models whose jobs are all stored and list the others as ``missing_models`` in the description,
        instead of raising an error when a job is missing.

    Returns
    -------
    list of Path
        The files written.
    """
    output, directory = Path(output), Path(directory)
    setup = stored_setup(output)
    if setup is None:
        raise FileNotFoundError(f"{output} holds no study (no setup.json)")
    missing = [job_key(*job) for job in setup.jobs() if not (output / "scores" / f"{job_key(*job)}.csv").exists()]
    if missing and not partial:
        raise ValueError(f"the study in {output} is not complete; jobs missing: {missing}")
    incomplete = [model for model in setup.models if any(key.startswith(f"{model}_") for key in missing)]
    models = [model for model in setup.models if model not in incomplete]
    if not models:
        raise ValueError(f"no model of the study in {output} has all its jobs stored; jobs missing: {missing}")
    keys = [job_key(*job) for job in setup.jobs() if job[0] in models]
    scores = pd.concat([pd.read_csv(output / "scores" / f"{key}.csv") for key in keys], ignore_index=True)
    summary = summarise_study(scores, n_resamples=n_resamples, seed=seed)
    timings = {key: json.loads((output / "scores" / f"{key}.json").read_text()) for key in keys}
    finished = {
        key: t.get("finished", (output / "scores" / f"{key}.json").stat().st_mtime) for key, t in timings.items()
    }
    span = max(finished.values()) - min(finished[key] - t["wall_seconds"] for key, t in timings.items())
    info = {
        "setup": setup.to_dict(),
        "models": models,
        "missing_models": incomplete,
        "accuracies": {model: float(accuracy) for model, accuracy in accuracies.items()},
        "wall_seconds": span,  # first job's start to last job's end (jobs may run in parallel processes)
        "job_wall_seconds": sum(t["wall_seconds"] for t in timings.values()),
        "cpu_seconds": sum(t["cpu_seconds"] for t in timings.values()),
        "model_wall_seconds": {
            model: sum(t["wall_seconds"] for k, t in timings.items() if k.startswith(f"{model}_")) for model in models
        },
        "n_resamples": n_resamples,
        "command": " ".join(command),
    }
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / SUMMARY_FILE, directory / INFO_FILE]
    _write_atomic(written[0], summary.to_csv(index=False, float_format="%.6g"))
    _write_atomic(written[1], json.dumps(info, indent=1, ensure_ascii=False))
    return written


__all__ = [
    "INFO_FILE",
    "METHOD_KEYS",
    "STUDY_MODELS",
    "SUMMARY_FILE",
    "StudyRun",
    "StudySetup",
    "export_study",
    "job_key",
    "run_stored_study",
    "stored_scores",
    "stored_setup",
]
