"""LRP composites: small objects that map each layer of a walked model to its rule (by name, first layer, or type).

The built-in composites give every layer the rule zennit 0.5.1's composite of the same name gives it (zennit's
"first layer" is the first module, in model order, that matches the first-layer types), plus seed 000's
configuration and the two configurations of Böhle's thesis (ch. 4):

=========================  ==================  ======================  =========================  =================
name                       dense (Linear)      conv (Conv1d/2d/3d)     first layer                max pooling
=========================  ==================  ======================  =========================  =================
``epsilon``                epsilon             epsilon                 (same)                     gradient
``epsilon_plus_flat``      epsilon (1e-6)      z+                      flat (first Conv/Linear)   gradient
``epsilon_gamma_box``      epsilon (1e-6)      gamma (0.25)            z^B (first Conv)           gradient
``seed000``                LRP-0               gamma (0.25)            z^B [-1, 1] (first Conv)   as average pooling
``lrp_focus``              epsilon (0.25)      z+                      z^B (first Conv)           gradient
``lrp_composite``          epsilon (0.25)      gamma (``gamma``)       z^B (first Conv)           gradient
``lrp_z``                  LRP-z (epsilon 0)   LRP-z                   (same)                     gradient
``alpha_beta``             alpha-beta          alpha-beta              (same)                     gradient
``alpha1_beta0``           alpha 1, beta 0     alpha 1, beta 0         (same)                     gradient
``alpha2_beta1``           alpha 2, beta 1     alpha 2, beta 1         (same)                     gradient
``alpha5_beta4``           alpha 5, beta 4     alpha 5, beta 4         (same)                     gradient
``cmp_alpha1_beta0``       epsilon (1e-10)     alpha 1, beta 0         (same)                     gradient
``cmp_alpha2_beta1``       epsilon (1e-10)     alpha 2, beta 1         (same)                     gradient
``dtd``                    z+                  z+                      z^B (first Conv/Linear)    gradient
``excitation_backprop``    z+                  z+                      (same)                     gradient
``epsilon_plus``           epsilon (1e-6)      z+                      (same)                     gradient
``epsilon_alpha2_beta1``   epsilon (1e-6)      alpha 2, beta 1         (same)                     gradient
=========================  ==================  ======================  =========================  =================

``lrp_z`` to ``excitation_backprop`` are the method list of Sixt et al. (2020), "When Explanations Lie", which ran
them through iNNvestigate; ``epsilon_plus`` and ``epsilon_alpha2_beta1`` are zennit's composites of those names, two of
the configurations Pahde et al. (2023) search over; each class docstring names its source.

Every composite also takes ``name_map`` ({layer name: rule}, highest priority), ``layer_map`` ([(types, rule)],
before the built-in type map) and ``max_pool`` ("gradient": relevance routed to the maximum like zennit, or
"average": max pooling treated as average pooling like seed 000's code). ReLUs and the other element-wise
activations (ReLU6, SiLU, Sigmoid, ...) pass relevance (zennit's ``Pass``), average pools share it
in proportion to their inputs (zennit's Norm), Flatten / Dropout / Identity use their gradient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..canonize import ThreshReLU
from ..data import INPUT_BOUNDS
from .layers import ACTIVATIONS, AVERAGE_POOLS, IDENTITIES, MAX_POOLS, Convolution
from .rules import (
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    MaxAsAvg,
    Norm,
    Pass,
    Rule,
    ZBox,
    ZPlus,
)

TypeMap = Sequence[tuple[type | tuple[type, ...], Rule]]
MAX_POOL_MODES = ("gradient", "average")


class Composite:
    """Assign rules to a model's layers: ``name_map``, else ``first_map`` (first match only), else ``layer_map``.

    Parameters
    ----------
    layer_map : sequence of (type or tuple of types, Rule)
        Rules by layer type, first match wins; the built-in map (ReLU: pass, pooling, reshapes) follows it.
    first_map : sequence of (type or tuple of types, Rule)
        Rules for the first layer (in walk order) that matches one of the types.
    name_map : mapping of str to Rule, optional
        Rules by layer name, highest priority.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    stabilizer : float
        The stabilizer of the built-in pooling rules.
    """

    def __init__(
        self,
        layer_map: TypeMap = (),
        first_map: TypeMap = (),
        name_map: Mapping[str, Rule] | None = None,
        max_pool: str = "gradient",
        stabilizer: float = 1e-6,
    ):
        if max_pool not in MAX_POOL_MODES:
            raise ValueError(f"unknown max_pool {max_pool!r}; valid choices: {', '.join(MAX_POOL_MODES)}")
        for rule in [rule for _, rule in (*layer_map, *first_map)] + list((name_map or {}).values()):
            if not isinstance(rule, Rule):
                raise TypeError(f"composite entries must be attrlab.lrp.rules.Rule objects, got {rule!r}")
        self.name_map = dict(name_map or {})
        self.first_map = list(first_map)
        self.stabilizer = float(stabilizer)  # also the traced engine's addition and pooling rules
        base: list[tuple[type | tuple[type, ...], Rule]] = [
            ((nn.ReLU, ThreshReLU, *ACTIVATIONS, nn.GELU, nn.LeakyReLU, nn.ELU), Pass()),
            (MAX_POOLS, Gradient() if max_pool == "gradient" else MaxAsAvg(stabilizer)),
            (AVERAGE_POOLS, Norm(stabilizer)),
            ((nn.Flatten, *IDENTITIES), Gradient()),
        ]
        self.layer_map = list(layer_map) + base

    def rules(self, layers: Sequence[tuple[str, nn.Module]], fallback: TypeMap = ()) -> list[Rule]:
        """The rule of each (name, module) in walk order; a layer without a rule raises an error naming it.

        Parameters
        ----------
        layers : sequence of (str, nn.Module)
            The walked (canonized) layers.
        fallback : sequence of (type or tuple of types, Rule)
            Rules by type after the composite's own (the engine's BatchNorm mode).

        Returns
        -------
        list of Rule
        """
        unknown = set(self.name_map) - {name for name, _ in layers}
        if unknown:
            raise ValueError(
                f"name_map names layers the model does not have: {sorted(unknown)}; "
                f"valid layers: {', '.join(name for name, _ in layers)}"
            )
        rules, first_seen = [], False
        for name, module in layers:
            rule = None
            if not first_seen:
                rule = _match(self.first_map, module)
                first_seen = rule is not None
            if name in self.name_map:
                rule = self.name_map[name]
            if rule is None:
                rule = _match(self.layer_map, module) or _match(fallback, module)
            if rule is None:
                raise TypeError(
                    f"no LRP rule for layer {name!r} of type {type(module).__name__}; give it one with "
                    "name_map={name: rule} or layer_map=[(type, rule)]"
                )
            rules.append(rule)
        return rules

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name_map={self.name_map!r}, first_map={self.first_map!r})"


def _match(type_map: TypeMap, module: nn.Module) -> Rule | None:
    for types, rule in type_map:
        if isinstance(module, types):
            return rule
    return None


def _standard(dense: Rule, conv: Rule, first: TypeMap, name_map, layer_map, max_pool, stabilizer) -> dict[str, Any]:
    return dict(
        layer_map=list(layer_map or []) + [(Convolution, conv), (nn.Linear, dense)],
        first_map=first,
        name_map=name_map,
        max_pool=max_pool,
        stabilizer=stabilizer,
    )


class EpsilonOnly(Composite):
    """Epsilon on every Conv2d and Linear layer (``epsilon=0``: LRP-0).

    Parameters
    ----------
    epsilon : float
        The epsilon rule's stabilizer on every Conv2d and Linear layer (0: LRP-0).
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self, epsilon: float = 1e-6, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"
    ):
        rule = Epsilon(epsilon)
        super().__init__(**_standard(rule, rule, [], name_map, layer_map, max_pool, stabilizer))


class EpsilonPlusFlat(Composite):
    """zennit's EpsilonPlusFlat: epsilon on dense layers, z+ on convolutions, flat on the first Conv/Linear.

    Parameters
    ----------
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self, epsilon: float = 1e-6, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"
    ):
        first = [((*Convolution, nn.Linear), Flat(stabilizer))]
        super().__init__(
            **_standard(Epsilon(epsilon), ZPlus(stabilizer), first, name_map, layer_map, max_pool, stabilizer)
        )


class EpsilonGammaBox(Composite):
    """zennit's EpsilonGammaBox: epsilon on dense layers, gamma on convolutions, z^B on the first convolution.

    Parameters
    ----------
    low : float or torch.Tensor
        Lower bound of the input values for z^B (a number or a (C, H, W) / (1, C, H, W) image).
    high : float or torch.Tensor
        Upper bound of the input values for z^B.
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    gamma : float
        The gamma rule's weight on the positive parts, on the convolutions.
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self,
        low=INPUT_BOUNDS[0],
        high=INPUT_BOUNDS[1],
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        first = [(Convolution, ZBox(low, high, stabilizer))]
        super().__init__(
            **_standard(Epsilon(epsilon), Gamma(gamma, stabilizer), first, name_map, layer_map, max_pool, stabilizer)
        )


class Seed000(Composite):
    """Seed 000's public code (Montavon et al. 2019): LRP-0 dense, gamma 0.25 conv, z^B [-1, 1] first conv,
    max pooling as average pooling.

    Parameters
    ----------
    low : float or torch.Tensor
        Lower bound of the input values for z^B (a number or a (C, H, W) / (1, C, H, W) image).
    high : float or torch.Tensor
        Upper bound of the input values for z^B.
    gamma : float
        The gamma rule's weight on the positive parts, on the convolutions.
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self,
        low=INPUT_BOUNDS[0],
        high=INPUT_BOUNDS[1],
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "average",
    ):
        first = [(Convolution, ZBox(low, high, stabilizer))]
        super().__init__(
            **_standard(Epsilon(0.0), Gamma(gamma, stabilizer), first, name_map, layer_map, max_pool, stabilizer)
        )


class LRPFocus(Composite):
    """Böhle's LRP-Focus: epsilon 0.25 dense, z+ conv, z^B first conv.

    Parameters
    ----------
    low : float or torch.Tensor
        Lower bound of the input values for z^B (a number or a (C, H, W) / (1, C, H, W) image).
    high : float or torch.Tensor
        Upper bound of the input values for z^B.
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self,
        low=INPUT_BOUNDS[0],
        high=INPUT_BOUNDS[1],
        epsilon: float = 0.25,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        first = [(Convolution, ZBox(low, high, stabilizer))]
        super().__init__(
            **_standard(Epsilon(epsilon), ZPlus(stabilizer), first, name_map, layer_map, max_pool, stabilizer)
        )


class LRPComposite(Composite):
    """Böhle's LRP-Composite(gamma): epsilon dense (0.25, as LRP-Focus, its gamma -> inf limit), gamma conv, z^B
    first conv.

    Parameters
    ----------
    gamma : float
        The gamma rule's weight on the positive parts, on the convolutions.
    low : float or torch.Tensor
        Lower bound of the input values for z^B (a number or a (C, H, W) / (1, C, H, W) image).
    high : float or torch.Tensor
        Upper bound of the input values for z^B.
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    stabilizer : float
        The stabilizer of the other rules (z+, gamma, z^B, flat, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self,
        gamma: float = 0.25,
        low=INPUT_BOUNDS[0],
        high=INPUT_BOUNDS[1],
        epsilon: float = 0.25,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        first = [(Convolution, ZBox(low, high, stabilizer))]
        super().__init__(
            **_standard(Epsilon(epsilon), Gamma(gamma, stabilizer), first, name_map, layer_map, max_pool, stabilizer)
        )


class LRPZ(Composite):
    """LRP-z (Bach et al. 2015; Sixt et al. 2020 eq. 5): ``R_in = x W^T (R / z)`` on every Conv2d and Linear layer.

    iNNvestigate's ``lrp.z``; the epsilon rule with ``epsilon=0`` (units with ``z = 0`` pass no relevance), which is
    zennit's ``Epsilon(0)`` where ``z != 0``. On ReLU / max-pool networks it equals Input x Gradient.
    """

    def __init__(self, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"):
        rule = Epsilon(0.0)
        super().__init__(**_standard(rule, rule, [], name_map, layer_map, max_pool, stabilizer))


class AlphaBetaEverywhere(Composite):
    """LRP-alpha-beta (Bach et al. 2015; Sixt et al. 2020 eq. 6) on every Conv2d and Linear layer, the first included.

    iNNvestigate's ``lrp.alpha_beta`` (``lrp.alpha_1_beta_0``, ``lrp.alpha_2_beta_1``, ...); zennit's
    ``AlphaBeta(alpha, beta)`` rule on zennit's Convolution and Linear types. ``alpha - beta = 1``.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 1.0,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        rule = AlphaBeta(alpha, beta, stabilizer)
        super().__init__(**_standard(rule, rule, [], name_map, layer_map, max_pool, stabilizer))


class Alpha1Beta0(AlphaBetaEverywhere):
    """LRP-alpha1-beta0 on every Conv2d and Linear layer (iNNvestigate's ``lrp.alpha_1_beta_0``; = z+ everywhere)."""

    def __init__(self, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"):
        super().__init__(1.0, 0.0, stabilizer, name_map, layer_map, max_pool)


class Alpha2Beta1(AlphaBetaEverywhere):
    """LRP-alpha2-beta1 on every Conv2d and Linear layer (iNNvestigate's ``lrp.alpha_2_beta_1``)."""

    def __init__(self, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"):
        super().__init__(2.0, 1.0, stabilizer, name_map, layer_map, max_pool)


class Alpha5Beta4(AlphaBetaEverywhere):
    """LRP-alpha5-beta4 on every Conv2d and Linear layer: Sixt et al. (2020)'s setting with less convergence."""

    def __init__(self, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"):
        super().__init__(5.0, 4.0, stabilizer, name_map, layer_map, max_pool)


class CMPAlphaBeta(Composite):
    """LRP-CMP (Kohlbrenner et al. 2020, as Sixt et al. 2020 ran it): epsilon on dense layers, alpha-beta on
    convolutions, no special first layer.

    iNNvestigate's ``lrp.sequential_preset_a`` (alpha 1, beta 0) and ``lrp.sequential_preset_b`` (alpha 2, beta 1),
    with the ``epsilon=1e-10`` of the authors' code (in float32 that is LRP-z wherever ``|z| >> 1e-10``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 0.0,
        epsilon: float = 1e-10,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        super().__init__(
            **_standard(
                Epsilon(epsilon), AlphaBeta(alpha, beta, stabilizer), [], name_map, layer_map, max_pool, stabilizer
            )
        )


class CMPAlpha1Beta0(CMPAlphaBeta):
    """LRP-CMP with alpha 1, beta 0 on convolutions (iNNvestigate's ``lrp.sequential_preset_a``)."""

    def __init__(
        self,
        epsilon: float = 1e-10,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        super().__init__(1.0, 0.0, epsilon, stabilizer, name_map, layer_map, max_pool)


class CMPAlpha2Beta1(CMPAlphaBeta):
    """LRP-CMP with alpha 2, beta 1 on convolutions (iNNvestigate's ``lrp.sequential_preset_b``)."""

    def __init__(
        self,
        epsilon: float = 1e-10,
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        super().__init__(2.0, 1.0, epsilon, stabilizer, name_map, layer_map, max_pool)


class DTD(Composite):
    """Deep Taylor decomposition (Montavon et al. 2017) for ReLU networks with bounded inputs: z+ on every Conv2d and
    Linear layer, z^B (inputs in [``low``, ``high``]) on the first one.

    iNNvestigate's ``deep_taylor.bounded`` with low/high the input range, as the authors' code of Sixt et al. (2020)
    calls it; in zennit: ``SpecialFirstLayerMapComposite`` with ``ZBox`` first and ``ZPlus`` on Convolution/Linear.
    """

    def __init__(
        self,
        low=INPUT_BOUNDS[0],
        high=INPUT_BOUNDS[1],
        stabilizer: float = 1e-6,
        name_map=None,
        layer_map=None,
        max_pool: str = "gradient",
    ):
        first = [((*Convolution, nn.Linear), ZBox(low, high, stabilizer))]
        rule = ZPlus(stabilizer)
        super().__init__(**_standard(rule, rule, first, name_map, layer_map, max_pool, stabilizer))


class ExcitationBackprop(Composite):
    """Excitation Backprop (Zhang et al. 2016; zennit's ``ExcitationBackprop`` composite): z+ on every Conv2d and
    Linear layer, activations and max pooling by their gradient, average pooling by Norm.

    Sixt et al. (2020) note it equals LRP-alpha1-beta0; here it is zennit's composite, whose layer map gives ReLUs no
    rule (their gradient), which for ReLU is the same as the pass-through of the other composites.
    """

    def __init__(self, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"):
        rule = ZPlus(stabilizer)
        super().__init__(**_standard(rule, rule, [], name_map, layer_map, max_pool, stabilizer))


class EpsilonPlus(Composite):
    """zennit's ``EpsilonPlus``: epsilon on dense layers, z+ on convolutions, no special first layer (Kohlbrenner et
    al. 2020's LRP-CMP; one of Pahde et al. 2023's searched composites).

    Parameters
    ----------
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    stabilizer : float
        The stabilizer of the other rules (z+, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self, epsilon: float = 1e-6, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"
    ):
        super().__init__(
            **_standard(Epsilon(epsilon), ZPlus(stabilizer), [], name_map, layer_map, max_pool, stabilizer)
        )


class EpsilonAlpha2Beta1(Composite):
    """zennit's ``EpsilonAlpha2Beta1``: epsilon on dense layers, alpha 2 beta 1 on convolutions, no special first layer.

    Parameters
    ----------
    epsilon : float
        The epsilon rule's stabilizer on the dense layers.
    stabilizer : float
        The stabilizer of the other rules (alpha-beta, pooling).
    name_map : mapping of str to Rule, optional
        Rules for layers by name, before everything else.
    layer_map : sequence of (type, Rule), optional
        Rules by layer type, before the built-in type map.
    max_pool : str
        ``"gradient"`` (relevance to the maximum, zennit) or ``"average"`` (max pooling as average pooling).
    """

    def __init__(
        self, epsilon: float = 1e-6, stabilizer: float = 1e-6, name_map=None, layer_map=None, max_pool: str = "gradient"
    ):
        conv = AlphaBeta(2.0, 1.0, stabilizer)
        super().__init__(**_standard(Epsilon(epsilon), conv, [], name_map, layer_map, max_pool, stabilizer))


COMPOSITES: dict[str, type[Composite]] = {
    "epsilon": EpsilonOnly,
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_gamma_box": EpsilonGammaBox,
    "seed000": Seed000,
    "lrp_focus": LRPFocus,
    "lrp_composite": LRPComposite,
    "lrp_z": LRPZ,
    "alpha_beta": AlphaBetaEverywhere,
    "alpha1_beta0": Alpha1Beta0,
    "alpha2_beta1": Alpha2Beta1,
    "alpha5_beta4": Alpha5Beta4,
    "cmp_alpha1_beta0": CMPAlpha1Beta0,
    "cmp_alpha2_beta1": CMPAlpha2Beta1,
    "dtd": DTD,
    "excitation_backprop": ExcitationBackprop,
    "epsilon_plus": EpsilonPlus,
    "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
}


def make_composite(composite: str | Composite | Mapping, **settings: Any) -> Composite:
    """A composite from a registered name (with its settings), a Composite, or a {layer name or type: rule} mapping.

    Parameters
    ----------
    composite : str, Composite or mapping
        A name of :data:`COMPOSITES`, a :class:`Composite` (used as is), or a mapping {layer name or layer type: rule}.
    **settings
        The named composite's settings (``gamma=0.1``, ``max_pool="average"``, ...); for a mapping, those of
        :class:`Composite`.

    Returns
    -------
    Composite
    """
    if isinstance(composite, Composite):
        if settings:
            raise TypeError(f"settings {sorted(settings)} only apply to composites given by name")
        return composite
    if isinstance(composite, Mapping):
        names = {key: rule for key, rule in composite.items() if isinstance(key, str)}
        types = [(key, rule) for key, rule in composite.items() if not isinstance(key, str)]
        return Composite(layer_map=types, name_map=names, **settings)
    if isinstance(composite, str):
        if composite not in COMPOSITES:
            raise ValueError(f"unknown composite {composite!r}; valid names: {', '.join(COMPOSITES)}")
        return COMPOSITES[composite](**settings)
    raise TypeError(f"composite must be a name, a Composite or a mapping, not {type(composite).__name__}")


__all__ = [
    "COMPOSITES",
    "DTD",
    "Alpha1Beta0",
    "Alpha2Beta1",
    "Alpha5Beta4",
    "AlphaBetaEverywhere",
    "CMPAlpha1Beta0",
    "CMPAlpha2Beta1",
    "CMPAlphaBeta",
    "Composite",
    "EpsilonAlpha2Beta1",
    "EpsilonPlus",
    "ExcitationBackprop",
    "LRPZ",
    "EpsilonGammaBox",
    "EpsilonOnly",
    "EpsilonPlusFlat",
    "LRPComposite",
    "LRPFocus",
    "Seed000",
    "make_composite",
]
