"""Model guidance as a trainer objective: ``lambda * L_loc`` on the map of one random ground-truth class per image.

:class:`GuidanceObjective` is both the ``objective(model, x, y, logits)`` the trainer adds to its data loss
(:mod:`attrlab.objectives`) and a :class:`~attrlab.train.Callback`: the trainer hands an objective only the batch, so
the callback's ``on_start`` keeps the trainer, whose sampler gives the indices of the batch being trained (the step
about to be counted, ``trainer.step + 1``); the first call checks that the images at those indices are the batch, so a
change in the trainer cannot silently pair images with other images' boxes. Augmentations move images but not boxes,
so guided runs use ``augment="none"`` (checked at the start). Pass the same object as ``objective=`` and in
``callbacks=``.

Per image one ground-truth class is drawn at random every step (thesis sec. 7.1.5: one backward pass per batch
instead of one per class), from a generator seeded by ``(seed, step)``, so a resumed run draws the same classes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..attribution.differentiable import TRAINING_METHODS, explain_for_training, explain_with_logits
from ..canvas import CanvasSplit
from .losses import LOSSES, localisation_loss

if TYPE_CHECKING:
    from ..train import Trainer

from ..train import Callback

MASK_KINDS = ("box", "pixels", "outside")


def random_classes(labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random present slot per row of ``labels`` (N, K) (-1 empty): its class (N,) and slot index (N,).

    Parameters
    ----------
    labels : torch.Tensor
        (N, K) classes per digit slot, -1 for an empty slot; every row holds at least one class.
    generator : torch.Generator
        A CPU generator (the draw is copied to ``labels``' device).

    Returns
    -------
    tuple of torch.Tensor
        ``(classes, slots)``.
    """
    draw = torch.rand(labels.shape, generator=generator).to(labels.device)
    slots = torch.where(labels >= 0, draw, torch.full_like(draw, -1.0)).argmax(1)
    return labels.gather(1, slots[:, None])[:, 0], slots


class GuidanceObjective(Callback):
    """``lambda * L_loc`` (thesis eq. 7.1) for training on a :class:`~attrlab.canvas.CanvasSplit` with the trainer.

    Parameters
    ----------
    split : CanvasSplit
        The training split the trainer draws from (its boxes are the annotations; pass a
        :func:`~attrlab.canvas.dilate_boxes` copy for coarse boxes).
    loss : str
        One of :data:`~attrlab.guidance.losses.LOSSES`.
    method : str
        One of :data:`~attrlab.attribution.differentiable.TRAINING_METHODS`.
    layer : str
        ``"input"`` or a layer name of the model.
    lam : float
        The weight lambda_loc (> 0).
    annotated : torch.Tensor, optional
        (N,) booleans over ``split``: the images with boxes (:func:`~attrlab.canvas.annotated_subset`); default all.
    mask : str
        ``"box"`` (the class's box), ``"pixels"`` (its ink), or ``"outside"`` (everything but the box: guiding
        towards the background, the "reversed" rows of thesis Table 7.1).
    seed : int
        Seeds the per-step class draws.
    """

    def __init__(
        self,
        split: CanvasSplit,
        loss: str,
        method: str,
        layer: str = "input",
        lam: float = 1e-3,
        annotated: torch.Tensor | None = None,
        mask: str = "box",
        seed: int = 0,
    ):
        if not isinstance(split, CanvasSplit):
            raise TypeError(f"split must be a CanvasSplit (the boxes), not {type(split).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"unknown localisation loss {loss!r}; valid choices: {', '.join(LOSSES)}")
        if method not in TRAINING_METHODS:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(TRAINING_METHODS)}")
        if mask not in MASK_KINDS:
            raise ValueError(f"unknown mask {mask!r}; valid choices: {', '.join(MASK_KINDS)}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ValueError(f"lam must be a positive number, got {lam!r}")
        if annotated is not None and (annotated.dtype != torch.bool or annotated.shape != (len(split),)):
            raise ValueError(
                f"annotated must be a boolean tensor of shape ({len(split)},), got {annotated.dtype} "
                f"{tuple(annotated.shape)}"
            )
        self.split, self.loss, self.method, self.layer, self.lam = split, loss, method, layer, float(lam)
        self.annotated, self.mask, self.seed = annotated, mask, seed
        #: the name a run's config records (attrlab.objectives.objective_name reads it)
        self.__name__ = f"guidance-{loss}-{method}-{layer}"
        self.trainer: Trainer | None = None
        self._checked = False

    # ------------------------------------------------------------------ callback side
    def on_start(self, trainer: Trainer, step: int) -> None:
        if trainer.config.augment != "none":
            raise ValueError(
                f"guided training needs augment='none' (crops move the images, not the boxes), got "
                f"{trainer.config.augment!r}"
            )
        if len(trainer.data.train) != len(self.split):
            raise ValueError(
                f"the trainer's training split has {len(trainer.data.train)} images, the guidance split "
                f"{len(self.split)}: pass the split the trainer trains on"
            )
        self.trainer = trainer
        self.split = self.split.to(trainer.device)
        if self.annotated is not None:
            self.annotated = self.annotated.to(trainer.device)

    # ------------------------------------------------------------------ objective side
    def masks_for(self, index: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The guided classes (N,), their masks (N, H, W) and weights (N,) of the split's images ``index``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        labels = self.split.labels[index]
        classes, slots = random_classes(labels, generator)
        boxes = self.split.box_masks[index] if self.mask != "pixels" else self.split.masks[index]
        masks = boxes.gather(1, slots[:, None, None, None].expand(-1, 1, *boxes.shape[-2:]))[:, 0]
        if self.mask == "outside":
            masks = ~masks
        weight = self.annotated[index] if self.annotated is not None else torch.ones_like(classes, dtype=torch.bool)
        return classes, masks, weight

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        classes, masks, weight = self._batch_masks(x)
        maps = explain_for_training(model, x, classes, self.method, self.layer)
        return self.lam * localisation_loss(self.loss, maps, masks, weight)

    def logits_and_term(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's logits and ``lambda * L_loc`` from one forward pass (the trainer uses this form: the map's
        forward pass also gives the logits of the data loss, so a guided step runs the model once)."""
        classes, masks, weight = self._batch_masks(x)
        maps, logits = explain_with_logits(model, x, classes, self.method, self.layer)
        return logits, self.lam * localisation_loss(self.loss, maps, masks, weight)

    def _batch_masks(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.trainer is None:
            raise RuntimeError(
                "GuidanceObjective needs the trainer: pass the same object as objective= and in callbacks="
            )
        step = self.trainer.step + 1  # the trainer counts the step after its backward pass
        index = self.trainer.sampler.indices(step - 1)
        if not self._checked:  # once: the batch must be the split's images at the sampler's indices
            if not torch.equal(self.split.x[index], x):
                raise RuntimeError("the trainer's batch is not the guidance split's images at the sampler's indices")
            self._checked = True
        return self.masks_for(index, step)

    def state_dict(self) -> dict[str, Any]:
        return {}


__all__ = ["MASK_KINDS", "GuidanceObjective", "random_classes"]
