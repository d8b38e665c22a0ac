"""Attribution tracker: a training callback that explains the attribution set after optimiser steps and summarises.

After every scheduled step it runs each configured method on the attribution set (the model in eval semantics, the
target the predicted class unless told otherwise), reduces the maps to per-image summaries on the device
(:mod:`attrlab.summaries`) and aggregates them per step (all images, per class, per train/test half, with NaN counts).
Rows stay in a device :class:`~attrlab.stepbuffer.StepBuffer` and reach the host only when the trainer flushes before
a checkpoint, into the run store's ``attributions`` table (one row per step and method). Full maps can be kept at
chosen steps as float16 snapshots for filmstrips. A resumed run recomputes nothing twice and loses nothing: rows after the checkpoint
are dropped by the store, snapshots are rewritten identically.

The first method's forward pass also yields the predictions, and the logits of the trainer's attribution-set
metrics at that step (:meth:`Tracker.attribution_logits`: one forward pass fewer per tracked step); the other methods
are given those targets, so every method explains the same class per image. When the first method is LRP, the CAM
methods (Grad-CAM, Grad-CAM++, LayerCAM) take the activation at their layer from LRP's forward pass, which computes
every layer's true output, and run only the layers above it: the layers below run once per step instead of twice,
and the maps are the same.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .attribution import Attribution
from .attribution.base import Explanation, feature_layer
from .attribution.gradcam import GradCAM
from .attribution.spec import PATH_SAFE_LABEL, MethodSpec
from .lrp import LRP
from .runstore import RunStore, atomic_write_bytes
from .stepbuffer import StepBuffer
from .summaries import group_matrix, group_summary, group_summary_columns, summarise
from .train import Callback, Trainer

TABLE = "attributions"
TARGETS = ("predicted", "label")


#: settings a method gets when it is tracked by registry name alone (LRP: the seed's rules)
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {"lrp": {"composite": "seed000"}}


def method_specs(names: Sequence[str]) -> list[MethodSpec]:
    """Specs for registry names, each labelled by its name, with :data:`DEFAULT_SETTINGS` where there are some."""
    from .attribution import available_methods

    known = available_methods(include_reproductions=True)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown attribution methods {unknown}; valid names: {', '.join(known)}")
    return [MethodSpec(name, name, dict(DEFAULT_SETTINGS.get(name, {}))) for name in names]


class Schedule:
    """Which steps are tracked: ``"every"``, an int k (every k-th step and the last), ``"log:N"`` (about N
    log-spaced steps from 1 to the end), or an explicit iterable of steps."""

    def __init__(self, spec: str | int | Iterable[int] = "every"):
        self.spec = spec
        if isinstance(spec, bool):
            raise ValueError(f"bad schedule {spec!r}; use 'every', an int k, 'log:N' or a list of steps")
        if isinstance(spec, int):
            if spec <= 0:
                raise ValueError(f"schedule every k steps needs k >= 1, got {spec}")
        elif isinstance(spec, str):
            if spec != "every" and not re.fullmatch(r"log:[1-9]\d*", spec):
                raise ValueError(f"bad schedule {spec!r}; use 'every', an int k, 'log:N' (N >= 1) or a list of steps")
        else:
            steps = list(spec)
            if not all(isinstance(s, (int, np.integer)) and s >= 1 for s in steps):
                raise ValueError(f"an explicit schedule lists steps >= 1, got {steps!r}")
            self.spec = sorted({int(s) for s in steps})

    def steps(self, total_steps: int) -> list[int]:
        """The tracked steps of a run with ``total_steps`` optimiser steps."""
        spec = self.spec
        if spec == "every":
            return list(range(1, total_steps + 1))
        if isinstance(spec, int):
            return sorted(set(range(spec, total_steps + 1, spec)) | {total_steps})
        if isinstance(spec, str):
            count = int(spec.split(":")[1])
            spaced = np.unique(np.round(np.logspace(0, math.log10(total_steps), count)).astype(int))
            return spaced.tolist()
        return [s for s in spec if s <= total_steps]


#: the seed's protocol: LRP with seed 000's rules, Grad-CAM at the output of the last convolution block (after its ReLU)
DEFAULT_METHODS = tuple(method_specs(["lrp", "gradcam"]))


class Tracker(Callback):
    """Tracks attribution summaries during training (see the module docstring)."""

    def __init__(
        self,
        methods: Sequence[MethodSpec] = DEFAULT_METHODS,
        schedule: str | int | Iterable[int] = "every",
        snapshots: str | int | Iterable[int] = (),
        target: str = "predicted",
    ):
        if not methods:
            raise ValueError("the tracker needs at least one method")
        labels = [spec.label for spec in methods]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be unique, got {labels}")
        unsafe = [label for label in labels if not PATH_SAFE_LABEL.fullmatch(label)]
        if unsafe:  # a label names the method's snapshot folder
            raise ValueError(f"tracked method labels are letters, digits, '-' and '_'; got {unsafe}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid choices: {', '.join(TARGETS)}")
        self.specs = list(methods)
        self.schedule = Schedule(schedule)
        self.snapshot_schedule = Schedule(snapshots)
        self.target = target
        self.methods: list[Attribution] = []
        self._explained: tuple[int, list[Explanation]] | None = None  # (step, explanations) made for the metrics

    # ---------------------------------------------------------------- set-up
    def on_start(self, trainer: Trainer, step: int) -> None:
        model = trainer.model
        self._explained = None
        self.methods = [spec.make(model) for spec in self.specs]
        self.shared = shared_layers(self.specs, self.methods, model)
        attribution = trainer.attribution_set
        self.groups = group_matrix(attribution.y, attribution.is_train, trainer.data.num_classes)
        self.tracked = set(self.schedule.steps(trainer.total_steps))
        self.snapshot_steps = set(self.snapshot_schedule.steps(trainer.total_steps))
        rows_between_flushes = min(trainer.config.checkpoint_every, trainer.total_steps) * len(self.methods)
        slots = {"summaries": group_summary_columns(trainer.data.num_classes)}
        self.buffer = StepBuffer(slots, rows_between_flushes, trainer.device, keys=("step", "method"))

    def before_step(self, trainer: Trainer, step: int) -> None:
        # the seed code's Grad-CAM weights come from this step's training loss, before the parameters change
        if step in self.tracked or step in self.snapshot_steps:
            for method in self.methods:
                if method.wants_training_batch:
                    assert trainer.batch is not None  # the trainer sets it before calling before_step
                    method.set_training_batch(*trainer.batch, compute_now=True)

    # ------------------------------------------------------------------ step
    def attribution_logits(self, trainer: Trainer, step: int) -> torch.Tensor | None:
        """The first method's logits of the attribution set at a tracked step (the trainer's ``attr_*`` metrics come
        from them: no second forward pass); the explanations are kept for :meth:`on_step`.

        Every method's logits are the model's in eval semantics; LRP's come from its own evaluation of the layers (the
        same function, equal to float rounding; bit for bit on the seed's shallow and deep models)."""
        if step not in self.tracked and step not in self.snapshot_steps:
            return None
        self._explained = (step, self._explain(trainer))
        return self._explained[1][0].logits

    def _explain(self, trainer: Trainer) -> list[Explanation]:
        """Every method's explanation of the attribution set, in the order of the specs."""
        attribution_set = trainer.attribution_set
        target = None if self.target == "predicted" else attribution_set.y
        x = attribution_set.x
        kept: dict[str, torch.Tensor] = {}  # activations from the first method's pass, by layer name
        explanations = []
        for index, (spec, method) in enumerate(zip(self.specs, self.methods)):
            layer = self.shared.get(index)
            if index == 0 and self.shared and isinstance(method, LRP):
                keep = sorted(set(self.shared.values()))
                explanation, kept = method.explain_keeping(x, target=target, layer=spec.layer, keep=keep)
            elif layer is not None and layer in kept and isinstance(method, GradCAM):
                explanation = method.explain_activation(x, kept[layer], target=target, layer=layer)
            else:
                explanation = method.explain(x, target=target, layer=spec.layer)
            target = explanation.target  # later methods explain the same classes
            explanations.append(explanation)
        return explanations

    def on_step(self, trainer: Trainer, step: int) -> None:
        if step not in self.tracked and step not in self.snapshot_steps:
            return
        explained, self._explained = self._explained, None
        explanations = explained[1] if explained is not None and explained[0] == step else self._explain(trainer)
        for spec, explanation in zip(self.specs, explanations):
            if step in self.tracked:
                row = group_summary(summarise(explanation.attribution), self.groups)
                self.buffer.append({"step": step, "method": spec.label}, summaries=row)
            if step in self.snapshot_steps:
                save_snapshot(trainer.store, spec.label, step, explanation.attribution)

    def on_flush(self, trainer: Trainer, step: int) -> None:
        if len(self.buffer):
            trainer.store.append_table(TABLE, self.buffer.flush())


def shared_layers(
    specs: Sequence[MethodSpec], methods: Sequence[Attribution], model: torch.nn.Module
) -> dict[int, str]:
    """{method index: layer name} of the CAM methods that can take their activation from the first method's pass.

    Parameters
    ----------
    specs : sequence of MethodSpec
        The tracked methods' specs.
    methods : sequence of Attribution
        The methods built from them, in the same order.
    model : torch.nn.Module
        The tracked model.

    Returns
    -------
    dict of int to str
        Empty unless the first method is LRP; else each later Grad-CAM / Grad-CAM++ / LayerCAM at a named layer
        (its default layer: :func:`~attrlab.attribution.base.feature_layer`). LRP hands out the activations it can
        (:meth:`~attrlab.lrp.LRP.explain_keeping`); a method whose layer it cannot serve runs on its own.
    """
    if not methods or not isinstance(methods[0], LRP):
        return {}
    shared = {}
    for index, (spec, method) in enumerate(zip(specs, methods)):
        if index and isinstance(method, GradCAM):
            layer = feature_layer(model) if spec.layer is None else spec.layer
            if isinstance(layer, str) and layer != "input":
                shared[index] = layer
    return shared


def _snapshot_path(store: RunStore, label: str, step: int) -> Path:
    return store.snapshot_dir / label / f"step-{step:08d}.pt"


def save_snapshot(store: RunStore, label: str, step: int, attribution: torch.Tensor) -> None:
    """Keep the channel-summed maps (N, H, W) of one method at one step as float16."""
    maps = attribution.sum(1) if attribution.ndim == 4 else attribution
    buffer = io.BytesIO()
    torch.save(maps.detach().to("cpu", torch.float16).contiguous(), buffer)
    atomic_write_bytes(_snapshot_path(store, label, step), buffer.getvalue())


def load_snapshots(run_dir: str | Path, label: str) -> tuple[list[int], np.ndarray]:
    """Steps and float32 maps (steps, images, H, W) saved for ``label`` in ``run_dir``."""
    store = RunStore(run_dir)
    folder = store.snapshot_dir / label
    files = sorted(folder.glob("step-*.pt")) if folder.is_dir() else []
    if not files:
        present = sorted(p.name for p in store.snapshot_dir.iterdir()) if store.snapshot_dir.is_dir() else []
        raise ValueError(f"run {store.root} has no snapshots of {label!r}; methods with snapshots: {present or 'none'}")
    steps = [int(path.stem.split("-")[1]) for path in files]
    maps = np.stack([torch.load(path, weights_only=True).float().numpy() for path in files])
    return steps, maps


def tracked_frame(run_dir: str | Path, method: str | None = None) -> pd.DataFrame:
    """The ``attributions`` table of a run, optionally of one method, indexed by step."""
    frame = RunStore(run_dir).read_table(TABLE)
    if method is not None:
        methods = sorted(frame["method"].unique())
        if method not in methods:
            raise ValueError(f"unknown method {method!r} in this run; tracked methods: {', '.join(methods)}")
        frame = frame[frame["method"] == method]
    return frame.set_index("step") if method is not None else frame
