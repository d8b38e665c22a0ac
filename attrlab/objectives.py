"""Training objectives, learning-rate schedules and on-device augmentation: the configurable parts of a training step.

:class:`attrlab.train.Trainer` only calls into this module, so the trainer's loop stays one loop:

* **losses** (:func:`data_loss`): ``"cross_entropy"`` (the seed code's), or ``"bce"``, the one-vs-all binary
  cross-entropy of the B-cos and CoDA networks (Böhle et al. 2021, 2022; thesis eqs. 5.12 and 6.17) on
  ``sigmoid(logit / T + b)`` with temperature ``T`` and the logit bias ``b = log(1 / (C - 1))``, so that an
  untrained network whose logits are near zero predicts the prior ``1 / C`` for every class; or ``"none"``: no
  loss on the labels, the user objective is the whole loss (knowledge distillation trains on the teacher's outputs,
  :mod:`attrlab.distill`);
* a user **objective** (:data:`Objective`): a callable ``objective(model, x, y, logits) -> scalar`` whose value is
  added to the data loss, for losses on explanations (it sees the model and the batch); it cannot be serialised, so
  a run's config records its name and resuming checks that a callable of that name is passed again;
* **learning-rate schedules** (:func:`learning_rate`): a pure function of the step, so resuming needs no scheduler
  state: ``"constant"``, ``"cosine"`` (linear warm-up, then a cosine decay to ``lr_min``) and ``"step"`` (times
  ``lr_gamma`` every ``lr_step_epochs`` epochs);
* **augmentation** (:func:`augment`): padded random crops (random shifts with the background value filled in) and
  optional horizontal flips, for a whole batch at once on its device, drawn from a generator seeded by
  ``(seed, step)``: a resumed run draws the same crops without storing any RNG state, and the same call replays a
  step's crops on anything stored per image (a teacher's maps, :mod:`attrlab.distill`), since the draw depends only on
  the seed, the step and the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("cross_entropy", "bce", "none")
SCHEDULES = ("constant", "cosine", "step")
AUGMENTATIONS = ("none", "crop", "crop_flip")
#: datasets whose images must not be mirrored (a mirrored digit is another symbol or none)
NO_FLIP_DATASETS = ("digits", "fashionmnist")

#: ``objective(model, x, y, logits) -> scalar tensor``, added to the data loss of every training step
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def objective_name(objective: Objective) -> str:
    """The name a run's config records for a user objective (its ``__name__``, else its class name)."""
    return getattr(objective, "__name__", None) or type(objective).__name__


def logit_bias(num_classes: int) -> float:
    """``log(1 / (C - 1))``: with it ``sigmoid(0 + b) = 1 / C``, the class prior, for every class."""
    if num_classes < 2:
        raise ValueError(f"the logit bias needs at least 2 classes, got {num_classes}")
    return math.log(1.0 / (num_classes - 1))


def bce_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean one-vs-all binary cross-entropy of ``sigmoid(logits / temperature + log(1 / (C - 1)))`` and one-hot labels.

    Parameters
    ----------
    logits : torch.Tensor
        (N, C) network outputs.
    labels : torch.Tensor
        (N,) class indices.
    temperature : float
        T > 0; a larger T needs larger logits for the same confidence (thesis eq. 5.12: stronger alignment pressure).

    Returns
    -------
    torch.Tensor
        The scalar loss (mean over images and classes).
    """
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits / temperature + logit_bias(logits.shape[1]), targets)


def data_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The configured loss of (logits, labels): ``"cross_entropy"``, ``"bce"`` (see :func:`bce_loss`) or ``"none"`` (0).

    Parameters
    ----------
    kind : str
        One of :data:`LOSSES`.
    logits, labels : torch.Tensor
        (N, C) outputs and (N,) class indices.
    temperature : float
        Only for ``"bce"``.

    Returns
    -------
    torch.Tensor
        The scalar mean loss.
    """
    if kind == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if kind == "bce":
        return bce_loss(logits, labels, temperature)
    if kind == "none":  # the user objective is the whole loss
        return logits.new_zeros(())
    raise ValueError(f"unknown loss {kind!r}; valid choices: {', '.join(LOSSES)}")


def learning_rate(
    schedule: str,
    base_lr: float,
    step: int,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 0.0,
    lr_min: float = 0.0,
    step_epochs: int = 30,
    gamma: float = 0.5,
) -> float:
    """The learning rate of optimiser step ``step`` (1-based) under ``schedule``.

    Parameters
    ----------
    schedule : str
        ``"constant"``; ``"cosine"``: linear warm-up from ``base_lr / warmup steps`` to ``base_lr`` over
        ``warmup_epochs``, then ``lr_min + (base_lr - lr_min) (1 + cos(pi p)) / 2`` with p the fraction of the
        remaining steps done (``lr_min`` at the last step); ``"step"``: ``base_lr * gamma ** (epoch // step_epochs)``
        with the 0-based epoch of the step.
    base_lr : float
        The configured learning rate.
    step, total_steps, steps_per_epoch : int
        The step (1-based), the run's number of steps and steps per epoch.
    warmup_epochs, lr_min : float
        Cosine schedule: warm-up length (may be fractional) and final learning rate.
    step_epochs : int
        Step schedule: epochs between decays.
    gamma : float
        Step schedule: the decay factor.

    Returns
    -------
    float
        The learning rate.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * gamma ** (((step - 1) // steps_per_epoch) // step_epochs)
    if schedule == "cosine":
        warmup = round(warmup_epochs * steps_per_epoch)
        if step <= warmup:
            return base_lr * step / warmup
        span = max(total_steps - warmup - 1, 1)
        progress = min((step - warmup - 1) / span, 1.0)
        return lr_min + (base_lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_schedule {schedule!r}; valid choices: {', '.join(SCHEDULES)}")


def augment(x: torch.Tensor, kind: str, pad: int, seed: int, step: int, fill: float = -1.0) -> torch.Tensor:
    """A padded random crop of every image (and a random horizontal flip for ``"crop_flip"``), batched on x's device.

    Each image is padded by ``pad`` pixels of ``fill`` on every side and cropped back to its size at a random offset,
    i.e. shifted by up to ``pad`` pixels in each direction with the background value filled in (``-1``: black in
    attrlab's [-1, 1] images). The offsets (and flips) come from a generator seeded by ``(seed, step)``.

    Parameters
    ----------
    x : torch.Tensor
        (N, C, H, W) images.
    kind : str
        One of :data:`AUGMENTATIONS` (``"none"`` returns ``x`` itself).
    pad : int
        The largest shift in pixels (>= 0).
    seed, step : int
        Select the random draw (same seed and step, same crops).
    fill : float
        The value shifted in at the borders.

    Returns
    -------
    torch.Tensor
        The augmented batch, shaped like ``x``.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {kind!r}; valid choices: {', '.join(AUGMENTATIONS)}")
    if kind == "none" or (pad == 0 and kind == "crop"):
        return x
    batch, _, height, width = x.shape
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator).to(x.device)
    flips = torch.rand(batch, generator=generator).to(x.device) < 0.5
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)
    rows = (offsets[0][:, None] + torch.arange(height, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = offsets[1][:, None] + torch.arange(width, device=x.device)  # (N, W)
    if kind == "crop_flip":
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    cols = cols[:, None, None, :]  # (N, 1, 1, W)
    index = torch.arange(batch, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[index, channel, rows, cols]


__all__ = [
    "AUGMENTATIONS",
    "LOSSES",
    "NO_FLIP_DATASETS",
    "SCHEDULES",
    "Objective",
    "augment",
    "bce_loss",
    "data_loss",
    "learning_rate",
    "logit_bias",
    "objective_name",
]
