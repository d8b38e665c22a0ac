"""Randomisation metric: Random Logit (Sixt et al. 2020), the SSIM between the map of the class and of another class.

A map that does not depend on the explained class gives the same picture for any class, so a lower similarity is
better. As in Quantus 0.6, both maps are flattened and compared by scikit-image's ``structural_similarity`` on the
resulting 1-D signals (window of 7, uniform weights, sample covariance, K1 = 0.01, K2 = 0.03) with
``data_range = max - min`` over both maps. The SSIM is computed here in torch, batched, with one 1-D convolution per
moment; the window's half-width is cropped at both ends, as scikit-image does, so its border padding never enters.
The data range is version-dependent in Quantus (older releases passed none, so scikit-image assumed 2 for floats;
SEED-NOTES 2.2), hence an explicit parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .draws import off_classes as draw_off_classes
from .normalise import check_normalisation, prepare_maps
from .scoring import as_explain, resolve_batch_size


def ssim_1d(a: torch.Tensor, b: torch.Tensor, data_range: str | float = "span", win_size: int = 7) -> torch.Tensor:
    """Row-wise SSIM of (N, D) signals, equal to scikit-image's ``structural_similarity`` on each pair of rows.

    Parameters
    ----------
    a, b : torch.Tensor
        (N, D) signals, D >= ``win_size``.
    data_range : str or float
        ``"span"``: ``max - min`` over both rows (Quantus 0.6), or a fixed positive number.
    win_size : int
        Odd window length (scikit-image's default 7).

    Returns
    -------
    torch.Tensor
        (N,) mean SSIM in float64.
    """
    if not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size!r}")
    if a.shape[1] < win_size:
        raise ValueError(f"signals of length {a.shape[1]} are shorter than the SSIM window {win_size}")
    a, b = a.double(), b.double()
    if data_range == "span":
        both = torch.cat([a, b], 1)
        span = both.amax(1) - both.amin(1)
    elif isinstance(data_range, (int, float)) and not isinstance(data_range, bool) and data_range > 0:
        span = torch.full((a.shape[0],), float(data_range), dtype=torch.float64, device=a.device)
    else:
        raise ValueError(f"data_range must be 'span' or a positive number, got {data_range!r}")
    kernel = torch.full((1, 1, win_size), 1.0 / win_size, dtype=torch.float64, device=a.device)
    signals = torch.stack([a, b, a * a, b * b, a * b], 1).reshape(-1, 1, a.shape[1])
    ux, uy, uxx, uyy, uxy = F.conv1d(signals, kernel).reshape(a.shape[0], 5, -1).unbind(1)
    cov_norm = win_size / (win_size - 1)
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1 = (0.01 * span)[:, None] ** 2
    c2 = (0.03 * span)[:, None] ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(1)


def random_logit(
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    explain,
    num_classes: int,
    off_classes: torch.Tensor | None = None,
    seed: int = 42,
    data_range: str | float = "span",
    win_size: int = 7,
    normalise: str = "second_moment",
    absolute: bool = False,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Random Logit: SSIM between each image's map for its class and its map for a random other class.

    Parameters
    ----------
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes.
    a : torch.Tensor
        (N, ...) the maps of ``x`` for ``y``, as ``explain`` returns them.
    explain : callable or attrlab method
        ``explain(inputs, target) -> maps``.
    num_classes : int
        Number of classes the off-class is drawn from.
    off_classes : torch.Tensor, optional
        (N,) the other classes to use instead of drawing them (e.g.
        :func:`attrlab.quality.draws.quantus_off_classes`, Quantus' draws); each must differ from ``y``.
    seed : int
        Seed of the off-classes drawn when ``off_classes`` is None (Quantus: 42; device-independent).
    data_range : str or float
        SSIM data range: ``"span"`` (Quantus 0.6) or a number.
    win_size : int
        SSIM window length (scikit-image's default 7).
    normalise : str
        Per-map normalisation of both maps: ``"second_moment"``, ``"max"`` or ``"none"``.
    absolute : bool
        Compare ``|a|`` and ``|a'|`` (Quantus' default: signed).
    batch_size : int, optional
        Images per ``explain`` call; None chooses by device.

    Returns
    -------
    torch.Tensor
        (N,) SSIM values, lower is better.
    """
    check_normalisation(normalise)
    batch_size = resolve_batch_size(batch_size, x.device)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if y.shape != (x.shape[0],) or a.shape[0] != x.shape[0]:
        raise ValueError(
            f"need N images, N labels and N maps; got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(a.shape)}"
        )
    if off_classes is None:
        off_classes = draw_off_classes(y, num_classes, seed)
    off_classes = off_classes.to(y.device)
    if (
        off_classes.shape != y.shape
        or bool((off_classes == y).any())
        or bool((off_classes < 0).any())
        or bool((off_classes >= num_classes).any())
    ):
        raise ValueError(f"off_classes must hold one class in [0, {num_classes}) per image, each other than y")
    explain = as_explain(explain)
    other = torch.cat(
        [explain(x[i : i + batch_size], off_classes[i : i + batch_size]).detach() for i in range(0, len(x), batch_size)]
    )
    n = x.shape[0]
    first = prepare_maps(a, normalise, absolute).reshape(n, -1)
    second = prepare_maps(other, normalise, absolute).reshape(n, -1)
    return ssim_1d(first, second, data_range, win_size).to(x.dtype)
