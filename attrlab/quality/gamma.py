"""The per-layer-group LRP-gamma composite of Pahde et al. (2023, section 4.6): one gamma for each group of layers.

Pahde et al. split VGG's layers into four groups, low / middle / high convolutions and the fully connected head, and
gave every Conv2d / Linear of a group the generalised gamma rule with the group's gamma (zennit's ``Gamma``; gamma = 0
is LRP-0, a large gamma approaches z+). ReLUs pass relevance, pooling layers use the composite's built-in rules.
BatchNorm layers are folded into their neighbouring layer ("canonized"), or, without canonization, pass relevance
unchanged (their code's zennit ``Pass`` on BatchNorm: ``batchnorm="pass"``).

The groups of attrlab's small BatchNorm models (:data:`LAYER_GROUPS`):

=================  ===============  ===============  ===============  ==================
model              low              middle           high             head
=================  ===============  ===============  ===============  ==================
``vgg_small_bn``   conv1, conv2     conv3, conv4     conv5, conv6     head1, head2 (1x1)
``deep_bn``        conv1, conv2     conv3, conv4     conv5, conv6     fc1, fc2
=================  ===============  ===============  ===============  ==================

The grid (:func:`gamma_grid`) is every combination of :data:`GAMMAS` for the four groups, with and without
canonization: 7^4 x 2 = 4802 configurations, each a :class:`GammaConfig`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ..lrp import Composite, Gamma
from ..lrp.engine import BatchNormMode, walk

#: the gamma values of Pahde et al.'s search (their code's grid)
GAMMAS: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0, 10.0, 50.0)
#: the layer groups, from the input to the output
GROUPS: tuple[str, ...] = ("low", "middle", "high", "head")
#: model name -> group -> its Conv2d / Linear layers
LAYER_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "vgg_small_bn": {
        "low": ("conv1", "conv2"),
        "middle": ("conv3", "conv4"),
        "high": ("conv5", "conv6"),
        "head": ("head1", "head2"),
    },
    "deep_bn": {
        "low": ("conv1", "conv2"),
        "middle": ("conv3", "conv4"),
        "high": ("conv5", "conv6"),
        "head": ("fc1", "fc2"),
    },
}
#: how BatchNorm is treated: folded into its neighbour, or passing relevance unchanged (Pahde et al.'s "original")
CANONIZATION_MODES: dict[bool, BatchNormMode] = {True: "canonize", False: "pass"}


@dataclass(frozen=True)
class GammaConfig:
    """One configuration of the search: a gamma per layer group and whether BatchNorm is canonized."""

    low: float
    middle: float
    high: float
    head: float
    canonized: bool

    def __post_init__(self) -> None:
        for group in GROUPS:
            value = getattr(self, group)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"gamma of group {group!r} must be a number >= 0, got {value!r}")

    @property
    def gammas(self) -> dict[str, float]:
        """group -> gamma."""
        return {group: float(getattr(self, group)) for group in GROUPS}

    @property
    def key(self) -> str:
        """A file-name-safe identifier, e.g. ``canon_low-0.25_middle-0_high-10_head-1``."""
        parts = "_".join(f"{group}-{gamma:g}" for group, gamma in self.gammas.items())
        return f"{'canon' if self.canonized else 'orig'}_{parts}"

    @property
    def batchnorm(self) -> BatchNormMode:
        """The LRP engine's BatchNorm mode of this configuration."""
        return CANONIZATION_MODES[self.canonized]

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def gamma_grid(gammas: Sequence[float] = GAMMAS, canonized: Sequence[bool] = (False, True)) -> list[GammaConfig]:
    """Every combination of ``gammas`` for the four groups, for each canonization state (canonization slowest).

    Parameters
    ----------
    gammas : sequence of float
        The values each group's gamma takes (Pahde et al.: :data:`GAMMAS`).
    canonized : sequence of bool
        The canonization states.

    Returns
    -------
    list of GammaConfig
        ``len(canonized) * len(gammas) ** 4`` configurations.
    """
    if not gammas or len(set(gammas)) != len(gammas):
        raise ValueError(f"gammas must be distinct values, got {list(gammas)!r}")
    if not canonized or any(not isinstance(c, bool) for c in canonized):
        raise ValueError(f"canonized must hold booleans, got {list(canonized)!r}")
    return [
        GammaConfig(low, middle, high, head, canonized=state)
        for state in canonized
        for low, middle, high, head in itertools.product(*(tuple(float(g) for g in gammas),) * len(GROUPS))
    ]


def layer_groups(model_name: str) -> dict[str, tuple[str, ...]]:
    """The layer groups of a model by its registry name (see :data:`LAYER_GROUPS`)."""
    if model_name not in LAYER_GROUPS:
        raise ValueError(f"no layer groups for model {model_name!r}; valid choices: {', '.join(LAYER_GROUPS)}")
    return LAYER_GROUPS[model_name]


def check_groups(model: nn.Module, groups: Mapping[str, Sequence[str]]) -> None:
    """Raise an error unless ``groups`` covers every Conv2d / Linear of ``model`` exactly once."""
    affine = [name for name, module in walk(model) if isinstance(module, (nn.Conv2d, nn.Linear))]
    named = [name for group in GROUPS for name in groups[group]]
    if sorted(named) != sorted(affine):
        raise ValueError(f"layer groups {dict(groups)!r} must cover the model's Conv2d/Linear layers {affine} once")


def gamma_composite(config: GammaConfig, groups: Mapping[str, Sequence[str]], stabilizer: float = 1e-6) -> Composite:
    """The composite of ``config``: every layer of a group gets ``Gamma(gamma of the group)``.

    Parameters
    ----------
    config : GammaConfig
        The gammas.
    groups : mapping of str to sequence of str
        group -> layer names (:func:`layer_groups`).
    stabilizer : float
        The gamma rule's stabilizer (zennit's default 1e-6).

    Returns
    -------
    Composite
    """
    missing = [group for group in GROUPS if group not in groups]
    if missing:
        raise ValueError(f"layer groups lack {missing}; valid groups: {', '.join(GROUPS)}")
    name_map = {
        name: Gamma(gamma=config.gammas[group], stabilizer=stabilizer) for group in GROUPS for name in groups[group]
    }
    return Composite(name_map=name_map)


__all__ = [
    "CANONIZATION_MODES",
    "GAMMAS",
    "GROUPS",
    "LAYER_GROUPS",
    "GammaConfig",
    "check_groups",
    "gamma_composite",
    "gamma_grid",
    "layer_groups",
]
