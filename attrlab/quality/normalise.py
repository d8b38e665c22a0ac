"""Preparing attribution maps for a quality metric: per-sample normalisation, then the absolute value.

Pahde et al. (2023) divide every map by the square root of its second moment, ``a / sqrt(mean(a^2))`` (Quantus'
``normalise_by_average_second_moment_estimate``), before any metric; that is the default here. Quantus applies the
normalisation first and the absolute value second, and so do we. One difference is a choice: Quantus 0.6 calls its
normalisation function on the whole batch array, so with its default axes one second moment is shared by every map
of a batch (a map's score then depends on its batch mates); here each map is normalised on its own, which is what
Quantus computes when given ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}`` (the tests compare that way).
"""

from __future__ import annotations

import torch

#: normalisations by name: the seed's second-moment division, Quantus' default max-abs division, or none
NORMALISATIONS = ("second_moment", "max", "none")


def check_normalisation(normalise: str) -> None:
    """Raise a ``ValueError`` naming ``normalise`` and the valid choices when it is not one of them."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {normalise!r}; valid choices: {', '.join(NORMALISATIONS)}")


def normalise_maps(a: torch.Tensor, normalise: str = "second_moment") -> torch.Tensor:
    """Each map of ``a`` (N, ...) divided by its own scale; an all-zero map is left as it is.

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps, the first dimension indexing the samples.
    normalise : str
        ``"second_moment"`` divides by ``sqrt(mean(a^2))`` (Pahde et al. 2023), ``"max"`` by ``max|a|``
        (Quantus' default), ``"none"`` returns ``a`` unchanged.

    Returns
    -------
    torch.Tensor
        The normalised maps, same shape and dtype as ``a``.
    """
    check_normalisation(normalise)
    if normalise == "none":
        return a
    flat = a.reshape(a.shape[0], -1)
    if normalise == "second_moment":
        scale = flat.square().mean(1).sqrt()
    else:
        scale = flat.abs().amax(1)
    # an all-zero map has no scale; Quantus leaves it unchanged instead of dividing by zero
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return a / scale.reshape((-1,) + (1,) * (a.dim() - 1))


def prepare_maps(a: torch.Tensor, normalise: str = "second_moment", absolute: bool = False) -> torch.Tensor:
    """Normalise each map of ``a`` (see :func:`normalise_maps`), then take the absolute value when ``absolute``.

    Parameters
    ----------
    a : torch.Tensor
        Attribution maps (N, ...).
    normalise : str
        One of :data:`NORMALISATIONS`.
    absolute : bool
        Whether to take ``|a|`` after normalising (Quantus' ``abs``).

    Returns
    -------
    torch.Tensor
        The prepared maps as a floating tensor, same shape as ``a``.
    """
    if not torch.is_floating_point(a):
        a = a.float()
    a = normalise_maps(a, normalise)
    return a.abs() if absolute else a
