"""Explanation-enhanced knowledge distillation (e²KD, Parchami-Araghi et al. 2024; Böhle 2024, chapter 8).

A student learns from a teacher's softened outputs (KD, Hinton et al. 2015) and, with e²KD, also to explain the
teacher's top class as the teacher does: ``L = L_KD + lambda (1 - cos(E_T, E_S))``.

* :mod:`~attrlab.distill.losses`: the KD loss, the explanation loss, map resizing and the cosine;
* :mod:`~attrlab.distill.explain`: which differentiable explanation each model gets (Grad-CAM or B-cos);
* :mod:`~attrlab.distill.teacher`: the teacher's targets, live or frozen (precomputed, cropped with the images);
* :mod:`~attrlab.distill.objective`: :class:`Distillation`, the trainer objective (``loss="none"``);
* :mod:`~attrlab.distill.evaluate`: accuracy, agreement and explanation similarity of a student;
* :mod:`~attrlab.distill.study`: the thesis' protocol at digits scale (teachers, shots, KD against e²KD) and its
  claims.
"""

from .evaluate import agreement, explanation_similarity, predictions, student_scores
from .explain import TrainingExplanation, default_explanation, is_bcos
from .losses import explanation_loss, kd_loss, map_similarity, resize_maps
from .objective import Distillation
from .teacher import FrozenTeacher, teacher_targets, to_image_size

__all__ = [
    "Distillation",
    "FrozenTeacher",
    "TrainingExplanation",
    "agreement",
    "default_explanation",
    "explanation_loss",
    "explanation_similarity",
    "is_bcos",
    "kd_loss",
    "map_similarity",
    "predictions",
    "resize_maps",
    "student_scores",
    "teacher_targets",
    "to_image_size",
]
