"""Attribution methods by name: ``get_method("lrp")(model, composite=...).attribute(x, target=..., layer=...)``."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .base import INPUT, Attribution, Explanation, feature_layer, resolve_layer, resolve_target

#: registry name -> "module:Class" (imported on first use, so importing attrlab stays fast)
METHODS: dict[str, str] = {
    # LRP family
    "lrp": "attrlab.lrp.engine:LRP",
    # gradient, CAM and perturbation family
    "gradient": "attrlab.attribution.gradient:Gradient",
    "input_x_gradient": "attrlab.attribution.gradient:InputXGradient",
    "integrated_gradients": "attrlab.attribution.gradient:IntegratedGradients",
    "smoothgrad": "attrlab.attribution.gradient:SmoothGrad",
    "guided_backprop": "attrlab.attribution.gradient:GuidedBackprop",
    "deconvolution": "attrlab.attribution.gradient:Deconvolution",
    "rectgrad": "attrlab.attribution.rectgrad:RectGrad",
    "deeplift": "attrlab.attribution.deeplift:DeepLift",
    "gradcam": "attrlab.attribution.gradcam:GradCAM",
    "gradcam_pp": "attrlab.attribution.gradcam:GradCAMPlusPlus",
    "layercam": "attrlab.attribution.gradcam:LayerCAM",
    "pattern_net": "attrlab.attribution.pattern:PatternNet",
    "pattern_attribution": "attrlab.attribution.pattern:PatternAttribution",
    "score_cam": "attrlab.attribution.score_cam:ScoreCAM",
    "ablation_cam": "attrlab.attribution.score_cam:AblationCAM",
    "lime": "attrlab.attribution.lime:Lime",
    "occlusion": "attrlab.attribution.perturbation:Occlusion",
    "rise": "attrlab.attribution.perturbation:RISE",
    # inherent explanations of dynamic-linear networks (B-cos, CoDA)
    "bcos": "attrlab.interpretable.inherent:InherentContributions",
}

#: reproductions of published code, reachable by name through :func:`get_method` / :func:`make_method` but not
#: attribution methods: they ignore their target or need more than the batch (the seed code's Grad-CAM reads the
#: training minibatch), so evaluations and tests that run "every method" (:data:`METHODS`) leave them out
REPRODUCTIONS: dict[str, str] = {
    "gradcam_seed_code": "attrlab.attribution.gradcam_seed_code:SeedCodeGradCAM",
}


def register_method(name: str, path: str) -> None:
    """Register an attribution method class under a registry name.

    Parameters
    ----------
    name : str
        The registry name (``make_method(name, ...)``); a name taken by another path raises a ``ValueError``.
    path : str
        ``"package.module:Class"``, imported on first use.
    """
    taken = METHODS.get(name, REPRODUCTIONS.get(name))
    if taken is not None and taken != path:
        raise ValueError(f"an attribution method named {name!r} is registered already ({taken})")
    METHODS[name] = path


def available_methods(include_reproductions: bool = False) -> list[str]:
    """The registered method names, sorted.

    Parameters
    ----------
    include_reproductions : bool
        Also list the :data:`REPRODUCTIONS` of published code (``"gradcam_seed_code"``).

    Returns
    -------
    list of str
    """
    return sorted({**METHODS, **REPRODUCTIONS} if include_reproductions else METHODS)


def get_method(name: str) -> type[Attribution]:
    """The attribution class registered as ``name``.

    Parameters
    ----------
    name : str
        A name of :data:`METHODS` or :data:`REPRODUCTIONS`.

    Returns
    -------
    type
        The :class:`Attribution` subclass (its module imported now). An unknown name raises a ``ValueError`` that
        lists the valid ones.
    """
    path = METHODS.get(name, REPRODUCTIONS.get(name))
    if path is None:
        valid = ", ".join(available_methods(include_reproductions=True))
        raise ValueError(f"unknown attribution method {name!r}; valid names: {valid}")
    module_name, class_name = path.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_method(name: str, model: nn.Module, **settings: Any) -> Attribution:
    """Build the method registered as ``name`` on ``model``: ``get_method(name)(model, **settings)``.

    Parameters
    ----------
    name : str
        A registry name (see :func:`available_methods`).
    model : nn.Module
        The classifier to explain.
    **settings
        The method's constructor settings (for example ``composite="epsilon_plus_flat"`` for ``"lrp"``); settings
        the method does not take raise a ``TypeError`` naming the method.

    Returns
    -------
    Attribution
        Call ``.attribute(x, target=..., layer=...)`` or ``.explain(...)`` on it.
    """
    cls = get_method(name)
    try:
        return cls(model, **settings)
    except TypeError as err:
        raise TypeError(f"bad settings for attribution method {name!r}: {err}") from err


__all__ = [
    "INPUT",
    "METHODS",
    "REPRODUCTIONS",
    "Attribution",
    "Explanation",
    "available_methods",
    "feature_layer",
    "get_method",
    "make_method",
    "register_method",
    "resolve_layer",
    "resolve_target",
]
