"""Batched grid evaluation (ML-Att): every method, at the input and chosen layers, on all grids of a setting at once.

For each method and layer the grids (one copy per scored cell) go through ``method.explain`` in chunks of
``batch_size`` on the model's device; the attributions are channel-summed, upsampled to the grid size, optionally
Gaussian-smoothed (several kernel sizes from one attribution pass) and scored against the cell masks, all as tensors.
Only the final scores of a method and layer reach the host (one transfer, not one per image). ``batch_size=1`` is
the per-image loop the benchmark compares against.

Layer handling: a method is built on the setting's wrapper (:func:`attrlab.grids.settings.grid_model`) and asked for
``layer=<name>``; the wrappers keep the model's layer names and the grid layout of every layer, so the same name
works in GridPG, DiPart and DiFull. ``layers`` maps display keys ("input", "middle", "final") to names; the input is
the wrappers' identity layer ``"input"`` (not ``None``: Grad-CAM reads ``None`` as "the last convolution").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..attribution import Attribution, make_method
from ..models.grid import FINAL_LAYER, MIDDLE_LAYER
from .aggatt import aggregate
from .data import GridSet
from .localisation import attribution_map, localisation
from .settings import SETTINGS, GridModel, from_cells, grid_model, to_cells
from .smoothing import smooth

#: ML-Att layers of the vgg_small models: display key -> layer name (None: the input)
LAYERS: dict[str, str | None] = {"input": "input", "middle": MIDDLE_LAYER, "final": FINAL_LAYER}


@dataclass
class MethodSpec:
    """One attribution method to evaluate, under a display ``label``.

    ``method`` is a registry name (``attrlab.attribution.METHODS``) or a factory ``model -> Attribution``;
    ``settings`` go to the constructor, ``layer_settings[key]`` override them at layer ``key``; ``layers`` restricts
    the layer keys (default: all); each kernel size in ``smoothing`` (1 = none) gives its own score column, labelled
    ``f"S-{label}"`` with the kernel size for K > 1. ``batch_size`` (grids per call) overrides the evaluation's: methods
    that already expand each grid into many inputs (integration steps, occlusion windows, RISE masks) run fastest on
    CPU with a few grids per call, single-pass methods with more (``bench/grids.py`` measures both).
    """

    label: str
    method: str | Callable[..., Attribution]
    settings: dict[str, Any] = field(default_factory=dict)
    layer_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    layers: Sequence[str] | None = None
    smoothing: Sequence[int] = (1,)
    batch_size: int | None = None

    def build(self, model: nn.Module, layer_key: str) -> Attribution:
        settings = {**self.settings, **self.layer_settings.get(layer_key, {})}
        if isinstance(self.method, str):
            return make_method(self.method, model, **settings)
        return self.method(model, **settings)

    def smoothed_label(self, kernel_size: int) -> str:
        return self.label if kernel_size == 1 else f"S-{self.label}"


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
        return aggregate(self.maps[key], scores, mass)


def grid_maps(
    method: Attribution,
    images: torch.Tensor,
    targets: torch.Tensor,
    layer: str | None,
    batch_size: int,
) -> torch.Tensor:
    """Signed (N, H, W) attribution maps of ``images`` for logit ``targets`` at ``layer``, upsampled to input size."""
    size = tuple(images.shape[-2:])
    chunks = [
        attribution_map(
            method.attribute(images[i : i + batch_size], target=targets[i : i + batch_size], layer=layer).detach(),
            size,
        )
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def grid_maps_per_cell(
    method: Attribution,
    images: torch.Tensor,
    cells: torch.Tensor,
    classes: torch.Tensor,
    layer: str | None,
    n: int,
    batch_size: int,
) -> torch.Tensor:
    """DiFull maps computed cell by cell: ``method`` (built on the single-image model) explains each grid's scored
    cell alone for its class; the attribution is placed at that cell of an otherwise zero grid-layout map.

    DiFull's head of a cell *is* the single-image model applied to that cell, so this is the same computation as the
    DiFull wrapper for every method whose attribution of a cell depends only on that cell's computation (gradients,
    LRP); it serves engines that never call the wrapper's modules (attrlab's LRP evaluates layers functionally).
    """
    count = images.shape[0]
    size = tuple(images.shape[-2:])
    slot = torch.arange(count, device=images.device) * (n * n) + cells
    alone = to_cells(images, n)[slot]
    chunks = []
    for i in range(0, count, batch_size):
        attribution = method.attribute(alone[i : i + batch_size], target=classes[i : i + batch_size], layer=layer)
        attribution = attribution.detach()
        rows = attribution.shape[0]
        placed = attribution.new_zeros((rows * n * n, *attribution.shape[1:]))
        placed[torch.arange(rows, device=placed.device) * (n * n) + cells[i : i + batch_size]] = attribution
        chunks.append(attribution_map(from_cells(placed, n), size))
    return torch.cat(chunks)


def _reads_layers_functionally(method: Attribution) -> bool:
    """Whether ``method`` evaluates the model's layers from their parameters instead of calling them (then it cannot
    see the per-cell forward of DiFull's :class:`~attrlab.grids.settings.CellwiseConv2d`)."""
    from ..lrp.engine import LRP

    return isinstance(method, LRP)


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

    ``cells`` are the scored cells (default: the top-left one, as in the thesis; pass ``[0, n*n - 1]`` to score the
    repeated corner as well); for each, a grid is explained for the class in that cell (GridPG) or for that cell's
    head (DiFull, DiPart).
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown grid setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    n = grids.n
    cells = list(cells) if cells is not None else [0]
    if not cells or any(not 0 <= c < n * n for c in cells):
        raise ValueError(f"cells must be cell numbers in 0..{n * n - 1}, got {cells!r}")
    # the wrapper shares the model's modules: evaluate in eval mode, hand the model back in the mode it came in
    was_training = model.training
    wrapped: GridModel = grid_model(model, setting, n).eval()
    try:
        return _evaluate(model, wrapped, grids, setting, methods, layers, cells, batch_size, keep_maps, progress)
    finally:
        model.train(was_training)


def _evaluate(
    model: nn.Module,
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
    # one copy of all grids per scored cell, cell-major
    cell_index = torch.tensor(cells, device=device).repeat_interleave(count)
    grid_index = torch.arange(count, device=device).repeat(len(cells))
    classes = grids.labels.to(device)[grid_index, cell_index]
    targets = wrapped.head_targets(cell_index, classes)
    inputs = images[grid_index]

    jobs = [(spec, key) for spec in methods for key in (spec.layers or layers) if key in layers]
    unknown = sorted({key for spec in methods for key in (spec.layers or ()) if key not in layers})
    if unknown:
        raise ValueError(f"methods ask for layers {unknown} that are not in layers {list(layers)}")
    frames, maps, cell_scores = [], {}, {}
    for spec, key in tqdm(jobs, desc=f"{setting} {n}x{n}", disable=not progress):
        method = spec.build(wrapped, key)
        if setting == "difull" and _reads_layers_functionally(method):
            single = spec.build(grid_model(model, "gridpg", 1), key)  # the single-image model, same layer names
            raw = grid_maps_per_cell(single, inputs, cell_index, classes, layers[key], n, spec.batch_size or batch_size)
        else:
            raw = grid_maps(method, inputs, targets, layers[key], spec.batch_size or batch_size)
        for kernel_size in spec.smoothing:
            smoothed = smooth(raw, kernel_size)
            score, mass = localisation(smoothed, masks, cell_index)
            label = spec.smoothed_label(kernel_size)
            frames.append(
                pd.DataFrame(
                    {
                        "setting": setting,
                        "n": n,
                        "method": label,
                        "kernel_size": kernel_size,
                        "layer": key,
                        "grid": grid_index.cpu().numpy(),
                        "cell": cell_index.cpu().numpy(),
                        "score": score.cpu().numpy(),
                    }
                )
            )
            if keep_maps:
                first = slice(0, count)  # the first scored cell's copies
                maps[(label, key, kernel_size)] = smoothed[first]
                cell_scores[(label, key, kernel_size)] = (score[first], mass[first])
    scores = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return GridResult(scores, maps, cell_scores)
