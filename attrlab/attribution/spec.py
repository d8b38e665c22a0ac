"""A method with its settings (:class:`MethodSpec`): what the tracker, the grid evaluation and every evaluation run.

An evaluation is given methods as specs, not as built :class:`~attrlab.attribution.Attribution` objects, because it
builds each method itself on the model it evaluates (the training model for the tracker, a frozen copy wrapped for a
grid setting for the grid evaluation) and may build it differently per layer (Occlusion's window at a deep layer).
One spec type serves them all; the fields an evaluation does not use are ignored by it:

* every evaluation: ``label`` (the name in tables and plots), ``method`` (a registry name or a factory
  ``model, **settings -> Attribution``) and ``settings`` (constructor keywords);
* one-layer evaluations (the tracker): ``layer``, the layer to attribute at (``None``: the method's default);
* multi-layer evaluations (the grid evaluation's ML-Att): ``layer_settings`` (per layer key, settings that override
  ``settings``), ``layer_keys`` (the layer keys this method is evaluated at; ``None``: all of the evaluation's),
  ``smoothing`` (Gaussian kernel sizes, one score column each, 1 = the raw map) and ``batch_size`` (inputs per
  call, overriding the evaluation's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from torch import nn

from . import Attribution, available_methods, make_method

#: the label of a smoothed score column: ``S-<label>`` (the thesis' S-IxG, S-IntGrad)
SMOOTHED_PREFIX = "S-"
#: labels that can name a folder (the tracker keeps snapshots per label)
PATH_SAFE_LABEL = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method with its settings, under a display label (see the module docstring for the fields).

    ``label``, ``method`` and ``settings`` may be given by position, the other fields only by name.

    Parameters
    ----------
    label : str
        The method's name in tables, plots and (for the tracker) snapshot folders.
    method : str or callable
        A registry name (:func:`attrlab.attribution.available_methods`) or a factory ``model, **settings ->
        Attribution``.
    settings : mapping
        Keyword settings of the method's constructor.
    layer : str or None
        The layer to attribute at, for evaluations that explain one layer (the tracker); ``None``: the method's
        default.
    layer_settings : mapping
        Layer key -> settings that override ``settings`` at that layer of a multi-layer evaluation.
    layer_keys : sequence of str or None
        The layer keys of a multi-layer evaluation this method runs at; ``None``: all of them.
    smoothing : sequence of int
        Gaussian kernel sizes (odd, 1 = no smoothing) of a grid evaluation; each gives its own score column.
    batch_size : int or None
        Inputs per attribution call, overriding the evaluation's (multi-pass methods are fastest with fewer).
    """

    label: str
    method: str | Callable[..., Attribution]
    settings: Mapping[str, Any] = field(default_factory=dict)
    _: KW_ONLY  # the fields of one kind of evaluation are named, never positional
    layer: str | None = None
    layer_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    layer_keys: Sequence[str] | None = None
    smoothing: Sequence[int] = (1,)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"a method label is a non-empty string, got {self.label!r}")
        if isinstance(self.method, str):
            if self.method not in available_methods(include_reproductions=True):
                raise ValueError(
                    f"unknown attribution method {self.method!r} for {self.label!r}; valid names: "
                    f"{', '.join(available_methods(include_reproductions=True))}, or a factory model, **settings -> Attribution"
                )
        elif not callable(self.method):
            raise TypeError(f"method of {self.label!r} must be a registry name or a factory, got {self.method!r}")
        _check_settings(self.settings, f"settings of {self.label!r}")
        if not isinstance(self.layer_settings, Mapping):
            raise TypeError(
                f"layer_settings of {self.label!r} must map layer keys to settings, got {self.layer_settings!r}"
            )
        for key, settings in self.layer_settings.items():
            _check_settings(settings, f"layer_settings[{key!r}] of {self.label!r}")
        if self.layer is not None and not isinstance(self.layer, str):
            raise TypeError(f"layer of {self.label!r} must be a layer name or None, got {self.layer!r}")
        if self.layer_keys is not None:
            if isinstance(self.layer_keys, str) or not self.layer_keys:
                raise ValueError(
                    f"layer_keys of {self.label!r} must be a non-empty list of keys, got {self.layer_keys!r}"
                )
            object.__setattr__(self, "layer_keys", tuple(self.layer_keys))
        smoothing = tuple(self.smoothing) if not isinstance(self.smoothing, (str, int)) else ()
        if not smoothing or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 for k in smoothing
        ):
            raise ValueError(
                f"smoothing of {self.label!r} must list positive odd kernel sizes (1 = none), got {self.smoothing!r}"
            )
        object.__setattr__(self, "smoothing", smoothing)
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(
                f"batch_size of {self.label!r} must be a positive integer or None, got {self.batch_size!r}"
            )

    def make(self, model: nn.Module, layer_key: str | None = None) -> Attribution:
        """Build the method on ``model``, with the settings of ``layer_key`` (a multi-layer evaluation's key).

        Parameters
        ----------
        model : nn.Module
            The model to explain.
        layer_key : str or None
            The evaluation's layer key whose ``layer_settings`` apply; ``None``: ``settings`` alone.

        Returns
        -------
        Attribution
            The method, ready for ``attribute`` / ``explain``.
        """
        settings = (
            {**self.settings, **self.layer_settings.get(layer_key, {})}
            if layer_key is not None
            else dict(self.settings)
        )
        if isinstance(self.method, str):
            return make_method(self.method, model, **settings)
        return self.method(model, **settings)

    def smoothed_label(self, kernel_size: int) -> str:
        """The label of this method's score column for Gaussian kernel ``kernel_size`` (1: the label itself)."""
        return self.label if kernel_size == 1 else f"{SMOOTHED_PREFIX}{self.label}"


def _check_settings(settings: Any, what: str) -> None:
    if not isinstance(settings, Mapping) or not all(isinstance(name, str) for name in settings):
        raise TypeError(f"{what} must map keyword names to values, got {settings!r}")
