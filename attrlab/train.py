"""Training loop: the seed code's setup (Adam, lr 1e-3, batch 100, cross-entropy), resumable, with per-step metrics.

Per step the trainer logs the minibatch loss and accuracy (of the forward pass the step was taken on, so "before the
step") and, every ``eval_every`` steps and after the last one, the loss and accuracy on the test set (or a fixed
seeded subset of it) and on the attribution set, each also per class (the attribution set's from a callback's
forward pass when one explains it at that step: :meth:`Callback.attribution_logits`). Metrics stay on the device in a
preallocated buffer and reach the host only when the buffer is flushed, right before a checkpoint: there is no host
synchronisation per step. Callbacks (the attribution tracker, for one) run after every optimiser step.

Killing a run at any point and calling :func:`train` again with the same configuration resumes from the newest
checkpoint; the finished metrics equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .attribution.model_state import eval_semantics
from .data import (
    DATASET_SHAPES,
    INPUT_BOUNDS,
    SELECTIONS,
    AttributionSet,
    BatchSampler,
    ImageDataset,
    Split,
    attribution_set,
    load_dataset,
)
from .device import deterministic as deterministic_mode
from .device import resolve_device
from .models import build_model
from .objectives import (
    AUGMENTATIONS,
    LOSSES,
    NO_FLIP_DATASETS,
    SCHEDULES,
    Objective,
    augment,
    data_loss,
    learning_rate,
    objective_name,
)
from .runstore import RunStore, RunStoreError
from .stepbuffer import StepBuffer

OPTIMIZERS = ("adam", "sgd")
#: the objective fields (see attrlab.objectives) and their defaults: left out of ``config.json`` while at the default,
#: so the run directories written before these fields existed still match their configuration
OBJECTIVE_DEFAULTS: dict[str, Any] = {
    "loss": "cross_entropy",
    "temperature": 1.0,
    "objective": None,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_epochs": 0.0,
    "lr_min": 0.0,
    "lr_step_epochs": 30,
    "lr_gamma": 0.5,
    "augment": "none",
    "augment_pad": 2,
}
#: config fields that do not change a run's results, so not part of its identity: a rerun may change them
OUTSIDE_IDENTITY = ("device", "data_root", "checkpoint_every", "checkpoint_seconds", "tensorboard")


@dataclass
class TrainConfig:
    """Everything that determines a training run; saved as the run's ``config.json``."""

    dataset: str = "digits"
    model: str = "shallow"
    epochs: int = 3
    batch_size: int = 100
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    eval_every: int = 1
    eval_subset: int | None = None
    attr_per_class: int = 10
    attr_selection: str = "first"
    checkpoint_every: int = 100
    checkpoint_seconds: float = 60.0  # and at least every this many seconds of training (0: by steps only)
    device: str = "auto"
    #: deterministic CUDA kernels and cuBLAS workspace for the run (:func:`attrlab.device.set_deterministic`)
    deterministic: bool = False
    data_root: str = "data"
    extra: dict[str, Any] = field(default_factory=dict)
    # the objective (attrlab.objectives): loss, its temperature, the name of a user objective passed to train()
    loss: str = "cross_entropy"
    temperature: float = 1.0
    objective: str | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0
    lr_min: float = 0.0
    lr_step_epochs: int = 30
    lr_gamma: float = 0.5
    augment: str = "none"
    augment_pad: int = 2

    def __post_init__(self) -> None:
        require_positive_ints(self, ("epochs", "batch_size", "eval_every", "attr_per_class", "checkpoint_every"))
        if (
            isinstance(self.checkpoint_seconds, bool)
            or not isinstance(self.checkpoint_seconds, (int, float))
            or not (0 <= self.checkpoint_seconds < float("inf"))
        ):
            raise ValueError(
                f"checkpoint_seconds must be a number >= 0 (0: by steps only), got {self.checkpoint_seconds!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if self.attr_selection not in SELECTIONS:
            raise ValueError(f"unknown attr_selection {self.attr_selection!r}; valid choices: {', '.join(SELECTIONS)}")
        if not isinstance(self.deterministic, bool):
            raise ValueError(f"deterministic must be True or False, got {self.deterministic!r}")
        if self.eval_subset is not None and (not isinstance(self.eval_subset, int) or self.eval_subset <= 0):
            raise ValueError(
                f"eval_subset must be a positive integer or None (full test set), got {self.eval_subset!r}"
            )
        self._check_objective()

    def _check_objective(self) -> None:
        for name, choices in (("loss", LOSSES), ("lr_schedule", SCHEDULES), ("augment", AUGMENTATIONS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid choices: {', '.join(choices)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (self.warmup_epochs >= 0 and self.lr_min >= 0 and self.lr_gamma > 0):
            raise ValueError(
                f"warmup_epochs and lr_min must be >= 0 and lr_gamma > 0, got {self.warmup_epochs!r}, "
                f"{self.lr_min!r}, {self.lr_gamma!r}"
            )
        if self.lr_schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be shorter than the run ({self.epochs} epochs)"
            )
        for name in ("lr_step_epochs",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.augment_pad, int) or isinstance(self.augment_pad, bool) or self.augment_pad < 0:
            raise ValueError(f"augment_pad must be a non-negative integer, got {self.augment_pad!r}")
        if self.augment == "crop_flip" and self.dataset in NO_FLIP_DATASETS:
            raise ValueError(
                f"augment 'crop_flip' mirrors images, which changes what {self.dataset!r} images show; use 'crop'"
            )
        if self.objective is not None and (not isinstance(self.objective, str) or not self.objective):
            raise ValueError(f"objective must be None or the name of the objective callable, got {self.objective!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict; objective fields at their defaults are left out (see :data:`OBJECTIVE_DEFAULTS`)."""
        values = dataclasses.asdict(self)
        for name, default in OBJECTIVE_DEFAULTS.items():
            if values[name] == default and type(values[name]) is type(default):
                del values[name]
        if not self.deterministic:  # saved only when on: run directories from before the field still match
            del values["deterministic"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)


def require_positive_ints(config: Any, names: Sequence[str]) -> None:
    """Raise a ValueError naming the first of ``config``'s fields ``names`` that is not an int >= 1 (bools are not)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class Callback:
    """Hook points of the training loop. Subclasses override what they need."""

    def on_start(self, trainer: Trainer, step: int) -> None:
        """Called once before training continues after ``step`` (0 for a fresh run)."""

    def before_step(self, trainer: Trainer, step: int) -> None:
        """Called after the training backward of step ``step``, right before the optimiser step."""

    def on_step(self, trainer: Trainer, step: int) -> None:
        """Called after optimiser step ``step`` (1-based) and its metrics."""

    def attribution_logits(self, trainer: Trainer, step: int) -> torch.Tensor | None:
        """The attribution set's logits (after optimiser step ``step``, eval semantics) when this callback computes
        them at this step anyway; the trainer's ``attr_*`` metrics are then taken from them instead of another
        forward pass. None (the default): the trainer runs its own."""
        return None

    def on_flush(self, trainer: Trainer, step: int) -> None:
        """Persist everything up to ``step``: a checkpoint of that step is written right after."""

    def on_end(self, trainer: Trainer, step: int) -> None:
        """Called once after the last step."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _grouped_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[loss, acc, loss per class..., acc per class...] as one device tensor (NaN for an absent class)."""
    losses = F.cross_entropy(logits, labels, reduction="none")
    correct = (logits.argmax(1) == labels).to(losses.dtype)
    # index_add_ rather than bincount: CUDA's bincount reads the largest label back to the host (a sync per step)
    zeros = torch.zeros(num_classes, dtype=losses.dtype, device=losses.device)
    counts = zeros.index_add(0, labels, torch.ones_like(losses))
    per_class_loss = zeros.index_add(0, labels, losses)
    per_class_acc = zeros.index_add(0, labels, correct)
    return torch.cat([losses.mean()[None], correct.mean()[None], per_class_loss / counts, per_class_acc / counts])


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int = 1000
) -> torch.Tensor:
    """Loss, accuracy and their per-class values of ``model`` on (x, y), in eval mode; returns a device tensor."""
    with eval_semantics(model):  # restores each module's own flag (a frozen BatchNorm stays in eval)
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return _grouped_metrics(logits, y, num_classes)


def metric_slots(num_classes: int) -> dict[str, list[str]]:
    """The metrics table's slots (:class:`~attrlab.stepbuffer.StepBuffer`): the minibatch loss and accuracy, then
    an evaluation of the test set and of the attribution set, each in the layout of :func:`evaluate`."""
    slots = {"train_loss": ["train_loss"], "train_acc": ["train_acc"]}
    for prefix in ("test", "attr"):
        slots[prefix] = [f"{prefix}_loss", f"{prefix}_acc"]
        slots[prefix] += [f"{prefix}_loss_c{c}" for c in range(num_classes)]
        slots[prefix] += [f"{prefix}_acc_c{c}" for c in range(num_classes)]
    return slots


def metric_columns(num_classes: int) -> list[str]:
    """The metric columns of the metrics table, after ``step`` and ``epoch``."""
    return [column for columns in metric_slots(num_classes).values() for column in columns]


class Trainer:
    """Trains one model on one dataset into one run directory; see :func:`train`."""

    def __init__(
        self,
        config: TrainConfig,
        run_dir: str | Path,
        callbacks: Sequence[Callback] = (),
        dataset: ImageDataset | None = None,
        progress: bool = True,
        objective: Objective | None = None,
    ):
        # everything is checked (device, dataset, model) before the run directory is written to, so a run that
        # cannot start leaves nothing behind that would clash with the corrected command
        if (config.objective is None) != (objective is None) or (
            objective is not None and objective_name(objective) != config.objective
        ):
            given = None if objective is None else objective_name(objective)
            raise ValueError(
                f"the config names objective {config.objective!r} but the objective passed is {given!r}; "
                "pass the same objective callable (train() sets the config's name from it)"
            )
        if config.loss == "none" and objective is None:
            raise ValueError("loss 'none' trains on the user objective alone, but no objective was passed")
        self.config = config
        self.objective = objective
        self.device = resolve_device(config.device)
        self.callbacks = list(callbacks)
        if isinstance(objective, Callback) and objective not in self.callbacks:
            self.callbacks.insert(0, objective)  # an objective that needs the trainer (step, batch) hooks in itself
        self.progress = progress
        if dataset is None:
            dataset = load_dataset(config.dataset, data_root=config.data_root, device=self.device)
        elif dataset.name != config.dataset:
            raise ValueError(f"dataset {dataset.name!r} was passed but the config names {config.dataset!r}")
        self.data = dataset.to(self.device)
        self.eval_split: Split = (
            self.data.test if config.eval_subset is None else self.data.test.subset(config.eval_subset, config.seed)
        )
        self.attribution_set: AttributionSet = attribution_set(
            self.data, config.attr_per_class, config.attr_selection, seed=config.seed
        )
        self.model = build_model(config.model, self.data.input_shape, self.data.num_classes, seed=config.seed)
        self.model.to(self.device)
        self.optimizer = self._make_optimizer()
        self.sampler = BatchSampler(len(self.data.train), config.batch_size, seed=config.seed, device=self.device)
        self.store = RunStore.create(run_dir, config.to_dict(), ignore=OUTSIDE_IDENTITY)
        self.total_steps = config.epochs * self.sampler.steps_per_epoch
        self.columns = metric_columns(self.data.num_classes)
        self.step = 0
        self._last_checkpoint = time.monotonic()
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.loss: torch.Tensor | None = None

    def _make_optimizer(self) -> torch.optim.Optimizer:
        config = self.config
        if config.optimizer == "adam":
            return torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)

    def _set_learning_rate(self, step: int) -> None:
        """The schedule's rate for ``step`` (a pure function of the step: resuming needs no scheduler state)."""
        config = self.config
        if config.lr_schedule == "constant":
            return
        lr = learning_rate(
            config.lr_schedule,
            config.lr,
            step,
            self.total_steps,
            self.sampler.steps_per_epoch,
            warmup_epochs=config.warmup_epochs,
            lr_min=config.lr_min,
            step_epochs=config.lr_step_epochs,
            gamma=config.lr_gamma,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _forward_and_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits of a training batch and its loss: the configured data loss plus the user objective's term.

        An objective with a ``logits_and_term(model, x, y) -> (logits, term)`` method runs the forward pass itself
        (a loss on explanations computes the logits anyway: one forward pass serves both terms)."""
        shared = getattr(self.objective, "logits_and_term", None)
        if shared is not None:
            logits, term = shared(self.model, x, y)
            return logits, data_loss(self.config.loss, logits, y, self.config.temperature) + term
        logits = self.model(x)
        loss = data_loss(self.config.loss, logits, y, self.config.temperature)
        if self.objective is not None:
            loss = loss + self.objective(self.model, x, y, logits)
        return logits, loss

    # ------------------------------------------------------------ checkpoint
    def _state(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "callbacks": {key: callback.state_dict() for key, callback in self._keyed_callbacks().items()},
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _keyed_callbacks(self) -> dict[str, Callback]:
        """Callbacks by a stable key (class name, numbered when repeated) for their checkpointed state."""
        keyed: dict[str, Callback] = {}
        for callback in self.callbacks:
            name = type(callback).__name__
            key, number = name, 1
            while key in keyed:
                number += 1
                key = f"{name}-{number}"
            keyed[key] = callback
        return keyed

    def _resume(self) -> int:
        if not self.store.checkpoint_steps():
            self.store.truncate_tables(0)
            return 0
        state = self.store.load_newest_readable_checkpoint(map_location=self.device)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng_cpu"].cpu())
            if "rng_cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)
            saved = state["callbacks"]
            for key, callback in self._keyed_callbacks().items():
                if key in saved:  # a callback added on resume starts fresh from this step
                    callback.load_state_dict(saved[key])
            step = int(state["step"])
        except (KeyError, RuntimeError, ValueError) as err:
            raise RunStoreError(
                f"checkpoint of {self.store.root} does not fit this run ({type(err).__name__}: {err})"
            ) from err
        self.store.truncate_tables(step)
        print(f"resuming {self.store.root} from step {step} of {self.total_steps}", flush=True)
        return step

    # ------------------------------------------------------------------- run
    def fit(self) -> RunStore:
        """Train to the end (resuming if the run directory holds a checkpoint) and return the run store."""
        if self.store.complete:
            return self.store
        with self.store.lock():  # a second trainer on this directory stops here instead of interleaving
            if self.config.deterministic:  # callbacks too run under it; settings are restored afterwards
                with deterministic_mode(True):
                    return self._fit()
            return self._fit()

    def _fit(self) -> RunStore:
        start = self._resume()
        self._last_checkpoint = time.monotonic()
        self.step = start
        for callback in self.callbacks:
            callback.on_start(self, start)
        capacity = min(self.config.checkpoint_every, self.total_steps)
        buffer = StepBuffer(metric_slots(self.data.num_classes), capacity, self.device, keys=("step", "epoch"))
        x_train, y_train = self.data.train.x, self.data.train.y
        fill = INPUT_BOUNDS[0]  # crops shift in black, the lowest value of attrlab's normalised images
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=start, desc=f"train {self.config.model}", disable=not self.progress)
        for step in range(start + 1, self.total_steps + 1):
            index = self.sampler.indices(step - 1)
            xb, yb = x_train[index], y_train[index]
            xb = augment(xb, self.config.augment, self.config.augment_pad, self.config.seed, step, fill)
            logits, loss = self._forward_and_loss(xb, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.step, self.batch, self.loss = step, (xb, yb), loss.detach()
            for callback in self.callbacks:
                callback.before_step(self, step)
            self._set_learning_rate(step)
            self.optimizer.step()

            metrics = {"train_loss": self.loss, "train_acc": (logits.detach().argmax(1) == yb).float().mean()}
            if step % self.config.eval_every == 0 or step == self.total_steps:
                metrics["test"] = evaluate(self.model, self.eval_split.x, self.eval_split.y, self.data.num_classes)
                attr = self.attribution_set
                shared = next((l for c in self.callbacks if (l := c.attribution_logits(self, step)) is not None), None)
                metrics["attr"] = (
                    evaluate(self.model, attr.x, attr.y, self.data.num_classes)
                    if shared is None
                    else _grouped_metrics(shared.detach(), attr.y, self.data.num_classes)
                )
            epoch = (step - 1) // self.sampler.steps_per_epoch + 1
            buffer.append({"step": step, "epoch": epoch}, **metrics)
            for callback in self.callbacks:
                callback.on_step(self, step)
            if step % self.config.checkpoint_every == 0 or step == self.total_steps or self._checkpoint_due():
                self._flush(buffer)
            bar.update(1)
        bar.close()
        for callback in self.callbacks:
            callback.on_end(self, self.total_steps)
        self.store.mark_complete(self.total_steps)
        return self.store

    def _flush(self, buffer: StepBuffer) -> None:
        self.store.append_table("metrics", buffer.flush())
        for callback in self.callbacks:
            callback.on_flush(self, self.step)
        self.store.save_checkpoint(self.step, self._state(), keep=2)  # the previous one stays as a fallback
        self._last_checkpoint = time.monotonic()

    def _checkpoint_due(self) -> bool:
        """Whether ``checkpoint_seconds`` of training have passed since the last checkpoint (a host clock, no sync)."""
        seconds = self.config.checkpoint_seconds
        return bool(seconds) and time.monotonic() - self._last_checkpoint >= seconds


def train(
    run_dir: str | Path,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    dataset: ImageDataset | None = None,
    progress: bool = True,
    objective: Objective | None = None,
    tensorboard: str | Path | bool | None = None,
    **overrides: Any,
) -> Run:
    """Train (or resume, or just open if finished) the run in ``run_dir``; keyword overrides set config fields.

    ``objective(model, x, y, logits) -> scalar`` is added to the configured loss at every step (see
    :mod:`attrlab.objectives`); the config records its name, and resuming needs the same callable again.
    ``tensorboard``: also log to TensorBoard (:class:`attrlab.tensorboard.TensorBoardLogger`, after the other
    callbacks) into this folder, or into ``<run_dir>/tensorboard`` for ``True``.
    """
    if objective is not None:
        overrides.setdefault("objective", objective_name(objective))
    config = dataclasses.replace(config or TrainConfig(), **overrides)
    if tensorboard:
        from .tensorboard import TensorBoardLogger

        callbacks = [*callbacks, TensorBoardLogger(None if tensorboard is True else tensorboard)]
    Trainer(config, run_dir, callbacks=callbacks, dataset=dataset, progress=progress, objective=objective).fit()
    return Run(run_dir)


class Run:
    """A finished or partial run directory, read back: config, tables as DataFrames, checkpoints as models."""

    def __init__(self, run_dir: str | Path):
        self.store = RunStore(run_dir)
        self.config = TrainConfig.from_dict(self.store.config())

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def complete(self) -> bool:
        return self.store.complete

    @property
    def metrics(self) -> pd.DataFrame:
        """One row per optimiser step (evaluation columns are NaN on steps without evaluation)."""
        return self.store.read_table("metrics")

    def table(self, name: str) -> pd.DataFrame:
        return self.store.read_table(name)

    def load_model(self, step: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The model as saved at checkpoint ``step`` (default: the newest), in eval mode."""
        state = self.store.load_checkpoint(step, map_location=device)
        shape, num_classes = DATASET_SHAPES[self.config.dataset]
        model = build_model(self.config.model, shape, num_classes)
        model.load_state_dict(state["model"])
        return model.to(device).eval()

    def __repr__(self) -> str:
        status = "complete" if self.complete else "incomplete"
        return f"Run({str(self.root)!r}, {self.config.model} on {self.config.dataset}, {status})"
