"""LRP rules: how one layer passes relevance down, as small stateless zennit-style classes (only the maths).

Every rule computes a layer's true output and gives it the gradient of the rule, so that one backward pass of the
whole network yields the LRP relevances (relevance at a layer = activation x gradient). For a layer ``z = W x + b``
whose rule uses modified weights ``W'`` and a denominator ``d``, the backward pass maps the gradient ``g`` of the
output to ``W'^T (g z / stabilize(d))``: with ``R = z g`` that is the rule ``R_in = x W'^T (R / d)``. This is the
``z_mod * stop_grad(z / z_mod)`` construction, written as a tiny autograd function
(:func:`~attrlab.lrp.autograd.propagation`) so that the true output and all denominators come from ONE convolution
with the stacked weights ``[W; W']`` (no graph is recorded for it) and the backward pass needs one transposed
convolution with ``W'`` only (:meth:`~attrlab.lrp.layers.Affine.transpose`), and no module hooks. A ReLU right after
the layer is folded in (output ``relu(z)``, scale ``relu(z) / d``).

Formulas and conventions (stabilizer ``d + eps * sign(d)`` with ``sign(0) = +1``, which terms carry the bias,
generalised gamma) follow zennit 0.5.1, so the results agree with it to float precision.

*Input-space* rules (:class:`Flat`, :class:`WSquare`, :class:`ZBox`) do not have the form ``x * gradient``: their
backward returns the input relevance itself, so they only fit the layer that receives the model's input.

Rules get a :class:`~attrlab.lrp.layers.LayerInfo` with what the walk knows about the layer's surroundings; two facts
allow exact shortcuts: a non-negative input (after a ReLU all ``x-`` terms vanish) and a ReLU right after the layer
(outputs with ``z <= 0`` receive no relevance, so the gamma rule's negative branch is never used).

Writing a rule: subclass :class:`Rule` and return ``propagation(x, propagate)`` from ``__call__(layer, x, info)``,
where ``propagate(x)`` gives the layer's output and the backward map (see :class:`Epsilon`); a rule of the form
"weights A for positive inputs, B for negative ones" subclasses :class:`_TwoBranch` and gives only
``coefficients()`` and ``weights(layer, second)`` (see :class:`AlphaBeta`, :class:`Gamma`); element-wise and pooling
rules use :func:`~attrlab.lrp.autograd.reroute`. A composite then maps layers to the rule.
"""

from __future__ import annotations

import abc
from typing import Any, Generic, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..canonize import batchnorm_affine
from ..data import INPUT_BOUNDS
from .autograd import Backward, propagation, reroute
from .layers import Affine, LayerInfo, functional, per_cell


class TwoBranchWeights(NamedTuple):
    """What a two-branch rule derives from a layer's parameters (:meth:`_TwoBranch._prepare`)."""

    forward: Tensor  #: weights of the one forward call: [W; A (; B)] for x >= 0, [A; B] for signed inputs
    forward_bias: Tensor | None  #: the stacked bias of that call (x >= 0: [b; bias_A + eps (; bias_B)]), else None
    bias_a: Tensor | None  #: signed inputs: branch 1's bias, added after the call
    bias_b: Tensor | None  #: signed inputs: branch 2's bias (None when branch 2 is not needed)
    backward: Tensor  #: weights of the transposed call (for positive inputs): A, or [A; B] with both branches
    swapped: Tensor | None  #: signed inputs: weights of the transposed call for negative inputs, B or [B; A]


class InputSpaceConstants(NamedTuple):
    """What an input-space rule derives from a layer's weights and the image shape (:meth:`_InputSpace.constants`)."""

    weights: Tensor  #: the weight blocks stacked along the input channels
    reference: Tensor  #: flat / w^2: the denominator; z^B: the bounds' offset ``l w+ + h w-`` (with their biases)
    minus_low: Tensor | None = None  #: z^B: the multiplier ``-low`` of the ``w+`` block
    minus_high: Tensor | None = None  #: z^B: the multiplier ``-high`` of the ``w-`` block


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (zennit's convention): never zero for ``epsilon > 0``.

    Parameters
    ----------
    z : torch.Tensor
        Denominators.
    epsilon : float
        The stabilizer.

    Returns
    -------
    torch.Tensor
    """
    return z + torch.where(z >= 0, epsilon, -epsilon)


def _ratio_(z: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """``z / stabilize(denominator, epsilon)``, overwriting ``denominator`` (a temporary) to save memory traffic."""
    denominator.add_(torch.where(denominator >= 0, epsilon, -epsilon))
    if denominator.shape == z.shape:
        return torch.div(z, denominator, out=denominator)
    return z / denominator


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


#: the layers a rule applies to: an :class:`Affine` view for the linear rules, the module itself for the others
L = TypeVar("L", bound="nn.Module | Affine")


class Rule(abc.ABC, Generic[L]):
    """Base class: ``rule(layer, x, info)`` returns the layer output carrying the rule's gradient.

    Rules are stateless maths: settings in the constructor, nothing stored per call. What a rule derives from a
    layer's parameters (modified, stacked weights) it asks ``layer.cached(key, compute)`` for; the engine keeps those
    with its plan while the parameters are unchanged.
    """

    #: True for rules whose backward returns the input relevance itself (only valid on the model input)
    input_space: bool = False

    @abc.abstractmethod
    def __call__(self, layer: L, x: Tensor, info: LayerInfo) -> Tensor:
        """The layer's true output, carrying this rule's gradient."""

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({settings})"


# ----------------------------------------------------------------------------------------------------- linear layers
class Epsilon(Rule[Affine]):
    """LRP-epsilon: ``R_in = x W^T (R / (z + eps sign z))``; ``epsilon=0`` is LRP-0 (units with ``z = 0`` get none).

    Parameters
    ----------
    epsilon : float
        The stabilizer ``eps`` (>= 0).
    """

    def __init__(self, epsilon: float = 1e-6):
        if epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def __call__(self, layer: Affine, x: Tensor, info: LayerInfo) -> Tensor:
        def propagate(x: Tensor) -> tuple[Tensor, Backward]:
            z = layer(x)
            if info.fused_relu:
                z = z.clamp_(min=0)
            if self.epsilon == 0:
                scale = (z != 0).to(z.dtype)
            else:  # z / (z + eps sign z) = |z| / (|z| + eps): same value, fewer passes
                magnitude = z.abs()
                scale = magnitude.div_(magnitude + self.epsilon)
            return z, lambda grad: layer.transpose(grad * scale, layer.weight, x.shape)

        return propagation(x, propagate)


class _TwoBranch(Rule[Affine]):
    """Shared form of alpha-beta, z+ and (generalised) gamma: weights ``A``/``B`` for the two signs of the input.

    Branch 1: ``d1 = A x+ + B x- + bias_A``, branch 2: ``d2 = B x+ + A x- + bias_B``; the gradient is
    ``c1 * (branch 1 with z/d1) + c2 * (branch 2 with z/d2)``, each optionally restricted to ``z > 0`` / ``z < 0``.
    """

    stabilizer: float = 1e-6
    masked: bool = False  # branch 1 only for z > 0 and branch 2 only for z < 0 (gamma)

    @abc.abstractmethod
    def coefficients(self) -> tuple[float, float]:
        """(c1, c2): the weights of the two branches."""

    @abc.abstractmethod
    def weights(self, layer: Affine, second: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(A, B, bias_A, bias_B); with ``second=False`` the bias of branch 2 is not needed."""

    def __call__(self, layer: Affine, x: Tensor, info: LayerInfo) -> Tensor:
        c1, c2 = self.coefficients()
        second = c2 != 0 and not (self.masked and info.output_rectified)
        # with a ReLU right after the layer, its gradient already zeroes every output with z <= 0
        mask = self.masked and not info.output_rectified
        nonnegative = info.input_nonnegative
        prepared = layer.cached((second, nonnegative), lambda: self._prepare(layer, second, nonnegative))
        count = 2 if second else 1

        def scales(z: Tensor, denominators: list[Tensor]) -> Tensor:
            parts = []
            for coeff, sign, d in zip((c1, c2), (1, -1), denominators):
                if nonnegative and sign > 0:
                    # d already holds + eps (in the bias); see _prepare for why clamping is exact
                    scale = torch.div(z, d if self.first_branch_nonnegative else d.clamp_(min=self.stabilizer), out=d)
                else:
                    scale = _ratio_(z, d, self.stabilizer)
                if mask:
                    scale.mul_((z > 0) if sign > 0 else (z < 0))
                parts.append(scale if coeff == 1 else scale.mul_(coeff))
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        def propagate_nonnegative(x: Tensor) -> tuple[Tensor, Backward]:
            z, *denominators = layer(x, prepared.forward, prepared.forward_bias).chunk(1 + count, dim=1)
            if info.fused_relu:
                # out of place: z is a channel slice of the stacked output, and the next layer (a pooling or a
                # convolution) would copy it to a contiguous tensor; the clamp writes that tensor in the same pass
                z = z.clamp(min=0)
            scale = scales(z, denominators)
            return z, lambda grad: layer.transpose(_repeat(grad, second) * scale, prepared.backward, x.shape)

        def propagate_signed(x: Tensor) -> tuple[Tensor, Backward]:
            z = layer(x)
            pos_a, pos_b = layer(x.clamp(min=0), prepared.forward, None).chunk(2, dim=1)
            neg_a, neg_b = layer(x.clamp(max=0), prepared.forward, None).chunk(2, dim=1)
            denominators = [_add_bias(pos_a + neg_b, prepared.bias_a)]
            if second:
                denominators.append(_add_bias(pos_b + neg_a, prepared.bias_b))
            if info.fused_relu:
                z = z.clamp_(min=0)
            scale = scales(z, denominators)

            def backward(grad: Tensor) -> Tensor:
                g = _repeat(grad, second) * scale
                return (x > 0) * layer.transpose(g, prepared.backward, x.shape) + (x < 0) * layer.transpose(
                    g, prepared.swapped, x.shape
                )

            return z, backward

        return propagation(x, propagate_nonnegative if nonnegative else propagate_signed)

    #: with x >= 0 the branch-1 denominator ``A x + bias_A`` is >= 0 (true for z+ / alpha-beta: A = w+, bias_A = b+)
    first_branch_nonnegative: bool = True

    def _prepare(self, layer: Affine, second: bool, nonnegative: bool) -> TwoBranchWeights:
        """The stacked weights of this rule on ``layer`` (a pure function of its parameters, cached by the plan)."""
        a, b, bias_a, bias_b = self.weights(layer, second)
        if not nonnegative:
            return TwoBranchWeights(
                forward=torch.cat([a, b]),
                forward_bias=None,
                bias_a=bias_a,
                bias_b=bias_b,
                backward=torch.cat([a, b]) if second else a,
                swapped=torch.cat([b, a]) if second else b,
            )
        # x >= 0 (x- = 0): z, d1 = A x + bias_A (+ eps) and d2 = B x + bias_B from ONE call with stacked weights.
        # Branch 1's stabilizer is + eps wherever it counts: d1 >= 0 for z+ / alpha-beta, and d1 >= z > 0 for gamma
        # on outputs z > 0 (the others are masked or zeroed by the ReLU; clamping them to eps keeps them finite).
        zero = layer.weight.new_zeros(layer.weight.shape[0])
        optional_biases = [layer.bias, bias_a] + ([bias_b] if second else [])
        biases = [zero if t is None else t for t in optional_biases]
        biases[1] = biases[1] + self.stabilizer
        spatial = next((t.shape for t in biases if t.dim() > 1), None)  # a bias map (BN folded into a padded conv)
        if spatial is not None:
            biases = [t if t.dim() > 1 else t.view(-1, *[1] * (len(spatial) - 1)).expand(spatial) for t in biases]
        stacked_weight = torch.cat([layer.weight, a] + ([b] if second else []))
        return TwoBranchWeights(
            forward=stacked_weight,
            forward_bias=torch.cat(biases),
            bias_a=None,
            bias_b=None,
            backward=torch.cat([a, b]) if second else a,
            swapped=None,
        )


def _repeat(grad: Tensor, twice: bool) -> Tensor:
    return torch.cat([grad, grad], dim=1) if twice else grad


def _add_bias(t: Tensor, bias: Tensor | None) -> Tensor:
    if bias is None:
        return t
    return t + (bias if bias.dim() > 1 else bias.view(-1, *[1] * (t.dim() - 2)))  # a map: (C, *spatial)


class AlphaBeta(_TwoBranch):
    """LRP-alpha-beta: ``alpha`` times the positive contributions minus ``beta`` times the negative ones.

    Parameters
    ----------
    alpha : float
        Weight of the positive contributions.
    beta : float
        Weight of the negative contributions (``alpha - beta = 1``).
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6):
        if alpha < 0 or beta < 0 or abs(alpha - beta - 1) > 1e-12:
            raise ValueError(f"alpha-beta needs alpha, beta >= 0 and alpha - beta = 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta, self.stabilizer = float(alpha), float(beta), float(stabilizer)

    def coefficients(self) -> tuple[float, float]:
        return self.alpha, -self.beta

    def weights(self, layer: Affine, second: bool):
        w = layer.weight
        return w.clamp(min=0), w.clamp(max=0), _positive(layer.bias), _negative(layer.bias) if second else None


class ZPlus(AlphaBeta):
    """LRP-z+ (alpha=1, beta=0): only positive contributions ``x+ w+ + x- w-`` (and ``b+``) count.

    Parameters
    ----------
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer!r})"


class Gamma(_TwoBranch):
    """Generalised LRP-gamma (zennit): ``w + gamma w+`` for outputs ``z > 0``, ``w + gamma w-`` for ``z < 0``.

    Parameters
    ----------
    gamma : float
        Extra weight of the parts of the sign of the output (>= 0; 0 is LRP-0).
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    masked = True
    first_branch_nonnegative = False

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6):
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma, self.stabilizer = float(gamma), float(stabilizer)

    def coefficients(self) -> tuple[float, float]:
        return 1.0, 1.0

    def weights(self, layer: Affine, second: bool):
        w, bias, g = layer.weight, layer.bias, self.gamma
        pos = w + g * w.clamp(min=0)
        neg = w + g * w.clamp(max=0)
        bias_pos = None if bias is None else bias + g * bias.clamp(min=0)
        bias_neg = None if bias is None or not second else bias + g * bias.clamp(max=0)
        return pos, neg, bias_pos, bias_neg


# ------------------------------------------------------------------------------------------- input-space rules
def _expand_bound(bound: float | Tensor, x: Tensor) -> Tensor:
    """A bound as one (1, C, H, W) image (broadcast over the batch), on ``x``'s device and dtype."""
    if not isinstance(bound, Tensor):  # filled on the device: copying a host number there would wait for the device
        return torch.full((1,) * x.dim(), float(bound), dtype=x.dtype, device=x.device).expand((1, *x.shape[1:]))
    bound = bound.to(dtype=x.dtype, device=x.device)
    return bound.expand((bound.shape[0] if bound.dim() == x.dim() else 1, *x.shape[1:]))


class _InputSpace(Rule[Affine]):
    """Base of rules whose backward returns the input relevance ``sum_k m_k W_k^T (R / d)`` directly.

    Subclasses give :meth:`constants` (what depends on the weights and the image shape only, cached) and
    :meth:`terms` (the denominator and the (input multiplier, index of the weight block) pairs).
    """

    input_space = True
    stabilizer: float  # set by each subclass's __init__

    @abc.abstractmethod
    def constants(self, layer: Affine, x: Tensor) -> InputSpaceConstants:
        """What depends on the weights and the image shape only (computed on one image, cached by the plan)."""

    @abc.abstractmethod
    def terms(self, z: Tensor, x: Tensor, constants: InputSpaceConstants) -> tuple[Tensor, list[Tensor | float]]:
        """The denominator ``d`` (a temporary) and the input multiplier of each weight block."""

    def __call__(self, layer: Affine, x: Tensor, info: LayerInfo) -> Tensor:
        tag = (tuple(x.shape[1:]), x.dtype, x.device)
        constants = layer.cached(tag, lambda: self.constants(layer, x.detach()))

        def propagate(x: Tensor) -> tuple[Tensor, Backward]:
            z = layer(x)
            denominator, multipliers = self.terms(z, x, constants)
            if info.fused_relu:
                z = z.clamp_(min=0)
            scale = _ratio_(z, denominator, self.stabilizer)
            return z, lambda grad: _input_relevance(layer, grad * scale, constants.weights, multipliers, x.shape)

        return propagation(x, propagate)


def _input_relevance(
    layer: Affine, grad: Tensor, weights: Tensor, multipliers: list[Tensor | float], input_shape: torch.Size
) -> Tensor:
    """``sum_k m_k * W_k^T grad`` in one call (the weight blocks W_k stacked along the input channels)."""
    if grad.shape[1] != weights.shape[0]:  # one-output-channel weights (Flat): sum the output channels first
        grad = grad.sum(1, keepdim=True)
    back = layer.transpose(grad, weights, (input_shape[0], weights.shape[1], *input_shape[2:]))
    chunks = back.split(input_shape[1], dim=1)
    return sum(multiplier * chunk for multiplier, chunk in zip(multipliers, chunks))


class Flat(_InputSpace):
    """LRP-flat: all weights 1, input 1, no bias: relevance spread uniformly over each receptive field.

    Parameters
    ----------
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def constants(self, layer: Affine, x: Tensor) -> InputSpaceConstants:
        # d is the same for every image and output channel: one image, one output channel (every channel when the
        # convolution is grouped: one output channel per group would not be a valid grouped weight)
        ones = layer.weight.new_ones((1 if layer.groups == 1 else layer.weight.shape[0], *layer.weight.shape[1:]))
        return InputSpaceConstants(ones, layer(torch.ones_like(x[:1]), ones, None))

    def terms(self, z: Tensor, x: Tensor, constants: InputSpaceConstants):
        return constants.reference.clone(), [1.0]


class WSquare(_InputSpace):
    """LRP-w^2: squared weights (and squared bias), input 1.

    Parameters
    ----------
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def constants(self, layer: Affine, x: Tensor) -> InputSpaceConstants:
        squared = layer.weight**2
        bias = None if layer.bias is None else layer.bias**2
        return InputSpaceConstants(squared, layer(torch.ones_like(x[:1]), squared, bias))

    def terms(self, z: Tensor, x: Tensor, constants: InputSpaceConstants):
        return constants.reference.clone(), [1.0]


class ZBox(_InputSpace):
    """LRP-z^B for inputs bounded by ``low`` and ``high``: ``(x w - l w+ - h w-) / sum(...)``.

    Parameters
    ----------
    low : float or torch.Tensor
        Lowest input value (a number or an image broadcast over the batch).
    high : float or torch.Tensor
        Highest input value.
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(
        self, low: float | Tensor = INPUT_BOUNDS[0], high: float | Tensor = INPUT_BOUNDS[1], stabilizer: float = 1e-6
    ):
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def constants(self, layer: Affine, x: Tensor):
        w = layer.weight
        low, high = _expand_bound(self.low, x), _expand_bound(self.high, x)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        # zennit keeps the bias in all three terms (b - b+ - b- = 0 up to rounding); so do we, to match it
        offset = layer(low, w_pos, _positive(layer.bias)) + layer(high, w_neg, _negative(layer.bias))
        return InputSpaceConstants(torch.cat([w, w_pos, w_neg], dim=1), offset, -low, -high)

    def terms(self, z: Tensor, x: Tensor, constants: InputSpaceConstants):
        return z - constants.reference, [x, constants.minus_low, constants.minus_high]


# ------------------------------------------------------------------------------------------------ other layers
class Gradient(Rule[nn.Module]):
    """The layer's own gradient: ReLU (relevance passes), max pooling (routed to the maximum), reshapes, dropout."""

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        return functional(layer)(x)


class Pass(Rule[nn.Module]):
    """Element-wise layers: the relevance passes through unchanged (gradient ``f(x) / x``).

    Used on activations, and on BatchNorms with ``batchnorm="pass"``: the identity for relevance, what the grid
    search code of Pahde et al. (2023) does (zennit's ``Pass`` rule on BatchNorm layers).
    """

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        if isinstance(layer, nn.ReLU):
            return F.relu(x)  # for ReLU the pass-through is the gradient itself
        with torch.no_grad():
            y = functional(layer)(x)
            scale = torch.where(x != 0, y / torch.where(x != 0, x, 1.0), 0.0)
        return reroute(y, x, scale)


class RelevanceGradient(Rule[nn.Module]):
    """A BatchNorm without a rule, as zennit treats it: its Jacobian applied to the relevance, ``R_in = s R_out``.

    zennit propagates the relevance itself backwards, so a layer without a rule multiplies the relevance by its
    Jacobian; for a BatchNorm in eval mode, ``y = s x + t`` with ``s = gamma / sqrt(var + eps)``, that is
    ``R_in = s R_out`` (the shift ``t`` takes nothing and gives nothing back: relevance is not conserved). In attrlab's
    activation x gradient form the input gradient is ``s y g / x``; an input that is exactly 0 gets no relevance (zennit
    would give it ``s R_out``, a case of probability 0 for a BatchNorm after a linear layer with a bias or real data).
    Pahde et al. (2023) call this the uncanonized "original" baseline (their ``explainer_zennit_default``).
    """

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        if not isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            raise TypeError(f"RelevanceGradient applies to BatchNorm layers, not {type(layer).__name__}")
        with torch.no_grad():
            scale, shift = batchnorm_affine(layer)
            scale, shift = scale.view(-1, *[1] * (x.dim() - 2)), shift.view(-1, *[1] * (x.dim() - 2))
            y = x * scale + shift
            ratio = torch.where(x != 0, y * scale / torch.where(x != 0, x, 1.0), 0.0)
        return reroute(y, x, ratio)


class Norm(Rule[nn.Module]):
    """Average pooling: relevance shared in proportion to the inputs, ``R_in = x T(R / stabilize(avg))``.

    Parameters
    ----------
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        y = functional(layer)(x)
        with torch.no_grad():
            scale = y / stabilize(y, self.stabilizer)
        return y.detach() + (y - y.detach()) * scale


class MaxAsAvg(Rule[Any]):
    """Max pooling treated as average pooling in the backward pass (seed 000's code): value max, relevance shared in
    proportion to the inputs of each window.

    Parameters
    ----------
    stabilizer : float
        Added to each denominator with its sign (``sign(0) = +1``).
    """

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, layer: Any, x: Tensor, info: LayerInfo) -> Tensor:
        if any(d != 1 for d in torch.nn.modules.utils._ntuple(x.dim() - 2)(layer.dilation)):
            raise ValueError(f"MaxAsAvg needs an undilated max pooling, got dilation={layer.dilation}")
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
        average = per_cell(
            layer,
            lambda v: pool(v, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, True),
        )(x)
        with torch.no_grad():
            y = functional(layer)(x)
            scale = y / stabilize(average, self.stabilizer)
        return reroute(y, average, scale)


__all__ = [
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "InputSpaceConstants",
    "MaxAsAvg",
    "Norm",
    "Pass",
    "RelevanceGradient",
    "Rule",
    "TwoBranchWeights",
    "WSquare",
    "ZBox",
    "ZPlus",
    "stabilize",
]
