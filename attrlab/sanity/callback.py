"""CSC and random-logit SSIM tracked over training: a trainer callback (table ``sanity``) every k optimiser steps.

Beyond Sixt et al. (2020): is the rank-1 convergence of modified backpropagation there at initialisation, or does
training create it? Every ``every`` steps (and at step 0 of a fresh run, and after the last step) each method's CSC
(median ``|cos|`` per injection and recorded layer) and median random-logit SSIM on fixed images are appended to the
run's table ``sanity`` in ``on_flush``, right before the checkpoint of the same step, so a resumed run recomputes
exactly the missing rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ..train import Callback
from .checks import random_logit
from .csc import csc
from .methods import SanityMethod

TABLE = "sanity"
COLUMNS = ["step", "method", "check", "injection", "layer", "position", "value"]


class SanityTracker(Callback):
    """Track CSC and the random-logit SSIM of ``methods`` on ``images`` every ``every`` steps.

    Parameters
    ----------
    methods : sequence of SanityMethod
        Rows of :data:`attrlab.sanity.methods.SIXT_METHODS` (CSC only for families ``lrp`` and ``gradient``).
    images, labels : torch.Tensor
        The fixed images (moved to the trainer's device) and their labels.
    injection_layers : sequence of str
        CSC injection layers.
    record : sequence of str or None
        CSC recorded layers (``None``: the input).
    every : int
        Track every ``every`` optimiser steps (and at step 0 and the last step).
    vectors : int
        CSC vectors per image.
    num_classes : int
        Classes to draw the random logit from.
    seed : int
        Seed of the CSC vectors and the random classes (the same at every step).
    """

    def __init__(
        self,
        methods: Sequence[SanityMethod],
        images: torch.Tensor,
        labels: torch.Tensor,
        injection_layers: Sequence[str],
        record: Sequence[str | None],
        every: int = 10,
        vectors: int = 5,
        num_classes: int = 10,
        seed: int = 0,
    ):
        if not isinstance(every, int) or every <= 0:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if not methods:
            raise ValueError("SanityTracker needs at least one method")
        self.methods = list(methods)
        self.images, self.labels = images, labels
        self.injection_layers, self.record = list(injection_layers), list(record)
        self.every, self.vectors, self.num_classes, self.seed = every, vectors, num_classes, seed
        self._pending: list[pd.DataFrame] = []

    def on_start(self, trainer, step: int) -> None:
        self._pending = []
        self.images = self.images.to(trainer.device)
        self.labels = self.labels.to(trainer.device)
        if step == 0:
            self._track(trainer.model, 0)

    def on_step(self, trainer, step: int) -> None:
        if step % self.every and step != trainer.total_steps:
            return
        self._track(trainer.model, step)

    def _track(self, model: torch.nn.Module, step: int) -> None:
        rows = []
        for method in self.methods:
            scores = random_logit(model, method, self.images, self.labels, self.num_classes, self.seed)
            rows.append(
                pd.DataFrame(
                    [
                        {
                            "method": method.label,
                            "check": "random_logit",
                            "injection": "",
                            "layer": "",
                            "position": -1,
                            "value": float(scores["ssim"].median()),
                        }
                    ]
                )
            )
            if method.family != "none":
                frame = csc(model, method, self.images, self.injection_layers, self.record, self.vectors, self.seed)
                rows.append(
                    frame.rename(columns={"median": "value"}).assign(check="csc")[
                        ["method", "check", "injection", "layer", "position", "value"]
                    ]
                )
        self._pending.append(pd.concat(rows, ignore_index=True).assign(step=step)[COLUMNS])

    def on_flush(self, trainer, step: int) -> None:
        if self._pending:
            trainer.store.append_table(TABLE, pd.concat(self._pending, ignore_index=True))
        self._pending = []


__all__ = ["COLUMNS", "TABLE", "SanityTracker"]
