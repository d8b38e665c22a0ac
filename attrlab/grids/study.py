"""The grid study of Böhle (2024, ch. 4) as code: its method protocol, the order of its figures, and its claims.

The chapter *Grid evaluations* (``book/grid_evaluation.md``) calls these: :func:`thesis_specs` is the protocol (every
registered method, its settings at our scale, its settings per layer, the smoothed variants), :func:`method_order`
the order of the thesis' figures (backpropagation-, activation-, then perturbation-based), and :func:`check_claims`
tests the thesis' qualitative claims on the medians the chapter computed, one row per claim with the test, what was
measured and whether it holds. The helpers in between turn the evaluation's score tables into the chapter's tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import torch

from ..attribution import METHODS
from ..attribution.spec import SMOOTHED_PREFIX, MethodSpec
from .aggatt import bin_scores
from .data import GridSet
from .evaluate import LAYERS, GridResult
from .localisation import localisation

#: registry name -> the thesis' label; methods registered later keep their registry name
LABELS: dict[str, str] = {
    "gradient": "Grad",
    "input_x_gradient": "IxG",
    "integrated_gradients": "IntGrad",
    "guided_backprop": "GBP",
    "smoothgrad": "SmoothGrad",
    "gradcam": "Grad-CAM",
    "gradcam_pp": "Grad-CAM++",
    "layercam": "LayerCAM",
    "occlusion": "Occlusion",
    "rise": "RISE",
    "lrp": "LRP",
}
#: the thesis' method families in the order of its figures: backpropagation-based, activation-based, perturbation-based
FAMILIES: tuple[str, ...] = (
    "Grad",
    "GBP",
    "IxG",
    "S-IxG",
    "IntGrad",
    "S-IntGrad",
    "SmoothGrad",
    "LRP",
    "Grad-CAM",
    "Grad-CAM++",
    "LayerCAM",
    "Occlusion",
    "RISE",
)
#: the methods of the thesis' chapter 4 study, by registry name (others join by passing ``methods=``: every extra
#: method costs chapter time, and the chapter's budget was measured with these)
THESIS_METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam_pp",
    "gradient",
    "guided_backprop",
    "input_x_gradient",
    "integrated_gradients",
    "layercam",
    "lrp",
    "occlusion",
    "rise",
    "smoothgrad",
)
#: registry names that are also scored smoothed (S-IxG, S-IntGrad)
SMOOTHED: tuple[str, ...] = ("input_x_gradient", "integrated_gradients")
#: Occlusion windows at the layers: a similar fraction of a cell as 4/4 at the input, at an affordable cost
OCCLUSION_LAYER_SETTINGS: dict[str, dict[str, int]] = {
    "middle": {"window": 2, "stride": 2},
    "final": {"window": 2, "stride": 1},
}
#: the LRP configuration of the thesis (LRP-Focus)
LRP_SETTINGS: dict[str, str] = {"composite": "lrp_focus"}
#: labels of the backpropagation-based methods, for the DiFull claim and the chapter's DiFull / DiPart minima
BACKPROP_LABELS: tuple[str, ...] = ("Grad", "IxG", "IntGrad", "GBP")
#: methods compared on 3x3 grids (registry names; LRP variants join by the prefix "lrp")
GRID_SIZE_METHODS: tuple[str, ...] = ("gradient", "input_x_gradient", "gradcam", "layercam")
#: methods shown as AggAtt panels (labels), the first LRP label joins them
AGGATT_LABELS: tuple[str, ...] = ("IxG", "S-IxG", "Grad-CAM", "Occlusion")


def method_settings(
    ig_steps: int = 20, smoothgrad_samples: int = 10, rise_masks: int = 200, seed: int = 0, occlusion_window: int = 4
) -> dict[str, dict[str, object]]:
    """Registry name -> constructor settings of the study (Occlusion's ``occlusion_window`` is also its stride).

    Parameters
    ----------
    ig_steps : int
        Integrated Gradients steps (the thesis used 20-50).
    smoothgrad_samples : int
        SmoothGrad's noisy samples per image.
    rise_masks : int
        RISE masks per image (the thesis used 1000).
    seed : int
        Seeds RISE's masks.
    occlusion_window : int
        Occlusion's window and stride at the input.

    Returns
    -------
    dict
        Settings of the methods that have some.
    """
    return {
        "integrated_gradients": {"n_steps": ig_steps},
        "smoothgrad": {"n_samples": smoothgrad_samples},
        "rise": {"n_masks": rise_masks, "seed": seed},
        "occlusion": {"window": occlusion_window, "stride": occlusion_window},
        "lrp": dict(LRP_SETTINGS),
    }


def thesis_specs(
    methods: Iterable[str] | None = None,
    ig_steps: int = 20,
    rise_masks: int = 200,
    seed: int = 0,
    smooth_kernel: int = 15,
) -> list[MethodSpec]:
    """The study's methods as specs: settings of :func:`method_settings`, Occlusion's per-layer windows, and a
    smoothed score (kernel ``smooth_kernel``) for IxG and Integrated Gradients.

    Parameters
    ----------
    methods : iterable of str or None
        Registry names; ``None``: :data:`THESIS_METHODS` (those registered), in alphabetical order.
    ig_steps, rise_masks, seed : int
        See :func:`method_settings`.
    smooth_kernel : int
        The Gaussian kernel size of S-IxG and S-IntGrad (odd; sigma = K/4).

    Returns
    -------
    list of MethodSpec
        One spec per method, labelled as in the thesis (:data:`LABELS`).
    """
    names = sorted(name for name in THESIS_METHODS if name in METHODS) if methods is None else list(methods)
    settings = method_settings(ig_steps=ig_steps, rise_masks=rise_masks, seed=seed)
    return [
        MethodSpec(
            LABELS.get(name, name),
            name,
            settings.get(name, {}),
            layer_settings=OCCLUSION_LAYER_SETTINGS if name == "occlusion" else {},
            smoothing=(1, smooth_kernel) if name in SMOOTHED else (1,),
        )
        for name in names
    ]


def tracking_specs() -> list[MethodSpec]:
    """The methods scored over training: IxG, Grad-CAM and LRP (the thesis' configuration) when LRP is registered."""
    specs = [MethodSpec("IxG", "input_x_gradient"), MethodSpec("Grad-CAM", "gradcam")]
    return specs + ([MethodSpec("LRP", "lrp", dict(LRP_SETTINGS))] if "lrp" in METHODS else [])


def smoothing_specs(kernel_sizes: Sequence[int], ig_steps: int = 20) -> list[MethodSpec]:
    """IxG and Integrated Gradients, each scored at every Gaussian kernel size of ``kernel_sizes`` (the sweep)."""
    return [
        MethodSpec("IxG", "input_x_gradient", smoothing=kernel_sizes),
        MethodSpec("IntGrad", "integrated_gradients", {"n_steps": ig_steps}, smoothing=kernel_sizes),
    ]


def grid_size_specs(specs: Sequence[MethodSpec]) -> list[MethodSpec]:
    """The specs compared on 3x3 grids (:data:`GRID_SIZE_METHODS` and LRP), unsmoothed, with their settings."""
    return [
        MethodSpec(s.label, s.method, s.settings, layer_settings=s.layer_settings)
        for s in specs
        if isinstance(s.method, str) and (s.method in GRID_SIZE_METHODS or s.method.startswith("lrp"))
    ]


def scored_labels(specs: Sequence[MethodSpec]) -> list[str]:
    """The score labels an evaluation of ``specs`` produces: every label, then the smoothed ones."""
    return [s.label for s in specs] + [s.smoothed_label(k) for s in specs for k in s.smoothing if k > 1]


def method_order(labels: Iterable[str]) -> list[str]:
    """``labels`` in the order of :data:`FAMILIES`, labels of other methods after them in their own order."""
    labels = list(dict.fromkeys(labels))
    return [m for m in FAMILIES if m in labels] + [m for m in labels if m not in FAMILIES]


def lrp_labels(labels: Iterable[str]) -> list[str]:
    """The labels of LRP variants (case-insensitively starting with "lrp"), sorted."""
    return sorted(m for m in set(labels) if m.lower().startswith("lrp"))


def median_table(medians: pd.Series, order: Sequence[str]) -> pd.DataFrame:
    """Methods (rows, in ``order``) x (setting, layer) columns of the median scores.

    Parameters
    ----------
    medians : pandas.Series
        Median score indexed by (setting, method, layer).
    order : sequence of str
        Row order; methods not in ``medians`` are skipped.

    Returns
    -------
    pandas.DataFrame
        Columns (setting, layer) for GridPG, DiPart, DiFull, each at the input, middle and final layer.
    """
    table = medians.unstack("layer")[list(LAYERS)].unstack("setting")
    table = table.swaplevel(axis=1).reindex(columns=["gridpg", "dipart", "difull"], level=0)
    return table.reindex([m for m in order if m in table.index])


def aggatt_labels(labels: Iterable[str]) -> list[str]:
    """The labels shown as AggAtt panels: those of :data:`AGGATT_LABELS` present, then the first LRP label."""
    present = set(labels)
    return [m for m in AGGATT_LABELS if m in present] + lrp_labels(present)[:1]


def aggatt_panels(
    result: GridResult, labels: Sequence[str], smooth_kernel: int, layers: Iterable[str] = LAYERS
) -> tuple[dict[tuple[str, str], torch.Tensor], dict[tuple[str, str], torch.Tensor]]:
    """AggAtt bins and each bin's mean score per (label, layer), for :func:`attrlab.plots.grids.plot_aggatt`.

    Parameters
    ----------
    result : GridResult
        An evaluation that kept its maps.
    labels : sequence of str
        Score labels; a smoothed label (``S-...``) reads the maps of kernel ``smooth_kernel``.
    smooth_kernel : int
        The kernel size of the smoothed labels.
    layers : iterable of str
        Layer keys.

    Returns
    -------
    (dict, dict)
        (label, layer) -> (bins, H, W) mean positive maps, and -> (bins,) mean scores.
    """
    bins, means = {}, {}
    for label in labels:
        kernel = smooth_kernel if label.startswith(SMOOTHED_PREFIX) else 1
        for layer in layers:
            bins[(label, layer)] = result.aggatt(label, layer, kernel)
            means[(label, layer)] = bin_scores(*result.cell_scores[(label, layer, kernel)])
    return bins, means


def cell_share(result: GridResult, grids: GridSet, label: str, layer: str, cell: int, kernel_size: int = 1) -> float:
    """The median share of positive mass that the kept maps of (``label``, ``layer``) put into ``cell``.

    On DiFull with ``cell`` the bottom-right one, this is the mass on the copy of the class that the explained
    (top-left) head cannot see. The share is the localisation score of that cell
    (:func:`attrlab.grids.localisation.localisation`).
    """
    maps = result.maps[(label, layer, kernel_size)]
    score, _ = localisation(maps, grids.masks.to(maps.device), cell)
    return float(score.median())


def grid_size_comparison(medians_2x2: pd.Series, scores_3x3: pd.DataFrame) -> pd.DataFrame:
    """Median GridPG scores on 2x2 and 3x3 grids per (method, layer), and each as a multiple of its uniform level.

    Parameters
    ----------
    medians_2x2 : pandas.Series
        GridPG medians of 2x2 grids indexed by (method, layer).
    scores_3x3 : pandas.DataFrame
        The score table of a GridPG evaluation on 3x3 grids.

    Returns
    -------
    pandas.DataFrame
        Columns "2x2", "3x3", "2x2 / uniform", "3x3 / uniform", for the pairs evaluated on both.
    """
    compare = pd.DataFrame(
        {
            "2x2": medians_2x2,
            "3x3": scores_3x3.groupby(["method", "layer"])["score"].median(),
        }
    ).dropna()
    compare["2x2 / uniform"] = compare["2x2"] / (1 / 4)
    compare["3x3 / uniform"] = compare["3x3"] / (1 / 9)
    return compare


def check_claims(
    medians: pd.Series,
    smoothing: pd.DataFrame,
    compare: pd.DataFrame,
    margin: float,
    plain_model: str = "vgg_small",
    batchnorm_model: str = "vgg_small_bn",
) -> pd.DataFrame:
    """The thesis' qualitative claims tested on this study's numbers, one row each.

    Parameters
    ----------
    medians : pandas.Series
        Median scores of the three settings on 2x2 grids, indexed by (setting, method, layer).
    smoothing : pandas.DataFrame
        The smoothing sweep's score table with a ``model`` column (``plain_model`` and ``batchnorm_model``).
    compare : pandas.DataFrame
        :func:`grid_size_comparison`.
    margin : float
        The smallest change of a median that counts as "improves" / "helps".
    plain_model, batchnorm_model : str
        The ``model`` values of the networks without and with BatchNorm.

    Returns
    -------
    pandas.DataFrame
        Columns "claim (thesis ch. 4)", "test", "measured", "holds".
    """

    def med(setting: str, method: str, layer: str) -> float:
        return float(medians.loc[(setting, method, layer)])

    methods = set(medians.index.get_level_values("method"))
    claims = []
    backprop = [m for m in BACKPROP_LABELS if m in methods] + lrp_labels(methods)
    difull_backprop = {f"{m} {layer}": med("difull", m, layer) for m in backprop for layer in LAYERS}
    worst = min(difull_backprop, key=difull_backprop.__getitem__)
    claims.append(
        (
            "Backprop methods are near-perfect on DiFull",
            f"lowest median over {', '.join(backprop)} x 3 layers >= 0.9",
            f"lowest: {worst} = {difull_backprop[worst]:.3f}",
            difull_backprop[worst] >= 0.9,
        )
    )
    gc_difull, gc_gridpg = med("difull", "Grad-CAM", "final"), med("gridpg", "Grad-CAM", "final")
    claims.append(
        (
            "Grad-CAM at the final layer scores lower on DiFull than on GridPG",
            "median DiFull < median GridPG (final layer)",
            f"DiFull {gc_difull:.3f}, GridPG {gc_gridpg:.3f}",
            gc_difull < gc_gridpg,
        )
    )
    for method in ("IxG", "IntGrad"):
        inp, fin = med("gridpg", method, "input"), med("gridpg", method, "final")
        claims.append(
            (
                f"{method} improves from the input to the final layer on GridPG",
                f"median final - median input > {margin}",
                f"input {inp:.3f}, final {fin:.3f}",
                fin - inp > margin,
            )
        )
    gridpg = smoothing[smoothing["setting"] == "gridpg"]
    smooth_medians = gridpg.groupby(["model", "method", "kernel_size"])["score"].median()
    largest = int(smoothing["kernel_size"].max())
    models = (plain_model, batchnorm_model)
    gain = (
        {
            name: float(
                smooth_medians.loc[(name, f"{SMOOTHED_PREFIX}IxG", largest)] - smooth_medians.loc[(name, "IxG", 1)]
            )
            for name in models
        }
        if largest > 1
        else {name: 0.0 for name in models}
    )
    claims.append(
        (
            "Smoothing helps IxG without BatchNorm but not with it",
            f"GridPG median gain at K={largest}: > {margin} without BN, <= {margin} with BN",
            f"without BN {gain[plain_model]:+.3f}, with BN {gain[batchnorm_model]:+.3f}",
            gain[plain_model] > margin and gain[batchnorm_model] <= margin,
        )
    )
    lower = compare["3x3"] < compare["2x2"]
    claims.append(
        (
            "3x3 grids score below 2x2",
            "median 3x3 < median 2x2 for every compared (method, layer)",
            f"lower in {int(lower.sum())} of {len(lower)}",
            bool(lower.all()),
        )
    )
    return pd.DataFrame(claims, columns=["claim (thesis ch. 4)", "test", "measured", "holds"])
