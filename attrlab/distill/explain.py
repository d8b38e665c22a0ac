"""Which explanation a model is distilled with: a differentiable method at a layer, chosen per architecture.

The thesis (§8.2) uses Grad-CAM for conventional models and the B-cos explanation ``W(x)^T ⊙ x`` for B-cos models.
:class:`TrainingExplanation` is such a choice, a method of
:func:`attrlab.attribution.differentiable.explain_for_training` at a layer; it is called with ``create_graph=True``
for the student (the explanation loss trains it) and ``False`` for the teacher. :func:`default_explanation` picks the
thesis' choice for a model: Grad-CAM at the last spatial feature layer (``relu6`` of ``vgg_small``, ``relu2`` of
the shallow model of Terzieva et al.), or the B-cos map at the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attribution.base import feature_layer
from ..attribution.differentiable import TRAINING_METHODS, explain_for_training
from ..interpretable.bcos import BcosConv2d, BcosLinear


@dataclass(frozen=True)
class TrainingExplanation:
    """A differentiable explanation: ``method`` at ``layer`` ("input" or a module name), (N, h, w) maps.

    Parameters
    ----------
    method : str
        One of :data:`~attrlab.attribution.differentiable.TRAINING_METHODS`.
    layer : str
        ``"input"`` or the name of a module of the model explained.
    """

    method: str
    layer: str = "input"

    def __post_init__(self) -> None:
        if self.method not in TRAINING_METHODS:
            raise ValueError(
                f"unknown explanation method {self.method!r}; valid choices: {', '.join(TRAINING_METHODS)}"
            )
        if not isinstance(self.layer, str) or not self.layer:
            raise ValueError(f"layer must be 'input' or a module name, got {self.layer!r}")

    @property
    def label(self) -> str:
        """``method@layer``, as run configs and tables name it."""
        return f"{self.method}@{self.layer}"

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, create_graph: bool = False
    ) -> torch.Tensor:
        """The (N, h, w) maps of logit ``target`` (N,) for images ``x``; with a graph to the parameters if asked."""
        return explain_for_training(model, x, target, self.method, layer=self.layer, create_graph=create_graph)


def is_bcos(model: nn.Module) -> bool:
    """Whether the model is a B-cos network (holds B-cos layers), whose explanation is its dynamic linear map."""
    return any(isinstance(module, (BcosConv2d, BcosLinear)) for module in model.modules())


def default_explanation(model: nn.Module) -> TrainingExplanation:
    """The thesis' choice for ``model``: the B-cos map at the input for B-cos networks, else Grad-CAM at the last
    spatial feature layer (:func:`~attrlab.attribution.base.feature_layer`).

    Parameters
    ----------
    model : nn.Module
        The teacher or the student.

    Returns
    -------
    TrainingExplanation
        The explanation to distill it with.
    """
    if is_bcos(model):
        return TrainingExplanation("bcos", "input")
    return TrainingExplanation("gradcam", feature_layer(model))


__all__ = ["TrainingExplanation", "default_explanation", "is_bcos"]
