"""Localisation losses of model guidance (thesis eqs. 7.3-7.6): Energy, L1, PPCE and RRR*, on one map per image.

With ``A`` the map of the guided class, ``A⁺`` its positive part, ``Â⁺ = A⁺ / max A⁺``, ``Â = A / max |A|`` and
``M`` the mask (the union of the class's boxes):

* ``"energy"``: ``-EPG = -Σ M A⁺ / Σ A⁺`` (Rao et al. 2023);
* ``"l1"``: ``mean_hw |M - Â⁺|`` (Gao et al. 2022);
* ``"ppce"``: ``-(1 / Σ M) Σ M log Â⁺`` (Shen et al. 2021), ``Â⁺`` clamped at :data:`LOG_FLOOR`;
* ``"rrr"``: RRR* ``Σ (1 - M) Â²`` (Ross et al. 2017, on any method's normalised map).

Maps coarser than the masks (layer maps) are resized bilinearly to the masks' size. Each image's loss is weighted by
``weight`` (0: not annotated) and the batch mean is taken over all images, so annotating a fraction of the images
scales the loss down by about that fraction: the thesis scales lambda up to match (Table D.3).
"""

from __future__ import annotations

import torch

from .metrics import fit_maps

LOSSES = ("energy", "l1", "ppce", "rrr")
#: ``Â⁺`` is clamped here before PPCE's logarithm (log 0 is -inf where the map is not positive)
LOG_FLOOR = 1e-6
#: keeps the normalisations finite for an all-zero map
TINY = 1e-12


def per_image_loss(kind: str, maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(N,) localisation losses of ``kind`` for maps (N, h, w) against boolean masks (N, H, W).

    Parameters
    ----------
    kind : str
        One of :data:`LOSSES`.
    maps : torch.Tensor
        The maps (with their graph).
    masks : torch.Tensor
        The masks; an image with an empty mask gets loss 0.

    Returns
    -------
    torch.Tensor
        (N,).
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown localisation loss {kind!r}; valid choices: {', '.join(LOSSES)}")
    if masks.dim() != 3 or masks.shape[0] != maps.shape[0]:
        raise ValueError(f"masks must be (N, H, W) with N = {maps.shape[0]}, got shape {tuple(masks.shape)}")
    maps = fit_maps(maps, masks.shape[-2:]).flatten(1)
    inside = masks.to(device=maps.device, dtype=maps.dtype).flatten(1)
    positive = maps.clamp(min=0)
    if kind == "energy":
        loss = -(inside * positive).sum(1) / (positive.sum(1) + TINY)
    elif kind == "rrr":
        normalised = maps / (maps.abs().amax(1, keepdim=True) + TINY)
        loss = ((1 - inside) * normalised.pow(2)).sum(1)
    else:
        normalised_positive = positive / (positive.amax(1, keepdim=True) + TINY)
        if kind == "l1":
            loss = (inside - normalised_positive).abs().mean(1)
        else:
            log = normalised_positive.clamp(min=LOG_FLOOR).log()
            loss = -(inside * log).sum(1) / inside.sum(1).clamp(min=1)
    return torch.where(inside.any(1), loss, torch.zeros_like(loss))


def localisation_loss(
    kind: str, maps: torch.Tensor, masks: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The batch's localisation loss: the mean over images of ``weight * per_image_loss``.

    Parameters
    ----------
    kind : str
        One of :data:`LOSSES`.
    maps : torch.Tensor
        (N, h, w) maps of the guided class, differentiable in the parameters
        (:func:`attrlab.attribution.differentiable.explain_for_training`).
    masks : torch.Tensor
        (N, H, W) boolean masks.
    weight : torch.Tensor, optional
        (N,) per-image weights (booleans: annotated or not); ``None`` weighs every image 1.

    Returns
    -------
    torch.Tensor
        A scalar.
    """
    losses = per_image_loss(kind, maps, masks)
    if weight is not None:
        if weight.shape != losses.shape:
            raise ValueError(f"weight must have shape {tuple(losses.shape)}, got {tuple(weight.shape)}")
        losses = losses * weight.to(device=losses.device, dtype=losses.dtype)
    return losses.mean()


__all__ = ["LOG_FLOOR", "LOSSES", "localisation_loss", "per_image_loss"]
