"""Localisation over training: a trainer callback that scores fixed grids every k optimiser steps.

Every ``every`` steps (and after the last one) the callback runs :func:`attrlab.grids.evaluate.evaluate_setting` on
the model being trained, for each setting and method, and keeps one row per (step, setting, method, layer) with the
median and mean score. Rows are written to the run's table ``grid_localisation`` in ``on_flush``, right before the
checkpoint of the same step, so a resumed run (whose tables are cut back to its checkpoint) recomputes exactly the
missing rows. The grids are fixed for the whole run: "confident images" are only defined for a trained model, so
they are built beforehand (for example from a finished reference run) and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from ..attribution.spec import MethodSpec
from ..train import Callback
from .data import GridSet
from .evaluate import LAYERS, evaluate_setting

TABLE = "grid_localisation"


class GridLocalisation(Callback):
    """Evaluate ``methods`` on ``grids`` (setting name -> grids) every ``every`` steps; table ``grid_localisation``.

    ``cells`` are the scored cells of every setting (default: :func:`~attrlab.grids.evaluate.scored_cells`).
    """

    def __init__(
        self,
        grids: Mapping[str, GridSet],
        methods: Sequence[MethodSpec],
        every: int = 10,
        layers: Mapping[str, str | None] = LAYERS,
        batch_size: int = 64,
        cells: Sequence[int] | None = None,
    ):
        if not isinstance(every, int) or every <= 0:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if not grids or not methods:
            raise ValueError("GridLocalisation needs at least one setting's grids and one method")
        self.grids = dict(grids)
        self.methods = list(methods)
        self.every = every
        self.layers = dict(layers)
        self.batch_size = batch_size
        self.cells = None if cells is None else list(cells)
        self._pending: list[pd.DataFrame] = []

    def on_start(self, trainer, step: int) -> None:
        self._pending = []

    def on_step(self, trainer, step: int) -> None:
        if step % self.every and step != trainer.total_steps:
            return
        for setting, grids in self.grids.items():
            scores = evaluate_setting(
                trainer.model,
                grids,
                setting,
                self.methods,
                layers=self.layers,
                cells=self.cells,
                batch_size=self.batch_size,
                keep_maps=False,
                progress=False,
            ).scores
            summary = scores.groupby(["method", "kernel_size", "layer"], sort=False)["score"].agg(["median", "mean"])
            self._pending.append(summary.reset_index().assign(step=step, setting=setting))

    def on_flush(self, trainer, step: int) -> None:
        if self._pending:
            frame = pd.concat(self._pending, ignore_index=True)
            columns = ["step", "setting", "method", "kernel_size", "layer", "median", "mean"]
            trainer.store.append_table(TABLE, frame[columns])
        self._pending = []
