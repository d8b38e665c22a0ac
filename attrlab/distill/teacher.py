"""A teacher's outputs for distillation: live (queried on every augmented batch) or frozen (computed once, stored).

Thesis §8.1.3: instead of querying the teacher at every step, its logits and explanations of the un-augmented
training images are computed once; during distillation the stored maps get the *same* crops (and flips) as the
images, and the stored logits are used as they are ("frozen logits"). This saves the teacher's forward and backward
passes per step at the price of approximate targets: a map cropped after the fact is not the map of the cropped image.

Both kinds go through one path so that they agree exactly when augmentation is off: the teacher's (N, h, w) map is
first resized to the image size (:func:`to_image_size`), then (frozen only) cropped with the batch's augmentation, and
only then resized to the common size of the explanation loss. The student's map takes the same path (without the
crop), so that a student explaining exactly as its teacher scores a cosine of 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attribution.model_state import eval_semantics
from ..objectives import augment
from .explain import TrainingExplanation


def to_image_size(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, h, w) maps resized bilinearly (``align_corners=False``) to (N, height, width); unchanged when equal."""
    if tuple(maps.shape[1:]) == (height, width):
        return maps
    return F.interpolate(maps[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def teacher_targets(
    teacher: nn.Module, x: torch.Tensor, explanation: TrainingExplanation
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits for ``x`` and its maps of its own top class, at the images' size; no graph, eval mode.

    Parameters
    ----------
    teacher : nn.Module
        The trained teacher (left unchanged).
    x : torch.Tensor
        (N, C, H, W) images.
    explanation : TrainingExplanation
        The teacher's explanation.

    Returns
    -------
    tuple of torch.Tensor
        Logits (N, classes) and maps (N, H, W), both detached.
    """
    with eval_semantics(teacher):
        with torch.no_grad():
            logits = teacher(x)
        maps = explanation(teacher, x, logits.argmax(1), create_graph=False)
    return logits.detach(), to_image_size(maps.detach(), x.shape[-2], x.shape[-1])


@dataclass
class FrozenTeacher:
    """The teacher's logits (N, classes) and maps (N, H, W) of every training image, in training-split order.

    Build it with :meth:`compute`; :meth:`batch` returns a step's targets, the maps cropped as the images were.
    """

    logits: torch.Tensor
    maps: torch.Tensor
    explanation: TrainingExplanation

    @classmethod
    def compute(
        cls, teacher: nn.Module, x: torch.Tensor, explanation: TrainingExplanation, batch_size: int = 250
    ) -> FrozenTeacher:
        """Query ``teacher`` once on the training images ``x`` (N, C, H, W), in chunks of ``batch_size``.

        Parameters
        ----------
        teacher : nn.Module
            The trained teacher.
        x : torch.Tensor
            The un-augmented training images, in the order the trainer indexes them.
        explanation : TrainingExplanation
            The teacher's explanation.
        batch_size : int
            Images per teacher call.

        Returns
        -------
        FrozenTeacher
            Logits and image-size maps of every image.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        parts = [teacher_targets(teacher, x[i : i + batch_size], explanation) for i in range(0, len(x), batch_size)]
        return cls(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), explanation)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def batch(
        self, index: torch.Tensor, kind: str, pad: int, seed: int, step: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and maps of the training images ``index`` at ``step``, the maps augmented exactly as the trainer
        augmented those images (:func:`attrlab.objectives.augment` with the run's kind, pad and seed; 0 shifted in).
        """
        maps = augment(self.maps[index][:, None], kind, pad, seed, step, fill=0.0)[:, 0]
        return self.logits[index], maps


__all__ = ["FrozenTeacher", "teacher_targets", "to_image_size"]
