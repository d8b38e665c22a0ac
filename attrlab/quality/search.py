"""The gamma search on Dask: every :class:`~attrlab.quality.gamma.GammaConfig` of a grid scored by the metric battery.

A search lives in one output folder::

    setup.json            what every configuration is evaluated on (model, image set, metric settings)
    model.pt              the model's weights (a state dict, loaded with ``weights_only=True``)
    configs/<key>.json    one finished configuration: its gammas, canonization, metric means, seconds
    results.csv           all finished configurations, one row each (written when an invocation's grid is complete)
    timing.json           wall time and counts of every invocation

Each configuration is one Dask task; the client stores its row as soon as it arrives (a temporary file, then a
rename), so a killed search keeps every finished configuration and a rerun computes only the missing ones. A rerun
must use the same setup (``setup.json`` is compared). The default cluster is the threaded ``dask.distributed``
LocalCluster of ``attrlab run`` (one torch thread per task); ``scheduler`` names an existing cluster whose workers see
the same file system.

Each task computes the maps of the whole image set for its configuration in one call and then every metric in
batched form (:func:`attrlab.quality.battery.evaluate_battery`).
"""

from __future__ import annotations

import calendar
import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..runstore import atomic_write_bytes, atomic_write_text
from .battery import SEARCH_METRICS, BatterySettings, check_metrics, evaluate_battery, summarise
from .gamma import GROUPS, GammaConfig, check_groups, gamma_composite, layer_groups
from .setup import ImageSet, image_set

RESULTS_NAME = "results.csv"


class SearchError(RuntimeError):
    """A search cannot start (bad setup, a folder of another setup) or some configurations failed."""


@dataclass(frozen=True)
class SearchSetup:
    """What every configuration of a search is evaluated on.

    Parameters
    ----------
    model : str
        Registered name of the model (its layer groups: :data:`attrlab.quality.gamma.LAYER_GROUPS`).
    images : int
        Size of the image set (:func:`attrlab.quality.setup.image_set`).
    image_seed : int
        Seed of the image set.
    settings : BatterySettings
        The metrics' parameters.
    metrics : tuple of str
        The metrics scored.
    threads : int
        Torch threads per task.
    """

    model: str = "vgg_small_bn"
    images: int = 8
    image_seed: int = 0
    settings: BatterySettings = field(default_factory=lambda: search_settings())
    metrics: tuple[str, ...] = SEARCH_METRICS
    threads: int = 1

    def __post_init__(self) -> None:
        layer_groups(self.model)
        check_metrics(self.metrics)
        if not isinstance(self.images, int) or self.images <= 0:
            raise ValueError(f"images must be a positive integer, got {self.images!r}")
        if not isinstance(self.threads, int) or self.threads <= 0:
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["metrics"] = list(self.metrics)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SearchSetup:
        values = dict(values)
        values["settings"] = BatterySettings(**values["settings"])
        values["metrics"] = tuple(values["metrics"])
        return cls(**values)


def search_settings(side: int = 64, **changes: Any) -> BatterySettings:
    """The battery settings of the search: Pahde et al.'s, scaled to ``side``, made coarser to fit 4802 runs here.

    Each configuration's cost is mostly forward passes of perturbed images and explanations of noisy copies. On the
    shared 2-core machine the search had to be cut to about a sixth of the scaled settings' cost: Region Perturbation
    with 12 regions of side ``side // 8`` (the same perturbed area as Pahde et al.'s 50 regions of 14 x 14 on
    224 x 224, about 19 %), Pixel Flipping in 8 steps of 1/8 of the pixels (instead of 1 %), and Average Sensitivity
    over 3 noisy copies (instead of 10). :meth:`BatterySettings.scaled` gives the unreduced settings.

    Parameters
    ----------
    side : int
        Image side.
    **changes
        Any other :class:`BatterySettings` field.

    Returns
    -------
    BatterySettings
    """
    reduced = {
        "patch_size": max(1, side // 8),
        "regions_evaluation": 12,
        "features_in_step": max(1, side * side // 8),
        "nr_samples": 3,
    }
    return BatterySettings.scaled(side, **{**reduced, **changes})


# ---------------------------------------------------------------------------------------------- the worker side
@lru_cache(maxsize=4)
def _loaded(weights: str, setup_json: str) -> tuple[torch.nn.Module, ImageSet]:
    """The model and the image set of a search, loaded once per worker process."""
    from ..models import build_model

    setup = SearchSetup.from_dict(json.loads(setup_json))
    images = image_set(setup.images, seed=setup.image_seed, mask=setup.settings.mask)
    model = build_model(
        setup.model, input_shape=(1, images.x.shape[-2], images.x.shape[-1]), num_classes=setup.settings.num_classes
    )
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    check_groups(model, layer_groups(setup.model))
    return model, images


def config_method(model: torch.nn.Module, model_name: str, config: GammaConfig):
    """The LRP method of one configuration (its gammas per group, BatchNorm canonized or passed)."""
    from ..lrp import LRP

    composite = gamma_composite(config, layer_groups(model_name))
    return LRP(model, composite, batchnorm=config.batchnorm)


def config_row(
    model: torch.nn.Module,
    model_name: str,
    config: GammaConfig,
    images: ImageSet,
    settings: BatterySettings,
    metrics: Sequence[str] = SEARCH_METRICS,
) -> dict[str, Any]:
    """One configuration's row: its fields, the mean of every metric over ``images``, its wall and CPU seconds.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (eval mode).
    model_name : str
        Its registry name (for its layer groups).
    config : GammaConfig
        The configuration.
    images : ImageSet
        Images, classes and masks.
    settings : BatterySettings
        The metrics' parameters.
    metrics : sequence of str
        The metrics.

    Returns
    -------
    dict
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    method = config_method(model, model_name, config)
    scores = evaluate_battery(model, images.x, images.y, images.masks, method, settings, metrics)
    return {
        **config.as_row(),
        **summarise(scores),
        "seconds": time.perf_counter() - start,  # wall time
        "cpu_seconds": time.process_time() - cpu_start,  # CPU time of the process (one torch thread per task)
    }


def evaluate_grid(
    model: torch.nn.Module,
    model_name: str,
    configs: Sequence[GammaConfig],
    images: ImageSet,
    settings: BatterySettings,
    metrics: Sequence[str] = SEARCH_METRICS,
    progress: bool = True,
) -> pd.DataFrame:
    """A small grid evaluated in this process, one row per configuration (the table :func:`read_results` gives).

    Parameters
    ----------
    model, model_name, images, settings, metrics
        As in :func:`config_row`.
    configs : sequence of GammaConfig
        The grid.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    pandas.DataFrame
    """
    rows = [
        config_row(model, model_name, config, images, settings, metrics)
        for config in tqdm(configs, desc="gamma grid", disable=not progress)
    ]
    return pd.DataFrame(rows)


def config_maps(
    model: torch.nn.Module, model_name: str, configs: pd.DataFrame, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The heatmaps (channel sums) of ``x`` for ``y`` under each configuration row of ``configs``: (K, N, H, W).

    Parameters
    ----------
    model : torch.nn.Module
        The model.
    model_name : str
        Its registry name.
    configs : pandas.DataFrame
        Rows with the columns ``low, middle, high, head, canonized``.
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) classes.

    Returns
    -------
    torch.Tensor
    """
    maps = []
    for _, row in configs.iterrows():
        low, middle, high, head = (float(row[g]) for g in GROUPS)
        config = GammaConfig(low, middle, high, head, canonized=bool(row["canonized"]))
        maps.append(config_method(model, model_name, config).attribute(x, target=y).detach().sum(1))
    return torch.stack(maps)


def evaluate_config(weights: str, setup_json: str, config: GammaConfig) -> dict[str, Any]:
    """One configuration's row: its fields, the mean of every metric over the image set, its wall and CPU seconds.

    Parameters
    ----------
    weights : str
        Path of the model's state dict.
    setup_json : str
        The :class:`SearchSetup` as JSON (a hashable key of the worker's cache).
    config : GammaConfig
        The configuration.

    Returns
    -------
    dict
    """
    setup = SearchSetup.from_dict(json.loads(setup_json))
    torch.set_num_threads(setup.threads)
    model, images = _loaded(weights, setup_json)
    return config_row(model, setup.model, config, images, setup.settings, setup.metrics)


# ---------------------------------------------------------------------------------------------- the client side
@dataclass
class SearchResult:
    """What a :func:`run_search` call did: configurations computed now, found finished, failed (key -> error)."""

    computed: list[str]
    skipped: list[str]
    failed: dict[str, str]
    wall_seconds: float
    table: pd.DataFrame


def _config_path(output: Path, config: GammaConfig) -> Path:
    return output / "configs" / f"{config.key}.json"


def prepare_search(output: str | Path, setup: SearchSetup, model: torch.nn.Module | None) -> Path:
    """Create ``output`` for ``setup`` and ``model`` (or reopen it, checking both); return the weights' path.

    Parameters
    ----------
    output : str or Path
        The search folder.
    setup : SearchSetup
        The setup; an existing folder must hold the same.
    model : torch.nn.Module, optional
        The model; needed for a new folder; checked against the stored weights when given for an existing one.

    Returns
    -------
    Path
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    setup_path, weights = output / "setup.json", output / "model.pt"
    text = json.dumps(setup.to_dict(), indent=1, sort_keys=True)
    if setup_path.exists():
        stored = json.loads(setup_path.read_text())
        if stored != json.loads(text):
            raise SearchError(
                f"{output} holds a search of another setup ({setup_path}); use a new folder or the same setup"
            )
        if model is not None:
            stored_weights = torch.load(weights, map_location="cpu", weights_only=True)
            same = all(torch.equal(stored_weights[k], v.cpu()) for k, v in model.state_dict().items())
            if not same:
                raise SearchError(f"{output} holds a search of other model weights ({weights}); use a new folder")
    else:
        if model is None:
            raise SearchError(f"{output} holds no search yet: give the model to start one")
        buffer = _state_bytes(model)
        atomic_write_bytes(weights, buffer)
        atomic_write_text(setup_path, text)
    if not weights.exists():
        raise SearchError(f"{output} lacks its model weights {weights}")
    return weights


def _state_bytes(model: torch.nn.Module) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    return buffer.getvalue()


@contextlib.contextmanager
def search_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: of the cluster at ``scheduler``, or of a new threaded LocalCluster of ``workers`` workers.

    This is the client of ``attrlab run`` (:func:`attrlab.sweep.dask_client`). Worker threads suit the search: torch
    releases the interpreter lock in its operations, and on this machine a task ran about three times slower in a
    LocalCluster worker process than in a worker thread (measured side by side, reason not found).
    """
    from ..sweep import dask_client

    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise SearchError(f"workers must be a positive integer, got {workers!r}")
    with dask_client(scheduler, workers) as client:
        yield client


def stored_setup(output: str | Path) -> SearchSetup | None:
    """The setup of the search in ``output``, None when there is none yet."""
    path = Path(output) / "setup.json"
    return SearchSetup.from_dict(json.loads(path.read_text())) if path.exists() else None


def read_results(output: str | Path) -> pd.DataFrame:
    """Every finished configuration of the search in ``output``, one row each (ordered by canonization and gammas)."""
    folder = Path(output) / "configs"
    rows = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    columns = [*GROUPS, "canonized"]
    if not rows:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(rows).sort_values(["canonized", *GROUPS]).reset_index(drop=True)


def run_search(
    output: str | Path,
    configs: Sequence[GammaConfig],
    setup: SearchSetup,
    model: torch.nn.Module | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> SearchResult:
    """Evaluate every configuration of ``configs`` not finished in ``output`` yet, on Dask; store each as it ends.

    Parameters
    ----------
    output : str or Path
        The search folder (see the module docstring); created, or reopened to resume.
    configs : sequence of GammaConfig
        The grid (:func:`attrlab.quality.gamma.gamma_grid`).
    setup : SearchSetup
        Model, image set and metric settings; a resumed search must use the same.
    model : torch.nn.Module, optional
        The trained model (its weights are stored in ``output``); needed to start, optional to resume.
    scheduler : str, optional
        Address of an existing Dask scheduler (default: a new LocalCluster).
    workers : int, optional
        LocalCluster worker processes (default: the CPU count).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    SearchResult
    """
    output = Path(output)
    if not configs:
        raise SearchError("no configurations to evaluate")
    keys = [c.key for c in configs]
    if len(set(keys)) != len(keys):
        raise SearchError("configurations must be distinct")
    weights = prepare_search(output, setup, model)
    for stale in (output / "configs").glob(".*.tmp-*"):  # a killed client's half-written temporary files
        stale.unlink(missing_ok=True)
    pending = [c for c in configs if not _config_path(output, c).exists()]
    skipped = [c.key for c in configs if _config_path(output, c).exists()]
    setup_json = json.dumps(setup.to_dict(), sort_keys=True)
    computed: list[str] = []
    failed: dict[str, str] = {}
    start = time.perf_counter()
    if pending:
        from distributed import as_completed

        with search_client(scheduler, workers) as client:
            futures = {
                client.submit(
                    evaluate_config, str(weights.resolve()), setup_json, c, key=f"gamma-{c.key}", pure=False
                ): c
                for c in pending
            }
            bar = tqdm(total=len(configs), initial=len(skipped), desc="gamma search", disable=not progress)
            for future in as_completed(futures):
                config = futures[future]
                try:
                    row = future.result()
                except Exception as err:  # one failing configuration must not lose the others
                    failed[config.key] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                else:
                    atomic_write_text(_config_path(output, config), json.dumps(row))
                    computed.append(config.key)
                bar.update(1)
                future.release()
            bar.close()
    wall = time.perf_counter() - start
    table = read_results(output)
    if pending:  # an invocation that only found finished configurations ran nothing to time
        _record_timing(output, wall, len(computed), len(skipped), len(failed), scheduler, workers)
    if not failed and all(_config_path(output, c).exists() for c in configs):  # this grid complete
        csv = table.to_csv(index=False, float_format="%.6g")
        atomic_write_text(output / RESULTS_NAME, csv)
    return SearchResult(computed, skipped, failed, wall, table)


def _record_timing(output: Path, wall: float, computed: int, skipped: int, failed: int, scheduler, workers) -> None:
    path = output / "timing.json"
    history = json.loads(path.read_text()) if path.exists() else []
    history.append(
        {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "wall_seconds": round(wall, 3),
            "computed": computed,
            "skipped": skipped,
            "failed": failed,
            "scheduler": scheduler or "LocalCluster",
            "workers": workers or os.cpu_count(),
        }
    )
    atomic_write_text(path, json.dumps(history, indent=1))


def export_results(output: str | Path, destination: str | Path, name: str = "gamma_search") -> tuple[Path, Path]:
    """Copy a search's finished configurations and a timing summary to ``destination`` (e.g. the book's results).

    Writes ``<name>.csv`` (one row per configuration) and ``<name>_timing.json`` (configurations, images, the wall time
    during which an invocation ran (the union of their intervals), their summed seconds, the summed CPU seconds of the
    tasks, every invocation's record), each through a temporary file and a rename.

    Parameters
    ----------
    output : str or Path
        The search folder.
    destination : str or Path
        The folder to write to.
    name : str
        The files' stem.

    Returns
    -------
    tuple of Path
        The table's and the summary's paths.
    """
    output, destination = Path(output), Path(destination)
    table = read_results(output)
    if table.empty:
        raise SearchError(f"{output} holds no finished configuration to export")
    setup = stored_setup(output)
    history = json.loads((output / "timing.json").read_text())
    summary = {
        "configurations": len(table),
        "images": setup.images if setup else None,
        "model": setup.model if setup else None,
        "wall_seconds": round(wall_span_seconds(history), 1),
        "summed_invocation_seconds": round(total_wall_seconds(output), 1),
        "cpu_seconds": round(float(table["cpu_seconds"].sum()), 1),
        "invocations": history,
    }
    table_path, summary_path = destination / f"{name}.csv", destination / f"{name}_timing.json"
    atomic_write_text(table_path, table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(summary_path, json.dumps(summary, indent=1))
    return table_path, summary_path


def wall_span_seconds(history: Sequence[dict[str, Any]]) -> float:
    """Seconds during which at least one invocation in ``history`` (``timing.json``) ran: the union of their
    intervals (invocations may overlap, two commands on disjoint parts of one grid, or leave gaps between them).
    """
    if not history:
        return math.nan
    ends = [calendar.timegm(time.strptime(entry["finished"], "%Y-%m-%dT%H:%M:%SZ")) for entry in history]
    intervals = sorted((end - entry["wall_seconds"], end) for end, entry in zip(ends, history))
    total, current_start, current_end = 0.0, intervals[0][0], intervals[0][1]
    for start, end in intervals[1:]:
        if start > current_end:
            total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    return float(total + current_end - current_start)


def total_wall_seconds(output: str | Path) -> float:
    """The summed wall time of every invocation of the search in ``output`` (NaN when none finished)."""
    path = Path(output) / "timing.json"
    if not path.exists():
        return math.nan
    return float(sum(entry["wall_seconds"] for entry in json.loads(path.read_text())))


__all__ = [
    "RESULTS_NAME",
    "SearchError",
    "SearchResult",
    "SearchSetup",
    "config_maps",
    "config_method",
    "config_row",
    "evaluate_grid",
    "evaluate_config",
    "export_results",
    "prepare_search",
    "read_results",
    "stored_setup",
    "run_search",
    "search_client",
    "search_settings",
    "total_wall_seconds",
    "wall_span_seconds",
]
