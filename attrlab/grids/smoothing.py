"""Gaussian smoothing of attribution maps (S-IxG, S-IntGrad): kernel size K, standard deviation K/4.

Uses ``torchvision.transforms.v2.functional.gaussian_blur``: a batched separable convolution with reflect padding, so
mass near the grid's outer border is not drained into zero padding. Its reflect padding needs ``K // 2`` smaller than
the map's side, which holds for the input-sized maps the grid evaluation smooths (maps are upsampled first).
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF


def gaussian_sigma(kernel_size: int) -> float:
    """The standard deviation the thesis pairs with kernel size K: K / 4."""
    return kernel_size / 4.0


def smooth(maps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur (N, H, W) signed maps with a K x K Gaussian of sigma K/4; K = 1 returns the maps unchanged."""
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    if kernel_size == 1:
        return maps
    side = min(maps.shape[-2:])
    if kernel_size // 2 >= side:
        raise ValueError(f"kernel_size {kernel_size} is too large for {side}-pixel maps (need K // 2 < {side})")
    sigma = gaussian_sigma(kernel_size)
    return TF.gaussian_blur(maps[:, None], kernel_size=[kernel_size, kernel_size], sigma=[sigma, sigma])[:, 0]
