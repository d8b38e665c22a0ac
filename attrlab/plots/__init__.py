"""Plots of attrlab: one module per book topic, each function takes tables or arrays and returns a Figure."""

from __future__ import annotations

from .training import plot_learning_curves, plot_per_class_accuracy

__all__ = ["plot_learning_curves", "plot_per_class_accuracy"]
