"""The e²KD losses: the KD loss on softened outputs and the explanation loss 1 - cos between resized maps.

Thesis eqs. 8.1-8.3 (Parchami-Araghi et al. 2024): ``L_KD = tau^2 KL(p_T(x; tau) || p_S(x; tau))`` with
``p(x; tau) = softmax(logits / tau)`` (the ``tau^2`` keeps the gradients' size independent of tau, Hinton et al.
2015), and ``L_exp = 1 - cos(E_T, E_S)`` between the teacher's and the student's explanation of the teacher's top
class. Teacher and student maps can have different resolutions (Grad-CAM at a 7x7 and a 14x14 layer), so both are
resized to one common side first: :func:`resize_maps` averages when shrinking (every pixel counts once) and
interpolates bilinearly when growing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: added to the norms of the cosine so an all-zero map (a dead Grad-CAM) gives similarity 0, not NaN
EPS = 1e-12


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """``tau^2 KL(softmax(t / tau) || softmax(s / tau))``, averaged over the batch (thesis eq. 8.1).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        (N, C) logits; the teacher's carry no gradient of their own (pass them detached).
    tau : float
        The softmax temperature, > 0.

    Returns
    -------
    torch.Tensor
        The scalar loss.
    """
    if not tau > 0:
        raise ValueError(f"the KD temperature tau must be positive, got {tau!r}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            f"student and teacher logits must both be (N, C), got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}"
        )
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / tau, dim=1)
    return tau**2 * F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) maps resized to (N, size, size): area averaging to shrink, bilinear (``align_corners=False``) to grow.

    Parameters
    ----------
    maps : torch.Tensor
        (N, h, w) square maps.
    size : int
        The common side.

    Returns
    -------
    torch.Tensor
        (N, size, size); ``maps`` itself when it has that size already.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, h, w), got shape {tuple(maps.shape)}")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"the common map size must be a positive integer, got {size!r}")
    if tuple(maps.shape[1:]) == (size, size):
        return maps
    mode = "area" if maps.shape[1] >= size and maps.shape[2] >= size else "bilinear"
    options = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(maps[:, None], size=(size, size), mode=mode, **options)[:, 0]


def map_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-image cosine similarity of two (N, h, w) batches of maps of one size: (N,) values in [-1, 1]."""
    if first.shape != second.shape:
        raise ValueError(f"maps to compare must have one shape, got {tuple(first.shape)} and {tuple(second.shape)}")
    a, b = first.flatten(1), second.flatten(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + EPS)


def explanation_loss(teacher_maps: torch.Tensor, student_maps: torch.Tensor, size: int) -> torch.Tensor:
    """``mean(1 - cos(E_T, E_S))`` after resizing both (N, h, w) batches to ``size`` (thesis eq. 8.3).

    Parameters
    ----------
    teacher_maps, student_maps : torch.Tensor
        (N, h_T, w_T) and (N, h_S, w_S) explanations of the same images and classes.
    size : int
        The common side both are resized to (:func:`resize_maps`).

    Returns
    -------
    torch.Tensor
        The scalar loss in [0, 2].
    """
    similarity = map_similarity(resize_maps(teacher_maps, size), resize_maps(student_maps, size))
    return (1.0 - similarity).mean()


__all__ = ["EPS", "explanation_loss", "kd_loss", "map_similarity", "resize_maps"]
