"""TensorBoard logging of a training run: losses, accuracies, tracked attribution summaries and snapshots.

The run store stays the source of truth; :class:`TensorBoardLogger` copies what the trainer and the tracker have
just stored into TensorBoard event files (``torch.utils.tensorboard.SummaryWriter``) each time they flush, so
TensorBoard shows the run while it trains, as PyTorch users follow their training (and as tf-explain's callbacks
show attribution maps to Keras users). A resumed run purges the events after the step it resumes from, so the
curves hold every step once.

Scalars: ``metrics/<column>`` for the overall losses and accuracies (``train_loss``, ``test_acc``, ...), and
``attributions/<method>/<summary>`` for the tracker's per-step summaries over the whole attribution set. Images:
``snapshots/<method>`` for the kept maps (the first :data:`SNAPSHOT_IMAGES` images, scaled to [0, 1] each). Text
and hyperparameters: the run's config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .summaries import SUMMARIES
from .train import Callback, Trainer

#: metric columns logged as scalars (the per-class columns stay in the run store)
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "attr_loss", "attr_acc")
#: images per snapshot written to TensorBoard
SNAPSHOT_IMAGES = 8


class TensorBoardLogger(Callback):
    """Log a run to TensorBoard in ``log_dir`` (default: ``<run dir>/tensorboard``); add it after the tracker.

    Parameters
    ----------
    log_dir : str or Path, optional
        Where the event files go; ``None`` puts them into the run directory's ``tensorboard/`` folder.
    """

    def __init__(self, log_dir: str | Path | None = None):
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.writer: Any = None
        self.logged = 0  # the last step already written

    def on_start(self, trainer: Trainer, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir or trainer.store.root / "tensorboard"
        self.writer = SummaryWriter(str(log_dir), purge_step=step + 1 if step else None)
        self.logged = step
        if step == 0:
            config = trainer.config.to_dict()
            self.writer.add_text("config", f"```\n{json.dumps(config, indent=2, sort_keys=True)}\n```", 0)
            hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in config.items()}
            self.writer.add_hparams(hparams, {"hparam/total_steps": float(trainer.total_steps)}, run_name=".")

    def on_flush(self, trainer: Trainer, step: int) -> None:
        store = trainer.store
        metrics = self._new_rows(store, "metrics", step)
        for row in metrics.itertuples(index=False):
            for column in METRICS:
                value = getattr(row, column, float("nan"))
                if pd.notna(value):
                    self.writer.add_scalar(f"metrics/{column}", float(value), int(row.step))
        tracked = self._new_rows(store, "attributions", step)
        summaries = [c for c in SUMMARIES if c in tracked.columns]  # over the whole attribution set
        for row in tracked.to_dict("records"):
            for column in summaries:
                if pd.notna(row[column]):
                    self.writer.add_scalar(
                        f"attributions/{row['method']}/{column}", float(row[column]), int(row["step"])
                    )
        self._log_snapshots(trainer, step)
        self.logged = step
        self.writer.flush()

    def on_end(self, trainer: Trainer, step: int) -> None:
        if self.writer is not None:
            self.writer.close()

    def _new_rows(self, store: Any, table: str, step: int) -> pd.DataFrame:
        """Rows of ``table`` with ``logged < step' <= step`` (read from the parts that hold them)."""
        frames = [pd.read_parquet(path) for first, last, path in store._parts(table) if last > self.logged]
        if not frames:
            return pd.DataFrame(columns=["step"])
        frame = pd.concat(frames, ignore_index=True)
        return frame[(frame["step"] > self.logged) & (frame["step"] <= step)].sort_values("step", kind="stable")

    def _log_snapshots(self, trainer: Trainer, step: int) -> None:
        folder = trainer.store.snapshot_dir
        if not folder.is_dir():
            return
        for method in sorted(p for p in folder.iterdir() if p.is_dir()):
            for path in sorted(method.glob("step-*.pt")):
                taken = int(path.stem.split("-")[1])
                if self.logged < taken <= step:
                    maps = torch.load(path, weights_only=True).float()[:SNAPSHOT_IMAGES, None]  # (N, 1, H, W)
                    flat = maps.flatten(1)
                    low, high = flat.min(1).values[:, None, None, None], flat.max(1).values[:, None, None, None]
                    images = (maps - low) / (high - low).clamp_min(1e-12)
                    self.writer.add_images(f"snapshots/{method.name}", images, taken)


__all__ = ["METRICS", "SNAPSHOT_IMAGES", "TensorBoardLogger"]
