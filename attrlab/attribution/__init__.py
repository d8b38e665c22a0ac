"""Attribution methods by name: ``get_method("lrp")(model, composite=...).attribute(x, target=..., layer=...)``."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from .base import Attribution, Explanation, resolve_layer, resolve_target

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
    "gradcam_seed_code": "attrlab.attribution.gradcam_seed_code:SeedCodeGradCAM",
    "pattern_net": "attrlab.attribution.pattern:PatternNet",
    "pattern_attribution": "attrlab.attribution.pattern:PatternAttribution",
    "score_cam": "attrlab.attribution.score_cam:ScoreCAM",
    "ablation_cam": "attrlab.attribution.score_cam:AblationCAM",
    "lime": "attrlab.attribution.lime:Lime",
    "occlusion": "attrlab.attribution.perturbation:Occlusion",
    "rise": "attrlab.attribution.perturbation:RISE",
}


def register_method(name: str, path: str) -> None:
    """Register ``path`` ("package.module:Class") under ``name``."""
    if name in METHODS and METHODS[name] != path:
        raise ValueError(f"an attribution method named {name!r} is registered already ({METHODS[name]})")
    METHODS[name] = path


def available_methods() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> type[Attribution]:
    """The attribution class registered as ``name``; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown attribution method {name!r}; valid names: {', '.join(available_methods())}")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def make_method(name: str, model: nn.Module, **settings: Any) -> Attribution:
    """``get_method(name)(model, **settings)``, with a clear error for settings the method does not take."""
    cls = get_method(name)
    try:
        return cls(model, **settings)
    except TypeError as err:
        raise TypeError(f"bad settings for attribution method {name!r}: {err}") from err


__all__ = [
    "METHODS",
    "Attribution",
    "Explanation",
    "available_methods",
    "get_method",
    "make_method",
    "register_method",
    "resolve_layer",
    "resolve_target",
]
