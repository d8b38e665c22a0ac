"""The method list of Sixt et al. (2020) as one table: registry name, settings, map post-processing, CSC family.

Adding a registered method to the sanity checks is one line in :data:`SIXT_METHODS`. Entries whose registry name is
not (yet) registered are kept, so that :func:`missing_methods` can report what the paper has and attrlab lacks.
Post-processing follows the authors' code: the maximum of absolute values over channels for the gradient-like
methods, the signed sum over channels for the LRP-like ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..attribution import Attribution, available_methods, make_method

Reduce = Literal["abs_max", "sum"]
REDUCTIONS = ("abs_max", "sum")
#: how a method's backward pass is started at a layer for CSC
Family = Literal["lrp", "gradient", "none"]


@dataclass(frozen=True)
class SanityMethod:
    """One row of the method table."""

    label: str  # the name in tables and figures
    method: str  # the attrlab registry name
    settings: dict[str, Any] = field(default_factory=dict)
    reduce: Reduce = "sum"  # channel post-processing before SSIM
    family: Family = "gradient"  # CSC injection: LRP relevance, a gradient, or not part of CSC ("none")
    percentile: float = 99.5  # SSIM normalisation percentile (the code used 100 for RectGrad)
    version: str = "arXiv v1"  # the paper version that evaluates it

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ValueError(
                f"unknown reduce {self.reduce!r} for {self.label!r}; valid choices: {', '.join(REDUCTIONS)}"
            )
        if self.family not in ("lrp", "gradient", "none"):
            raise ValueError(f"unknown family {self.family!r} for {self.label!r}; valid choices: lrp, gradient, none")

    @property
    def available(self) -> bool:
        """Whether the registry has the method and the checks can run it.

        The pattern methods are left out: their signal patterns are fitted on the trained model, and cascading
        randomisation would need them refitted on every randomised copy, which the checks do not do yet.
        """
        return self.method in available_methods() and not self.method.startswith("pattern_")

    def build(self, model: torch.nn.Module) -> Attribution:
        """The attribution object for ``model``."""
        return make_method(self.method, model, **self.settings)


def _lrp(label: str, composite: str) -> SanityMethod:
    return SanityMethod(label, "lrp", {"composite": composite}, "sum", "lrp")


#: the paper's methods (arXiv v1 list, plus RectGrad from the ICML version), in the order of its figures
SIXT_METHODS: tuple[SanityMethod, ...] = (
    _lrp("LRP-z", "lrp_z"),
    _lrp("LRP-a1b0", "alpha1_beta0"),
    _lrp("LRP-a2b1", "alpha2_beta1"),
    _lrp("LRP-a5b4", "alpha5_beta4"),
    _lrp("LRP-CMP-a1b0", "cmp_alpha1_beta0"),
    _lrp("LRP-CMP-a2b1", "cmp_alpha2_beta1"),
    _lrp("DTD", "dtd"),
    _lrp("ExcitationBP", "excitation_backprop"),
    SanityMethod("PatternAttribution", "pattern_attribution", {}, "sum", "none"),
    SanityMethod("Deconv", "deconvolution", {}, "abs_max", "gradient"),
    SanityMethod("GuidedBP", "guided_backprop", {}, "abs_max", "gradient"),
    SanityMethod("RectGrad", "rectgrad", {}, "abs_max", "none", percentile=100.0, version="ICML"),
    # the code's SmoothGrad: 50 samples, noise 0.15 x the input range (2 for [-1, 1] inputs); not part of CSC
    SanityMethod("SmoothGrad", "smoothgrad", {"n_samples": 50, "stdev": 0.3}, "abs_max", "none"),
    SanityMethod("Gradient", "gradient", {}, "abs_max", "gradient"),
)


def sanity_methods(labels: list[str] | None = None, version: str | None = None) -> list[SanityMethod]:
    """The registered methods of :data:`SIXT_METHODS` (all, or those ``labels`` name; ``version`` filters)."""
    known = {m.label: m for m in SIXT_METHODS}
    if labels is not None:
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ValueError(f"unknown sanity methods {unknown}; valid labels: {', '.join(known)}")
        chosen = [known[label] for label in labels]
        missing = [m.label for m in chosen if not m.available]
        if missing:
            raise ValueError(f"methods {missing} are not registered yet; registered: {', '.join(available_methods())}")
        return chosen
    return [m for m in SIXT_METHODS if m.available and (version is None or m.version == version)]


def missing_methods(version: str | None = None) -> list[SanityMethod]:
    """The paper's methods the checks cannot run yet (not registered, or see :attr:`SanityMethod.available`)."""
    return [m for m in SIXT_METHODS if not m.available and (version is None or m.version == version)]


def reduce_channels(maps: torch.Tensor, reduce: Reduce) -> torch.Tensor:
    """(N, C, H, W) attributions as (N, H, W) maps: ``abs_max`` (max over channels of ``|a|``) or ``sum`` (signed).

    Parameters
    ----------
    maps : torch.Tensor
        Attributions (N, C, H, W); any leading target dimension must be flattened into N first.
    reduce : str
        ``"abs_max"`` or ``"sum"``.

    Returns
    -------
    torch.Tensor
        (N, H, W) maps.
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduce {reduce!r}; valid choices: {', '.join(REDUCTIONS)}")
    if maps.dim() != 4:
        raise ValueError(f"maps must be (N, C, H, W), got shape {tuple(maps.shape)}")
    return maps.abs().amax(1) if reduce == "abs_max" else maps.sum(1)


__all__ = ["REDUCTIONS", "SIXT_METHODS", "SanityMethod", "missing_methods", "reduce_channels", "sanity_methods"]
