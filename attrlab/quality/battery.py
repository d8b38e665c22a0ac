"""The metric battery: every quality metric of one explanation method on one image set, per image, in one call.

Pahde et al. (2023) ran Quantus on 224 x 224 ImageNet images; :class:`BatterySettings` holds their parameters and
:meth:`BatterySettings.scaled` scales the ones measured in pixels to another image side (patch 14 -> 4 and a 15-pixel
blur -> 5 on 64 x 64 canvases, 448 of 50176 pixels per flipping step -> 37 of 4096, 1 % subsets). The maps of the
image set are computed once (one batched call of ``explain``); the metrics that explain again (Average / Max
Sensitivity, Random Logit) explain all their inputs in one call each. Every metric normalises the maps by the square
root of their second moment first, as Pahde et al. did.

Metric names (the columns of every table downstream) and whether a higher value is better: see :data:`METRICS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .complexity import complexity, sparseness
from .faithfulness import aopc, faithfulness_correlation, pixel_flipping, region_perturbation
from .localisation import relevance_mass_accuracy, relevance_rank_accuracy
from .randomisation import random_logit
from .robustness import sensitivity
from .scoring import Explain, as_explain

#: metric name -> (higher is better, what it is); Pahde et al.'s Table 1 columns and their appendix metrics
METRICS: dict[str, tuple[bool, str]] = {
    "sparseness": (True, "Sparseness: Gini index of |a|"),
    "complexity": (False, "Complexity: entropy of |a| / sum |a|"),
    "aopc": (True, "Region Perturbation (MoRF, blur): AOPC of Samek et al."),
    "pixel_flipping": (False, "Pixel Flipping: mean of the target-logit curve"),
    "faithfulness_correlation": (True, "Faithfulness Correlation (Pearson)"),
    "rra": (True, "Relevance Rank Accuracy in the digit's box"),
    "rma": (True, "Relevance Mass Accuracy in the digit's box"),
    "avg_sensitivity": (False, "Average Sensitivity"),
    "max_sensitivity": (False, "Max Sensitivity"),
    "random_logit": (False, "Random Logit: SSIM to the map of a random other class"),
}
#: the metrics of Pahde et al.'s gamma search (their code's list; Faithfulness Correlation and Max Sensitivity are
#: not in it)
SEARCH_METRICS = ("sparseness", "complexity", "aopc", "pixel_flipping", "rra", "rma", "avg_sensitivity", "random_logit")
#: the reference side the pixel sizes of :class:`BatterySettings` are given for (ImageNet crops)
REFERENCE_SIDE = 224


@dataclass(frozen=True)
class BatterySettings:
    """The metrics' parameters (defaults: Pahde et al. 2023 on 224 x 224 images; see :meth:`scaled`).

    Parameters
    ----------
    patch_size : int
        Region Perturbation's square side.
    regions_evaluation : int
        Regions perturbed per image.
    blur_kernel_size : int
        Side of the box filter of the blur baseline.
    features_in_step : int
        Pixels replaced per Pixel Flipping step (baseline 0).
    subset_size : int
        Pixels per random subset of Faithfulness Correlation (baseline 0).
    nr_runs : int
        Subsets per image of Faithfulness Correlation.
    nr_samples : int
        Noisy copies per image of Average / Max Sensitivity.
    lower_bound : float
        Half-width of their uniform noise (Quantus' 0.2).
    num_classes : int
        Classes the off-class of Random Logit is drawn from.
    mask : str
        Localisation ground truth: ``"box"`` (the digit's box, as Pahde et al.'s ImageNet boxes) or ``"pixels"``.
    seed : int
        Seed of every random draw (the same draws for every method).
    batch_size : int, optional
        Images per forward pass (None: by device).
    """

    patch_size: int = 14
    regions_evaluation: int = 50
    blur_kernel_size: int = 15
    features_in_step: int = 448
    subset_size: int = 501
    nr_runs: int = 100
    nr_samples: int = 10
    lower_bound: float = 0.2
    num_classes: int = 10
    mask: str = "box"
    seed: int = 0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.mask not in ("box", "pixels"):
            raise ValueError(f"unknown mask {self.mask!r}; valid choices: box, pixels")
        counts = ("patch_size", "regions_evaluation", "blur_kernel_size", "features_in_step", "subset_size")
        for name in (*counts, "nr_runs", "nr_samples", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @classmethod
    def scaled(cls, side: int, **changes) -> BatterySettings:
        """Pahde et al.'s settings with the pixel sizes scaled from 224 to ``side`` (areas by the square).

        Parameters
        ----------
        side : int
            Image side in pixels.
        **changes
            Any field, set after scaling.

        Returns
        -------
        BatterySettings
        """
        if not isinstance(side, int) or side < 8:
            raise ValueError(f"side must be an integer >= 8, got {side!r}")
        base = cls()
        linear = side / REFERENCE_SIDE
        area = linear**2
        odd = 2 * round((base.blur_kernel_size * linear - 1) / 2) + 1  # a box filter of odd side, as Quantus'
        scaled = cls(
            patch_size=max(1, round(base.patch_size * linear)),
            blur_kernel_size=max(1, odd),
            features_in_step=max(1, round(base.features_in_step * area)),
            subset_size=max(1, round(base.subset_size * area)),
        )
        return dataclasses.replace(scaled, **changes)


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    """``metrics`` as a tuple, each checked against :data:`METRICS`."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or list(metrics)!r}; valid choices: {', '.join(METRICS)}")
    return tuple(metrics)


def evaluate_battery(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    explain: Explain | Any,
    settings: BatterySettings,
    metrics: Sequence[str] = tuple(METRICS),
    maps: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every metric of ``metrics`` for each image: ``{metric: (N,) scores}`` (see :data:`METRICS`).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier the perturbation metrics evaluate.
    x : torch.Tensor
        Images (N, C, H, W).
    y : torch.Tensor
        (N,) the explained classes.
    masks : torch.Tensor
        (N, H, W) ground-truth masks of the explained objects (localisation).
    explain : callable or attrlab method
        ``explain(inputs, target) -> maps`` (maps (N, C, H, W)); called once for ``x`` (unless ``maps`` is given)
        and once per metric that explains noisy or off-class inputs.
    settings : BatterySettings
        The metrics' parameters.
    metrics : sequence of str
        The metrics to compute.
    maps : torch.Tensor, optional
        The maps of ``x`` for ``y``, when computed already.

    Returns
    -------
    dict of str to torch.Tensor
        Per-image scores on ``x``'s device, in the order of ``metrics``.
    """
    metrics = check_metrics(metrics)
    explain = as_explain(explain)
    s = settings
    if maps is None:
        maps = explain(x, y).detach()
    channel_sum = maps.sum(1)  # heatmaps are channel sums, as in Pahde et al.
    out: dict[str, torch.Tensor] = {}
    for name in metrics:
        if name == "sparseness":
            out[name] = sparseness(channel_sum)
        elif name == "complexity":
            out[name] = complexity(channel_sum)
        elif name == "aopc":
            curves = region_perturbation(
                model,
                x,
                y,
                maps,
                patch_size=s.patch_size,
                regions_evaluation=s.regions_evaluation,
                baseline="blur",
                blur_kernel_size=s.blur_kernel_size,
                batch_size=s.batch_size,
            )
            out[name] = aopc(curves)
        elif name == "pixel_flipping":
            curves = pixel_flipping(
                model, x, y, maps, features_in_step=s.features_in_step, baseline=0.0, batch_size=s.batch_size
            )
            out[name] = curves.mean(1)
        elif name == "faithfulness_correlation":
            out[name] = faithfulness_correlation(
                model,
                x,
                y,
                maps,
                nr_runs=s.nr_runs,
                subset_size=s.subset_size,
                baseline=0.0,
                seed=s.seed,
                batch_size=s.batch_size,
            )
        elif name in ("rra", "rma"):
            metric = relevance_rank_accuracy if name == "rra" else relevance_mass_accuracy
            out[name] = metric(channel_sum, masks)
        elif name in ("avg_sensitivity", "max_sensitivity"):
            out[name] = sensitivity(
                model,
                x,
                y,
                maps,
                explain,
                reduce="mean" if name == "avg_sensitivity" else "max",
                nr_samples=s.nr_samples,
                lower_bound=s.lower_bound,
                seed=s.seed,
                batch_size=s.batch_size,
            )
        elif name == "random_logit":
            out[name] = random_logit(
                x, y, maps, explain, num_classes=s.num_classes, seed=s.seed, batch_size=s.batch_size
            )
    return out


def summarise(scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """The mean of each metric over the images (NaN entries, e.g. constant maps, left out)."""
    means = {}
    for name, values in scores.items():
        finite = values[~torch.isnan(values)]
        means[name] = float(finite.double().mean()) if len(finite) else math.nan
    return means


__all__ = [
    "METRICS",
    "REFERENCE_SIDE",
    "SEARCH_METRICS",
    "BatterySettings",
    "check_metrics",
    "evaluate_battery",
    "summarise",
]
