"""Step buffer: per-step rows of named float slots in a preallocated device tensor, flushed to a DataFrame.

The trainer's metrics and the tracker's attribution summaries are computed on the device at every step but are only
needed on the host when a checkpoint is written. A :class:`StepBuffer` keeps them where they are computed: a row is
appended by copying device tensors into a slice of one preallocated (capacity, columns) tensor, which needs no host
synchronisation; :meth:`StepBuffer.flush` moves all rows to the host at once (one transfer) as a DataFrame. The row
keys (the step, the method label, ...) are plain Python values and stay on the host.

A *slot* is a named run of consecutive columns: ``"train_loss"`` is one column, ``"test"`` the 2 + 2 * classes
columns of a test-set evaluation. Writers name their slots instead of computing column offsets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch


class StepBuffer:
    """Rows of named slots on the device, keyed by host values, flushed to a DataFrame at checkpoints.

    Parameters
    ----------
    slots : mapping of str to sequence of str
        Slot name -> its column names, in table order (a one-column slot usually shares its column's name).
    capacity : int
        The most rows held between two flushes.
    device : torch.device or str
        Where the values live (the device they are computed on).
    keys : sequence of str
        Names of the key columns every row is appended with; they come first in the flushed table.
    """

    def __init__(
        self,
        slots: Mapping[str, Sequence[str]],
        capacity: int,
        device: torch.device | str,
        keys: Sequence[str] = ("step",),
    ):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive integer, got {capacity!r}")
        if not slots:
            raise ValueError("a step buffer needs at least one slot")
        self.slots: dict[str, slice] = {}
        self.columns: list[str] = []
        for name, columns in slots.items():
            if isinstance(columns, str) or not columns:
                raise ValueError(f"slot {name!r} must list its column names, got {columns!r}")
            self.slots[name] = slice(len(self.columns), len(self.columns) + len(columns))
            self.columns += list(columns)
        self.keys = tuple(keys)
        clashes = sorted(set(self.keys) & set(self.columns))
        duplicates = sorted(name for name, count in Counter(self.columns).items() if count > 1)
        if clashes or duplicates or len(set(self.keys)) != len(self.keys):
            raise ValueError(f"column names must be unique; repeated: {clashes + duplicates or list(self.keys)}")
        self.capacity = capacity
        self.values = torch.full((capacity, len(self.columns)), float("nan"), device=device)
        self.rows: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, keys: Mapping[str, Any], **slots: torch.Tensor | float) -> None:
        """Add a row with the key values ``keys`` and the values of some slots; slots not given stay NaN.

        Parameters
        ----------
        keys : mapping
            A value for every key column (host values: ints, strings).
        **slots : tensor or float
            Slot name -> its values (a device scalar or a tensor of the slot's width); copied without a host sync.
        """
        if set(keys) != set(self.keys):
            raise ValueError(f"a row needs the keys {list(self.keys)}, got {sorted(keys)}")
        unknown = sorted(set(slots) - set(self.slots))
        if unknown:
            raise ValueError(f"unknown slots {unknown}; valid slots: {', '.join(self.slots)}")
        if len(self.rows) == self.capacity:
            raise RuntimeError(f"the step buffer is full ({self.capacity} rows): flush it first")
        for name, value in slots.items():  # all checks before the first write: a refused row leaves no values
            width = self.slots[name].stop - self.slots[name].start
            if isinstance(value, torch.Tensor) and value.numel() != width:
                raise ValueError(f"slot {name!r} holds {width} values, got a tensor of shape {tuple(value.shape)}")
        row = self.values[len(self.rows)]
        for name, value in slots.items():
            row[self.slots[name]] = value
        self.rows.append(tuple(keys[name] for name in self.keys))

    def flush(self) -> pd.DataFrame:
        """All rows since the last flush as a DataFrame (key columns first; one device-to-host copy), then empty.

        Returns
        -------
        pandas.DataFrame
            One row per appended row: the key columns, then the slots' columns (float32).
        """
        frame = pd.DataFrame(self.values[: len(self.rows)].cpu().numpy(), columns=self.columns)
        for position, name in reversed(list(enumerate(self.keys))):
            frame.insert(0, name, [row[position] for row in self.rows])
        self.rows = []
        self.values.fill_(float("nan"))
        return frame
