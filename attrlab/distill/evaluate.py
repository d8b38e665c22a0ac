"""How faithful a distilled student is: accuracy, agreement with the teacher and the similarity of their explanations.

Thesis eq. 8.4: agreement is the share of images on which student and teacher predict the same top-1 class. The
explanation similarity is the cosine of eq. 8.3 on held-out images: the teacher's and the student's maps of the
teacher's top class, resized to the common side, averaged over images (thesis §8.2.3 compares explanations so).
"""

from __future__ import annotations

import torch
from torch import nn

from ..attribution.model_state import eval_semantics
from .explain import TrainingExplanation
from .losses import map_similarity, resize_maps
from .teacher import teacher_targets, to_image_size


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Top-1 classes (N,) of ``model`` on ``x``, in eval mode, in chunks of ``batch_size``."""
    with eval_semantics(model):
        return torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def agreement(teacher: nn.Module, student: nn.Module, x: torch.Tensor) -> float:
    """Share of images of ``x`` on which ``student`` and ``teacher`` predict the same class (thesis eq. 8.4).

    Parameters
    ----------
    teacher, student : nn.Module
        The two classifiers.
    x : torch.Tensor
        (N, C, H, W) images.

    Returns
    -------
    float
        In [0, 1].
    """
    return (predictions(teacher, x) == predictions(student, x)).double().mean().item()


def explanation_similarity(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    teacher_explanation: TrainingExplanation,
    student_explanation: TrainingExplanation,
    size: int,
    batch_size: int = 250,
) -> torch.Tensor:
    """Per-image cosine (N,) between the teacher's and the student's maps of the teacher's top class.

    The maps take the loss' path (both through the image size, then to ``size``), so on training images the mean
    is one minus the explanation loss of a live teacher without augmentation, and a model compared with itself scores 1.

    Parameters
    ----------
    teacher, student : nn.Module
        The two classifiers (both evaluated in eval mode).
    x : torch.Tensor
        (N, C, H, W) images.
    teacher_explanation, student_explanation : TrainingExplanation
        How each is explained.
    size : int
        The common side of the maps.
    batch_size : int
        Images per call.

    Returns
    -------
    torch.Tensor
        (N,) similarities in [-1, 1], on ``x``'s device.
    """
    values = []
    for i in range(0, len(x), batch_size):
        chunk = x[i : i + batch_size]
        logits, teacher_maps = teacher_targets(teacher, chunk, teacher_explanation)
        with eval_semantics(student):
            student_maps = student_explanation(student, chunk, logits.argmax(1), create_graph=False).detach()
        student_maps = to_image_size(student_maps, chunk.shape[-2], chunk.shape[-1])
        values.append(map_similarity(resize_maps(teacher_maps, size), resize_maps(student_maps, size)))
    return torch.cat(values)


def student_scores(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    teacher_explanation: TrainingExplanation,
    student_explanation: TrainingExplanation,
    size: int,
) -> dict[str, float]:
    """Accuracy, agreement and mean explanation similarity of ``student`` (and the teacher's accuracy) on (x, y).

    Parameters
    ----------
    teacher, student : nn.Module
        The two classifiers.
    x, y : torch.Tensor
        Held-out images (N, C, H, W) and labels (N,).
    teacher_explanation, student_explanation : TrainingExplanation
        How each is explained.
    size : int
        The common side of the maps.

    Returns
    -------
    dict
        ``accuracy``, ``agreement``, ``similarity`` (each in [0, 1] or [-1, 1]) and ``teacher_accuracy``.
    """
    student_pred, teacher_pred = predictions(student, x), predictions(teacher, x)
    similarity = explanation_similarity(teacher, student, x, teacher_explanation, student_explanation, size)
    return {
        "accuracy": (student_pred == y).double().mean().item(),
        "agreement": (student_pred == teacher_pred).double().mean().item(),
        "similarity": similarity.double().mean().item(),
        "teacher_accuracy": (teacher_pred == y).double().mean().item(),
    }


__all__ = ["agreement", "explanation_similarity", "predictions", "student_scores"]
