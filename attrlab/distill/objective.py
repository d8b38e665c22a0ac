"""The e²KD training objective: ``L_KD + lambda L_exp`` for :func:`attrlab.train.train` with ``loss="none"``.

:class:`Distillation` is a trainer objective (``objective(model, x, y, logits)``, :mod:`attrlab.objectives`) and a
:class:`~attrlab.train.Callback` (the trainer registers it as one): it reads the trainer's step and batch positions,
which a frozen teacher needs to crop its stored maps as the trainer cropped the images. With ``lam = 0`` it is plain
KD and no explanation is computed. The labels ``y`` are not used (thesis eq. 8.2: no cross-entropy term).

Per step, live: the teacher's logits and its map of its top class ``ŷ_T`` on the augmented batch (no graph); frozen:
both looked up (:class:`~attrlab.distill.teacher.FrozenTeacher`). Then the student's map of ``ŷ_T`` with a graph to
its parameters, taken through the image size as the teacher's is, and :func:`~attrlab.distill.losses.kd_loss`
+ ``lam`` :func:`~attrlab.distill.losses.explanation_loss`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..attribution.model_state import eval_semantics
from ..train import Callback
from .explain import TrainingExplanation
from .losses import explanation_loss, kd_loss
from .teacher import FrozenTeacher, teacher_targets, to_image_size

if TYPE_CHECKING:
    from ..train import Trainer


class Distillation(Callback):
    """KD (``lam = 0``) or e²KD from ``teacher``; pass it as ``objective=`` with ``loss="none"``.

    Parameters
    ----------
    teacher : nn.Module
        The trained teacher, on the training device; it is not trained (its parameters stay out of the optimiser).
    tau : float
        The KD softmax temperature (thesis: 1 to 5).
    lam : float
        Weight of the explanation loss, >= 0 (thesis: 1, 5, 10; frozen 0.2 to 10).
    teacher_explanation, student_explanation : TrainingExplanation
        How each model is explained (:func:`~attrlab.distill.explain.default_explanation`).
    size : int
        The common side both maps are resized to for the cosine.
    frozen : FrozenTeacher or None
        Precomputed teacher logits and maps of the training split (same order); ``None`` queries the teacher live.
    """

    def __init__(
        self,
        teacher: nn.Module,
        tau: float,
        lam: float,
        teacher_explanation: TrainingExplanation,
        student_explanation: TrainingExplanation,
        size: int,
        frozen: FrozenTeacher | None = None,
    ):
        if not tau > 0:
            raise ValueError(f"the KD temperature tau must be positive, got {tau!r}")
        if not lam >= 0:
            raise ValueError(f"the explanation loss weight lam must be >= 0, got {lam!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"the common map size must be a positive integer, got {size!r}")
        if frozen is not None and frozen.explanation != teacher_explanation:
            raise ValueError(
                f"the frozen maps are {frozen.explanation.label} but teacher_explanation is {teacher_explanation.label}"
            )
        self.teacher = teacher
        self.tau, self.lam, self.size = float(tau), float(lam), size
        self.teacher_explanation, self.student_explanation = teacher_explanation, student_explanation
        self.frozen = frozen
        self._trainer: Trainer | None = None
        #: the name the run's config records (resuming checks it): every setting that changes the loss
        kind = "kd" if lam == 0 else f"e2kd_lam{lam:g}_{teacher_explanation.label}_{student_explanation.label}_s{size}"
        self.__name__ = f"{kind}_tau{tau:g}" + ("_frozen" if frozen is not None else "")

    # -------------------------------------------------------------- callback
    def on_start(self, trainer: Trainer, step: int) -> None:
        if self.frozen is not None and len(self.frozen) != len(trainer.data.train):
            raise ValueError(
                f"the frozen teacher holds {len(self.frozen)} images but the training split has "
                f"{len(trainer.data.train)}"
            )
        self._trainer = trainer

    # ------------------------------------------------------------- objective
    def teacher_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits and (image-size) maps for the current batch; maps are ``None`` for plain KD."""
        if self.frozen is None:
            if self.lam == 0:
                with eval_semantics(self.teacher), torch.no_grad():
                    return self.teacher(x), None
            return teacher_targets(self.teacher, x, self.teacher_explanation)
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("a frozen teacher needs the trainer's batch: pass the objective to train(objective=...)")
        # during a step's loss trainer.step is still the previous step (the trainer sets it after the backward pass)
        step = trainer.step + 1
        index = trainer.sampler.indices(step - 1)
        if len(index) != len(x):
            raise RuntimeError(
                f"the trainer's batch of step {step} has {len(index)} images but the objective got {len(x)}"
            )
        config = trainer.config
        logits, maps = self.frozen.batch(index, config.augment, config.augment_pad, config.seed, step)
        return logits, (None if self.lam == 0 else maps)

    def losses(self, model: nn.Module, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The KD loss and the explanation loss (0 when ``lam = 0``) of the student ``model`` on batch ``x``."""
        teacher_logits, teacher_maps = self.teacher_batch(x)
        kd = kd_loss(logits, teacher_logits, self.tau)
        if teacher_maps is None:
            return kd, kd.new_zeros(())
        top = teacher_logits.argmax(1)
        student_maps = self.student_explanation(model, x, top, create_graph=True)
        # the teacher's path: through the image size, so equal models give equal maps (cosine 1)
        student_maps = to_image_size(student_maps, x.shape[-2], x.shape[-1])
        return kd, explanation_loss(teacher_maps, student_maps, self.size)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        kd, exp = self.losses(model, x, logits)
        return kd if self.lam == 0 else kd + self.lam * exp


__all__ = ["Distillation"]
