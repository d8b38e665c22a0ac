"""attrlab's own LRP: zennit-style rules and composites, run as one batched, hook-free forward and backward pass."""

from .composites import (
    COMPOSITES,
    Composite,
    EpsilonGammaBox,
    EpsilonOnly,
    EpsilonPlusFlat,
    LRPComposite,
    LRPFocus,
    Seed000,
    make_composite,
)
from .engine import LRP, plan, walk
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Gradient, MaxAsAvg, Norm, Pass, Rule, WSquare, ZBox, ZPlus

__all__ = [
    "COMPOSITES",
    "LRP",
    "AlphaBeta",
    "Composite",
    "Epsilon",
    "EpsilonGammaBox",
    "EpsilonOnly",
    "EpsilonPlusFlat",
    "Flat",
    "Gamma",
    "Gradient",
    "LRPComposite",
    "LRPFocus",
    "MaxAsAvg",
    "Norm",
    "Pass",
    "Rule",
    "Seed000",
    "WSquare",
    "ZBox",
    "ZPlus",
    "make_composite",
    "plan",
    "walk",
]
