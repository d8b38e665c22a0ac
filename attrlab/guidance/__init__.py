"""Model guidance (Rao et al. 2023; thesis ch. 7): explanations as a training signal, its metrics, losses and study.

* :mod:`.metrics`: the Energy Pointing Game and IoU of any method's maps against boxes, batched;
* :mod:`.losses`: the localisation losses Energy, L1, PPCE and RRR* on maps differentiable in the parameters;
* :mod:`.objective`: a trainer objective ``lambda * L_loc`` on one random ground-truth class per image;
* :mod:`.study`: guided fine-tuning from a baseline over methods, layers, losses and lambdas, Pareto selection and
  the thesis' findings R1-R9 as computed checks.
"""

from .losses import LOSSES, localisation_loss
from .metrics import energy_pointing_game, fit_maps, iou, select_iou_threshold

__all__ = ["LOSSES", "energy_pointing_game", "fit_maps", "iou", "localisation_loss", "select_iou_threshold"]
