"""Grid evaluations of attribution methods (GridPG, DiFull, DiPart, ML-Att, AggAtt, smoothing; thesis ch. 4)."""

from ..attribution.spec import MethodSpec  # the one method-with-settings type; grid evaluations take lists of it
from .aggatt import BINS, aggatt_order, bin_maps, bin_scores, bin_slices
from .callback import GridLocalisation
from .data import ConfidentImages, GridSet, cell_masks, confident_images, make_grids, tile
from .evaluate import LAYERS, GridResult, evaluate_setting, evaluation_copy, grid_maps, scored_cells
from .localisation import attribution_map, localisation, positive_mass
from .settings import SETTINGS, CellwiseConv2d, CellwiseMaxPool2d, GridModel, grid_model
from .smoothing import gaussian_sigma, smooth

__all__ = [
    "BINS",
    "LAYERS",
    "SETTINGS",
    "CellwiseConv2d",
    "CellwiseMaxPool2d",
    "ConfidentImages",
    "GridModel",
    "GridLocalisation",
    "GridResult",
    "GridSet",
    "MethodSpec",
    "aggatt_order",
    "attribution_map",
    "bin_maps",
    "bin_scores",
    "bin_slices",
    "cell_masks",
    "confident_images",
    "evaluate_setting",
    "evaluation_copy",
    "gaussian_sigma",
    "grid_maps",
    "grid_model",
    "localisation",
    "make_grids",
    "positive_mass",
    "scored_cells",
    "smooth",
    "tile",
]
