"""Batched grid evaluation (ML-Att): every method, at the input and chosen layers, on all grids of a setting at once.

For each method and layer the grids go through ``method.explain`` in chunks of ``batch_size`` grids on the model's
device, each grid with all its scored cells as an (N, T) target, so every method shares its forward passes across
a grid's cells (perturbation methods score every cell from the same perturbed copies). The attributions are
channel-summed, upsampled to the grid size, optionally Gaussian-smoothed (several kernel sizes from one attribution
pass) and scored against the cell masks, all as tensors. Scores stay on the device until the evaluation ends and reach
the host in one transfer for all methods and layers. The benchmark (``bench/grids.py``) compares this with a
per-image loop: one call per grid and scored cell.

Layer handling: a method is built on the setting's wrapper (:func:`attrlab.grids.settings.grid_model`) and asked for
``layer=<name>``; the wrappers keep the model's layer names and the grid layout of every layer, so the same name
works in GridPG, DiPart and DiFull. ``layers`` maps display keys ("input", "middle", "final") to names; the input is
the sentinel ``"input"`` (not ``None``: for Grad-CAM ``None`` means its default feature layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attribution import Attribution
from ..attribution.spec import MethodSpec
from ..models.grid import FINAL_LAYER, MIDDLE_LAYER
from .aggatt import bin_maps
from .data import GridSet
from .localisation import attribution_map, localisation
from .settings import SETTINGS, GridModel, grid_model
from .smoothing import smooth

#: ML-Att layers of the vgg_small models: display key -> layer name ("input": the input sentinel)
LAYERS: dict[str, str | None] = {"input": "input", "middle": MIDDLE_LAYER, "final": FINAL_LAYER}


@dataclass
class GridResult:
    """Scores (one row per grid, cell, method, layer and kernel size) and the maps kept for AggAtt."""

    scores: pd.DataFrame
    #: (method label, layer key, kernel size) -> (G, H, W) signed maps of the first scored cell
    maps: dict[tuple[str, str, int], torch.Tensor]
    #: same keys -> (G,) scores and positive cell masses of those maps
    cell_scores: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor]]

    def aggatt(self, label: str, layer: str, kernel_size: int = 1) -> torch.Tensor:
        """The AggAtt bins (len(BINS), H, W) of one method and layer (first scored cell)."""
        key = (label, layer, kernel_size)
        if key not in self.maps:
            raise KeyError(f"no maps kept for {key}; kept: {sorted(self.maps)}")
        scores, mass = self.cell_scores[key]
        return bin_maps(self.maps[key], scores, mass)


def grid_maps(
    method: Attribution,
    images: torch.Tensor,
    targets: torch.Tensor,
    layer: str | None,
    batch_size: int,
) -> torch.Tensor:
    """Signed (G, T, H, W) maps of ``images`` (G grids) for the (G, T) logit ``targets`` at ``layer``, at input size.

    ``batch_size`` grids go to ``method`` per call, each with its T targets: the method shares its forward passes
    across a grid's targets.
    """
    size = cast("tuple[int, int]", tuple(images.shape[-2:]))  # (H, W)
    chunks = []
    for first in range(0, len(images), batch_size):
        attribution = method.attribute(
            images[first : first + batch_size], target=targets[first : first + batch_size], layer=layer
        ).detach()
        chunks.append(attribution_map(attribution.flatten(0, 1), size).view(*attribution.shape[:2], *size))
    return torch.cat(chunks)


def scored_cells(setting: str, n: int) -> list[int]:
    """The thesis' protocol: every cell on GridPG, the two corners holding the repeated class on DiFull and DiPart."""
    return list(range(n * n)) if setting == "gridpg" else [0, n * n - 1]


def evaluate_setting(
    model: nn.Module,
    grids: GridSet,
    setting: str,
    methods: Sequence[MethodSpec],
    layers: Mapping[str, str | None] = LAYERS,
    cells: Sequence[int] | None = None,
    batch_size: int = 64,
    keep_maps: bool = True,
    progress: bool = True,
) -> GridResult:
    """Evaluate every method of ``methods`` at every layer of ``layers`` on all ``grids`` in ``setting``.

    ``cells`` are the scored cells (default :func:`scored_cells`: all of them on GridPG, the two corners of the
    repeated class on DiFull and DiPart, as in the thesis' quantitative results); for each, a grid is explained for
    the class in that cell (GridPG) or for that cell's head (DiFull, DiPart), all of a grid's cells in one call. The
    AggAtt maps kept are those of the first scored cell (the top-left one by default, as in the thesis' figures).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown grid setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    n = grids.n
    cells = list(cells) if cells is not None else scored_cells(setting, n)
    if not cells or any(not 0 <= c < n * n for c in cells) or len(set(cells)) != len(cells):
        raise ValueError(f"cells must be distinct cell numbers in 0..{n * n - 1}, got {cells!r}")
    wrapped: GridModel = grid_model(evaluation_copy(model), setting, n)
    return _evaluate(wrapped, grids, setting, methods, layers, cells, batch_size, keep_maps, progress)


def evaluation_copy(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` to evaluate on; on a CPU its weights are channels-last.

    The copy leaves the caller's model (its mode, parameters and memory layout) untouched, also mid-training. oneDNN's
    convolutions run about 1.6x faster in the channels-last layout on the small grid models (``bench/grids.py``
    measures the batched evaluation); the values agree with the original layout to float rounding.
    """
    copy = deepcopy(model).eval().requires_grad_(False)
    if next(copy.parameters()).device.type == "cpu":
        copy = copy.to(memory_format=torch.channels_last)
    return copy


def _evaluate(
    wrapped: GridModel,
    grids: GridSet,
    setting: str,
    methods: Sequence[MethodSpec],
    layers: Mapping[str, str | None],
    cells: list[int],
    batch_size: int,
    keep_maps: bool,
    progress: bool,
) -> GridResult:
    n = grids.n
    device = next(wrapped.parameters()).device
    images = grids.images.to(device)
    masks = grids.masks.to(device)
    count = len(grids)
    # (G, T): every grid with its scored cells; rows of the score table are grid-major
    cell_index = torch.tensor(cells, device=device).expand(count, -1)
    classes = grids.labels.to(device).gather(1, cell_index)
    targets = wrapped.head_targets(cell_index, classes)
    grid_column = np.arange(count).repeat(len(cells))
    cell_column = np.tile(np.asarray(cells), count)

    jobs = [(spec, key) for spec in methods for key in (spec.layer_keys or layers) if key in layers]
    unknown = sorted({key for spec in methods for key in (spec.layer_keys or ()) if key not in layers})
    if unknown:
        raise ValueError(f"methods ask for layers {unknown} that are not in layers {list(layers)}")
    frames, device_scores, maps, cell_scores = [], [], {}, {}
    for spec, key in tqdm(jobs, desc=f"{setting} {n}x{n}", disable=not progress):
        method = spec.make(wrapped, key)
        raw = grid_maps(method, images, targets, layers[key], spec.batch_size or batch_size)
        for kernel_size in spec.smoothing:
            smoothed = smooth(raw.flatten(0, 1), kernel_size)
            score, mass = localisation(smoothed, masks, cell_index.flatten())
            label = spec.smoothed_label(kernel_size)
            frames.append(
                pd.DataFrame(
                    {
                        "setting": setting,
                        "n": n,
                        "method": label,
                        "kernel_size": kernel_size,
                        "layer": key,
                        "grid": grid_column,
                        "cell": cell_column,
                    }
                )
            )
            device_scores.append(score)
            if keep_maps:
                first = slice(0, None, len(cells))  # every grid's first scored cell
                maps[(label, key, kernel_size)] = smoothed[first]
                cell_scores[(label, key, kernel_size)] = (score[first], mass[first])
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frames:  # every score reaches the host in one transfer, at the end
        scores["score"] = torch.cat(device_scores).cpu().numpy()
    return GridResult(scores, maps, cell_scores)
