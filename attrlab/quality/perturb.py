"""Baseline values that replace perturbed features, per sample, as Quantus computes them.

A baseline is computed from the array being perturbed *at that step* (the cumulatively perturbed image, padded where
the metric pads), as Quantus does: "mean" is therefore the mean of the current image, not of the original. "blur"
is Quantus' ``baseline_replacement_by_blur``: a box (mean) filter of ``blur_kernel_size`` x ``blur_kernel_size``
pixels over zero padding, not a Gaussian.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: baselines by name; a number is also accepted and used as is
BASELINES = ("black", "white", "mean", "blur")


def check_baseline(baseline, allowed: tuple[str, ...] = BASELINES) -> None:
    """Raise a ``ValueError`` naming ``baseline`` and the valid choices when it is neither a number nor one of them."""
    if isinstance(baseline, bool) or not (isinstance(baseline, (int, float)) or baseline in allowed):
        raise ValueError(f"unknown baseline {baseline!r}; valid choices: {', '.join(allowed)} or a number")


def box_blur(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Each channel of ``x`` (N, C, H, W) averaged over a ``kernel_size`` square around each pixel, zeros outside.

    The window reaches ``kernel_size // 2`` pixels left and up and ``kernel_size // 2`` (one fewer for an even size)
    right and down, and the sum is always divided by ``kernel_size ** 2``, as in Quantus' ``blur_at_indices``.
    """
    if not isinstance(kernel_size, int) or kernel_size <= 0:
        raise ValueError(f"blur_kernel_size must be a positive integer, got {kernel_size!r}")
    before = kernel_size // 2
    after = kernel_size // 2 - (kernel_size % 2 == 0)
    padded = F.pad(x, (before, after, before, after))
    return F.avg_pool2d(padded, kernel_size, stride=1)


def baseline_value(x: torch.Tensor, baseline, blur_kernel_size: int = 15) -> torch.Tensor:
    """The replacement values for the batch ``x`` (N, ...): a per-sample scalar (N, 1, ...) or, for blur, a map."""
    reduce_dims = tuple(range(1, x.dim()))
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full((x.shape[0],) + (1,) * (x.dim() - 1), float(baseline), dtype=x.dtype, device=x.device)
    if baseline == "black":
        return x.amin(dim=reduce_dims, keepdim=True)
    if baseline == "white":
        return x.amax(dim=reduce_dims, keepdim=True)
    if baseline == "mean":
        return x.mean(dim=reduce_dims, keepdim=True)
    if baseline == "blur":
        if x.dim() != 4:
            raise ValueError(f"the blur baseline needs images (N, C, H, W), got shape {tuple(x.shape)}")
        return box_blur(x, blur_kernel_size)
    raise ValueError(f"unknown baseline {baseline!r}; valid choices: {', '.join(BASELINES)} or a number")
