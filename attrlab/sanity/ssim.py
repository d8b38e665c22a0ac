"""SSIM of saliency maps as Sixt et al. (2020)'s code scores them: percentile normalisation, then a sign-flip maximum.

Why our own SSIM: scikit-image's ``structural_similarity`` compares one pair of images per call; the checks compare
hundreds of maps per checkpoint, so :func:`ssim` computes scikit-image's exact formula (uniform 5x5 window,
``K1 = 0.01``, ``K2 = 0.03``, sample covariance, the mean over the windows that lie inside the image) for a whole
batch at once on the maps' device, in float64. ``tests/test_sanity.py`` checks it equals scikit-image to 1e-5 and
``bench/sanity.py`` measures the gain.

``data_range`` defaults to 2: the authors' code called scikit-image 0.16's ``compare_ssim`` on float64 maps without a
data range, which then takes the dtype's range, (-1, 1), i.e. 2, although the normalised maps lie in [0, 1]. Keeping 2
reproduces their numbers (a larger data range raises the constants C1 and C2 and so the SSIM of dissimilar maps);
``data_range=1`` is the range the maps actually have.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the authors' percentile: maps are scaled so that their 99.5th percentile goes to 0 and their 0.5th to 1
PERCENTILE = 99.5
WIN_SIZE = 5
DATA_RANGE = 2.0


def normalize_maps(maps: torch.Tensor, percentile: float = PERCENTILE) -> torch.Tensor:
    """Each (H, W) map of an (N, H, W) batch as ``clip((x - p) / (q - p), 0, 1)``, ``p`` its ``percentile``-th and
    ``q`` its ``(100 - percentile)``-th percentile (the authors' ``normalize_sanity``, linear interpolation as numpy).

    The orientation is the code's (the top percentile maps to 0); it is the same for both maps of a comparison and
    the score takes the maximum over a sign flip, so it does not matter. A constant map gives NaN (0 / 0), as in the
    code; the checks drop such images from medians and count them.
    """
    if maps.dim() != 3:
        raise ValueError(f"maps must be (N, H, W), got shape {tuple(maps.shape)}")
    if not 50.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [50, 100], got {percentile}")
    flat = maps.flatten(1).to(torch.float64)
    q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=flat.dtype, device=flat.device)
    low, high = torch.quantile(flat, q, dim=1).view(2, -1, 1, 1).unbind(0)  # per map, one call for the batch
    return ((flat.view(maps.shape) - low) / (high - low)).clamp(0.0, 1.0)


def ssim(a: torch.Tensor, b: torch.Tensor, win_size: int = WIN_SIZE, data_range: float = DATA_RANGE) -> torch.Tensor:
    """scikit-image's ``structural_similarity(a[i], b[i], win_size=win_size, data_range=data_range)`` for every i.

    Parameters
    ----------
    a, b : torch.Tensor
        (N, H, W) maps (any float dtype; computed in float64).
    win_size : int
        Odd side of the uniform window (at most the smaller image side).
    data_range : float
        The value range the SSIM constants are scaled with.

    Returns
    -------
    torch.Tensor
        (N,) float64 SSIM values.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(
            f"ssim needs two (N, H, W) batches of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if win_size % 2 == 0 or win_size < 3 or win_size > min(a.shape[1:]):
        raise ValueError(f"win_size must be odd, >= 3 and at most the image side {min(a.shape[1:])}, got {win_size}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    x, y = a.to(torch.float64)[:, None], b.to(torch.float64)[:, None]
    # the windows lying inside the image are the ones scikit-image averages over (it crops (win_size - 1) // 2)
    mean = lambda t: F.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    uxx, uyy, uxy = mean(x * x), mean(y * y), mean(x * y)
    cov_norm = win_size**2 / (win_size**2 - 1.0)  # sample covariance
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def ssim_flipped(
    a: torch.Tensor,
    b: torch.Tensor,
    percentile: float = PERCENTILE,
    win_size: int = WIN_SIZE,
    data_range: float = DATA_RANGE,
) -> torch.Tensor:
    """The authors' score ``max(SSIM(n(a), n(b)), SSIM(n(a), n(-b)))`` per map pair, ``n`` :func:`normalize_maps`.

    Parameters
    ----------
    a, b : torch.Tensor
        (N, H, W) post-processed maps (see :func:`attrlab.sanity.methods.reduce_channels`).
    percentile : float
        The normalisation percentile (99.5; the code used 100 for RectGrad).
    win_size : int
        SSIM window side.
    data_range : float
        SSIM data range (2 reproduces the authors' code, see the module docstring).

    Returns
    -------
    torch.Tensor
        (N,) float64 scores; NaN where a map is constant.
    """
    na = normalize_maps(a, percentile)
    straight = ssim(na, normalize_maps(b, percentile), win_size, data_range)
    flipped = ssim(na, normalize_maps(-b, percentile), win_size, data_range)
    return torch.maximum(straight, flipped).where(
        ~(straight.isnan() | flipped.isnan()), straight.new_tensor(float("nan"))
    )


__all__ = ["DATA_RANGE", "PERCENTILE", "WIN_SIZE", "normalize_maps", "ssim", "ssim_flipped"]
