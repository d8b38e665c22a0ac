"""LRP rules: how one layer passes relevance down, as small zennit-style classes usable in a single autograd pass.

Every rule computes a layer's true output and gives it the gradient of the rule, so that one backward pass of the
whole network yields the LRP relevances (relevance at a layer = activation x gradient). For a layer ``z = W x + b``
whose rule uses modified weights ``W'`` and a denominator ``d``, the backward pass maps the gradient ``g`` of the
output to ``W'^T (g z / stabilize(d))``: with ``R = z g`` that is the rule ``R_in = x W'^T (R / d)``. This is the
``z_mod * stop_grad(z / z_mod)`` construction, written as a tiny autograd function so that the true output and all
denominators come from ONE convolution with the stacked weights ``[W; W']`` (no graph is recorded for it) and the
backward pass needs one transposed convolution with ``W'`` only, and no module hooks. A ReLU right after the layer
is folded in (output ``relu(z)``, scale ``relu(z) / d``). The stacked weights are cached per layer while its
parameters keep their values (:meth:`Rule.cached`).

Formulas and conventions (stabilizer ``d + eps * sign(d)`` with ``sign(0) = +1``, which terms carry the bias,
generalised gamma) follow zennit 0.5.1, so the results agree with it to float precision.

*Input-space* rules (:class:`Flat`, :class:`WSquare`, :class:`ZBox`) do not have the form ``x * gradient``: their
backward returns the input relevance itself, so they only fit the layer that receives the model's input.

Rules get a :class:`LayerInfo` with what the walk knows about the layer's surroundings; two facts allow exact
shortcuts: a non-negative input (after a ReLU all ``x-`` terms vanish) and a ReLU right after the layer (outputs with
``z <= 0`` receive no relevance, so the gamma rule's negative branch is never used).
"""

from __future__ import annotations

import abc
import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..canonize import ThreshReLU
from ..cells import Cellwise
from ..data import INPUT_BOUNDS

Backward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LayerInfo:
    """What the engine knows about a layer when its rule runs."""

    name: str
    input_nonnegative: bool = False  # every input value is >= 0 (the layer follows a ReLU, possibly via pooling)
    output_rectified: bool = False  # a ReLU takes this layer's output directly
    model_input: bool = False  # the layer receives the model input (possibly through reshapes only)
    # the ReLU after this layer is applied here: output relu(z), and relu(z) / d as the scale folds the ReLU's
    # gradient mask into the rule (one elementwise pass less each way; relevance at both outputs is the same)
    fused_relu: bool = False


class Affine:
    """A Conv2d or Linear layer as the rules see it: (possibly canonized) weight and bias and functional calls."""

    def __init__(self, module: nn.Module, weight: Tensor | None = None, bias: Tensor | None = None):
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TypeError(f"Affine wraps Conv2d or Linear layers, not {type(module).__name__}")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"LRP supports zero-padded convolutions only, got padding_mode={module.padding_mode!r}")
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"LRP supports convolutions with groups=1 only, got groups={module.groups}")
        self.module = module
        self.owns_parameters = weight is None  # False for canonized layers (folded BatchNorm): nothing to cache
        self.weight = (module.weight if weight is None else weight).detach()
        if weight is None:
            bias = module.bias
        self.bias = None if bias is None else bias.detach()
        self.padding = _numeric_padding(module) if isinstance(module, nn.Conv2d) else None
        #: a convolution of each grid cell alone (DiFull): the rule's convolutions run on the cells as a batch
        self.cellwise = module if isinstance(module, Cellwise) else None

    def __call__(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None | str = "same") -> Tensor:
        """The layer applied to ``x`` with ``weight`` (default: its own) and ``bias`` (default: its own; None: none)."""
        weight = self.weight if weight is None else weight
        bias = self.bias if isinstance(bias, str) else bias
        m = self.module
        if self.cellwise is not None:
            cells = self.cellwise
            return cells.merge(F.conv2d(cells.split(x), weight, bias, m.stride, self.padding, m.dilation))
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, weight, bias, m.stride, self.padding, m.dilation)
        return F.linear(x, weight, bias)

    def transpose(self, grad: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
        """``weight^T grad``: the gradient of ``layer(x, weight)`` w.r.t. ``x`` (weights may be stacked along dim 0,
        with ``grad`` stacked along its channels, to sum several terms in one call)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            shape = (input_shape[0], weight.shape[1], *input_shape[2:])
            cells = self.cellwise
            if cells is not None:
                grad, shape = cells.split(grad), cells.cell_shape(shape)
            # torch.nn.grad.conv2d_input passes an expanded dummy input that convolution_backward then copies in
            # full; an uninitialised dummy in the gradient's memory layout avoids that copy (only its shape is read)
            channels_last = grad.is_contiguous(memory_format=torch.channels_last)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            dummy = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
            result = torch.ops.aten.convolution_backward(
                grad, dummy, weight, None, m.stride, self.padding, m.dilation, False, [0, 0], 1, [True, False, False]
            )[0]
            return result if cells is None else cells.merge(result)
        return grad @ weight


def _numeric_padding(m: nn.Conv2d) -> tuple[int, int]:
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        if any(s != 1 for s in m.stride):
            raise ValueError("padding='same' needs stride 1")
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        if any(total % 2 for total in totals):
            raise ValueError(f"padding='same' with an even kernel {m.kernel_size} is not supported by attrlab's LRP")
        return tuple(total // 2 for total in totals)
    return tuple(m.padding)


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (zennit's convention): never zero for ``epsilon > 0``."""
    return z + torch.where(z >= 0, epsilon, -epsilon)


def _ratio_(z: Tensor, denominator: Tensor, epsilon: float) -> Tensor:
    """``z / stabilize(denominator, epsilon)``, overwriting ``denominator`` (a temporary) to save memory traffic."""
    denominator.add_(torch.where(denominator >= 0, epsilon, -epsilon))
    if denominator.shape == z.shape:
        return torch.div(z, denominator, out=denominator)
    return z / denominator


def reroute(value: Tensor, differentiable: Tensor, scale: Tensor) -> Tensor:
    """``value`` exactly, with the gradient of ``differentiable * scale`` (``scale`` and ``value`` are constants)."""
    return value + (differentiable - differentiable.detach()) * scale


_reuse = threading.local()


@contextlib.contextmanager
def reusable_backward():
    """Keep the backward maps of the propagations recorded inside for several backward passes (one per target).

    Read when a propagation is recorded (its forward, in the caller's thread), not when the autograd engine runs it.
    """
    previous = getattr(_reuse, "active", False)
    _reuse.active = True
    try:
        yield
    finally:
        _reuse.active = previous


class _Propagation(torch.autograd.Function):
    """Forward: ``propagate(x) -> (output, backward)`` without recording a graph; backward: ``backward(grad)``."""

    @staticmethod
    def forward(ctx, x: Tensor, propagate: Callable[[Tensor], tuple[Tensor, Backward]]) -> Tensor:
        output, ctx.backward_map = propagate(x)
        ctx.reusable = getattr(_reuse, "active", False)
        return output

    @staticmethod
    def backward(ctx, grad: Tensor):
        backward = ctx.backward_map
        if not ctx.reusable:
            ctx.backward_map = None  # free the saved tensors at once
        return backward(grad), None


def propagation(x: Tensor, propagate: Callable[[Tensor], tuple[Tensor, Backward]]) -> Tensor:
    """The output of ``propagate(x)`` carrying the backward map it returns."""
    return _Propagation.apply(x, propagate)


def _positive(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(min=0)


def _negative(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.clamp(max=0)


class Rule(abc.ABC):
    """Base class: ``rule(layer, x, info)`` returns the layer output carrying the rule's gradient."""

    #: True for rules whose backward returns the input relevance itself (only valid on the model input)
    input_space: bool = False

    @abc.abstractmethod
    def __call__(self, layer: nn.Module | Affine, x: Tensor, info: LayerInfo) -> Tensor:
        """The layer's true output, carrying this rule's gradient."""

    def cached(self, layer: Affine, tag: tuple, compute: Callable[[], Any]) -> Any:
        """``compute()`` (modified weights and the like) for ``layer``, reused while its parameters are unchanged.

        Why: preparing the modified weights takes a handful of small tensor ops per layer, and on a busy CPU each op
        carries a large fixed cost (thread wake-ups), measured at 20-30% of an LRP call. Validity is checked by value
        against a snapshot of the parameters (``torch.equal``, one pass over the weights): version counters alone
        would miss edits through ``param.data``. Off the CPU, where that comparison would stall the device queue
        and small ops are cheap, nothing is cached.
        """
        module = layer.module
        if not layer.owns_parameters or layer.weight.device.type != "cpu":
            return compute()
        params = [p for p in (module.weight, module.bias) if p is not None]
        key = (tag, tuple((p.shape, p.dtype) for p in params))
        cache = self.__dict__.setdefault("_cache", {})
        entry = cache.get(id(module))
        if (
            entry is not None
            and entry[0] is module
            and entry[1] == key
            and all(torch.equal(snapshot, p.detach()) for snapshot, p in zip(entry[2], params))
        ):
            return entry[3]
        value = compute()
        snapshots = [p.detach().clone() for p in params]
        cache[id(module)] = (module, key, snapshots, value)  # the module reference keeps id(module) from being reused
        return value

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({settings})"


# ----------------------------------------------------------------------------------------------------- linear layers
class Epsilon(Rule):
    """LRP-epsilon: ``R_in = x W^T (R / (z + eps sign z))``; ``epsilon=0`` is LRP-0 (units with ``z = 0`` get none)."""

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


class _TwoBranch(Rule):
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
        prepared = self.cached(layer, (second, nonnegative), lambda: self._prepare(layer, second, nonnegative))
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
            stacked_weight, stacked_bias, back = prepared
            z, *denominators = layer(x, stacked_weight, stacked_bias).chunk(1 + count, dim=1)
            if info.fused_relu:
                z = z.clamp_(min=0)
            scale = scales(z, denominators)
            return z, lambda grad: layer.transpose(_repeat(grad, second) * scale, back, x.shape)

        def propagate_signed(x: Tensor) -> tuple[Tensor, Backward]:
            both, bias_a, bias_b, forward_weights, swapped_weights = prepared
            z = layer(x)
            pos_a, pos_b = layer(x.clamp(min=0), both, None).chunk(2, dim=1)
            neg_a, neg_b = layer(x.clamp(max=0), both, None).chunk(2, dim=1)
            denominators = [_add_bias(pos_a + neg_b, bias_a)] + ([_add_bias(pos_b + neg_a, bias_b)] if second else [])
            if info.fused_relu:
                z = z.clamp_(min=0)
            scale = scales(z, denominators)

            def backward(grad: Tensor) -> Tensor:
                g = _repeat(grad, second) * scale
                return (x > 0) * layer.transpose(g, forward_weights, x.shape) + (x < 0) * layer.transpose(
                    g, swapped_weights, x.shape)

            return z, backward

        return propagation(x, propagate_nonnegative if nonnegative else propagate_signed)

    #: with x >= 0 the branch-1 denominator ``A x + bias_A`` is >= 0 (true for z+ / alpha-beta: A = w+, bias_A = b+)
    first_branch_nonnegative: bool = True

    def _prepare(self, layer: Affine, second: bool, nonnegative: bool) -> tuple:
        a, b, bias_a, bias_b = self.weights(layer, second)
        if not nonnegative:
            return torch.cat([a, b]), bias_a, bias_b, torch.cat([a, b]) if second else a, \
                torch.cat([b, a]) if second else b
        # x >= 0 (x- = 0): z, d1 = A x + bias_A (+ eps) and d2 = B x + bias_B from ONE call with stacked weights.
        # Branch 1's stabilizer is + eps wherever it counts: d1 >= 0 for z+ / alpha-beta, and d1 >= z > 0 for gamma
        # on outputs z > 0 (the others are masked or zeroed by the ReLU; clamping them to eps keeps them finite).
        zero = layer.weight.new_zeros(layer.weight.shape[0])
        biases = [layer.bias, bias_a] + ([bias_b] if second else [])
        biases = [zero if t is None else t for t in biases]
        biases[1] = biases[1] + self.stabilizer
        stacked_weight = torch.cat([layer.weight, a] + ([b] if second else []))
        return stacked_weight, torch.cat(biases), torch.cat([a, b]) if second else a


def _repeat(grad: Tensor, twice: bool) -> Tensor:
    return torch.cat([grad, grad], dim=1) if twice else grad


def _add_bias(t: Tensor, bias: Tensor | None) -> Tensor:
    return t if bias is None else t + bias.view(-1, *[1] * (t.dim() - 2))


class AlphaBeta(_TwoBranch):
    """LRP-alpha-beta: ``alpha`` times the positive contributions minus ``beta`` times the negative ones."""

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
    """LRP-z+ (alpha=1, beta=0): only positive contributions ``x+ w+ + x- w-`` (and ``b+``) count."""

    def __init__(self, stabilizer: float = 1e-6):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer)

    def __repr__(self) -> str:
        return f"ZPlus(stabilizer={self.stabilizer!r})"


class Gamma(_TwoBranch):
    """Generalised LRP-gamma (zennit): ``w + gamma w+`` for outputs ``z > 0``, ``w + gamma w-`` for ``z < 0``."""

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


class _InputSpace(Rule):
    """Base of rules whose backward returns the input relevance ``sum_k m_k W_k^T (R / d)`` directly.

    Subclasses give :meth:`constants` (what depends on the weights and the image shape only, cached) and
    :meth:`terms` (the denominator and the (input multiplier, index of the weight block) pairs).
    """

    input_space = True

    @abc.abstractmethod
    def constants(self, layer: Affine, x: Tensor) -> tuple:
        """(stacked weight blocks along the input channels, anything else ``terms`` needs); computed on one image."""

    @abc.abstractmethod
    def terms(self, z: Tensor, x: Tensor, constants: tuple) -> tuple[Tensor, list[Tensor | float]]:
        """The denominator ``d`` (a temporary) and the input multiplier of each weight block."""

    def __call__(self, layer: Affine, x: Tensor, info: LayerInfo) -> Tensor:
        tag = (tuple(x.shape[1:]), x.dtype, x.device)
        constants = self.cached(layer, tag, lambda: self.constants(layer, x.detach()))

        def propagate(x: Tensor) -> tuple[Tensor, Backward]:
            z = layer(x)
            denominator, multipliers = self.terms(z, x, constants)
            if info.fused_relu:
                z = z.clamp_(min=0)
            scale = _ratio_(z, denominator, self.stabilizer)
            return z, lambda grad: _input_relevance(layer, grad * scale, constants[0], multipliers, x.shape)

        return propagation(x, propagate)


def _input_relevance(layer: Affine, grad: Tensor, weights: Tensor, multipliers: list[Tensor | float],
                     input_shape: torch.Size) -> Tensor:
    """``sum_k m_k * W_k^T grad`` in one call (the weight blocks W_k stacked along the input channels)."""
    if grad.shape[1] != weights.shape[0]:  # one-output-channel weights (Flat): sum the output channels first
        grad = grad.sum(1, keepdim=True)
    back = layer.transpose(grad, weights, (input_shape[0], weights.shape[1], *input_shape[2:]))
    chunks = back.split(input_shape[1], dim=1)
    return sum(multiplier * chunk for multiplier, chunk in zip(multipliers, chunks))


class Flat(_InputSpace):
    """LRP-flat: all weights 1, input 1, no bias: relevance spread uniformly over each receptive field."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def constants(self, layer: Affine, x: Tensor):
        # d is the same for every image and output channel: one image, one output channel
        ones = layer.weight.new_ones((1, *layer.weight.shape[1:]))
        return ones, layer(torch.ones_like(x[:1]), ones, None)

    def terms(self, z: Tensor, x: Tensor, constants: tuple):
        return constants[1].clone(), [1.0]


class WSquare(_InputSpace):
    """LRP-w^2: squared weights (and squared bias), input 1."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def constants(self, layer: Affine, x: Tensor):
        squared = layer.weight**2
        bias = None if layer.bias is None else layer.bias**2
        return squared, layer(torch.ones_like(x[:1]), squared, bias)

    def terms(self, z: Tensor, x: Tensor, constants: tuple):
        return constants[1].clone(), [1.0]


class ZBox(_InputSpace):
    """LRP-z^B for inputs bounded by ``low`` and ``high``: ``(x w - l w+ - h w-) / sum(...)``."""

    def __init__(self, low: float | Tensor = INPUT_BOUNDS[0], high: float | Tensor = INPUT_BOUNDS[1],
                 stabilizer: float = 1e-6):
        self.low, self.high, self.stabilizer = low, high, float(stabilizer)

    def constants(self, layer: Affine, x: Tensor):
        w = layer.weight
        low, high = _expand_bound(self.low, x), _expand_bound(self.high, x)
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)
        # zennit keeps the bias in all three terms (b - b+ - b- = 0 up to rounding); so do we, to match it
        offset = layer(low, w_pos, _positive(layer.bias)) + layer(high, w_neg, _negative(layer.bias))
        return torch.cat([w, w_pos, w_neg], dim=1), offset, -low, -high

    def terms(self, z: Tensor, x: Tensor, constants: tuple):
        _, offset, minus_low, minus_high = constants
        return z - offset, [x, minus_low, minus_high]


# ------------------------------------------------------------------------------------------------ other layers
class Gradient(Rule):
    """The layer's own gradient: ReLU (relevance passes), max pooling (routed to the maximum), reshapes, dropout."""

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        return functional(layer)(x)


class Pass(Rule):
    """Element-wise activations: the relevance passes through unchanged (gradient ``f(x) / x``)."""

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        if isinstance(layer, nn.ReLU):
            return F.relu(x)  # for ReLU the pass-through is the gradient itself
        with torch.no_grad():
            y = functional(layer)(x)
            scale = torch.where(x != 0, y / torch.where(x != 0, x, 1.0), 0.0)
        return reroute(y, x, scale)


class Norm(Rule):
    """Average pooling: relevance shared in proportion to the inputs, ``R_in = x T(R / stabilize(avg))``."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, layer: nn.Module, x: Tensor, info: LayerInfo) -> Tensor:
        y = functional(layer)(x)
        with torch.no_grad():
            scale = y / stabilize(y, self.stabilizer)
        return y.detach() + (y - y.detach()) * scale


class MaxAsAvg(Rule):
    """Max pooling treated as average pooling in the backward pass (seed 000's code): value max, relevance shared in
    proportion to the inputs of each window."""

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, layer: nn.MaxPool2d, x: Tensor, info: LayerInfo) -> Tensor:
        if layer.dilation not in (1, (1, 1)):
            raise ValueError(f"MaxAsAvg needs an undilated max pooling, got dilation={layer.dilation}")
        average = per_cell(layer, lambda v: F.avg_pool2d(v, layer.kernel_size, layer.stride, layer.padding,
                                                          layer.ceil_mode, count_include_pad=True))(x)
        with torch.no_grad():
            y = functional(layer)(x)
            scale = y / stabilize(average, self.stabilizer)
        return reroute(y, average, scale)


def per_cell(layer: nn.Module, function: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``function`` as ``layer`` applies it: on each grid cell alone for a :class:`~attrlab.cells.Cellwise` layer."""
    if isinstance(layer, Cellwise):
        return lambda x: layer.merge(function(layer.split(x)))
    return function


def functional(layer: nn.Module) -> Callable[[Tensor], Tensor]:
    """The eval-mode forward of a parameter-free layer as a functional call (module hooks never run)."""
    if isinstance(layer, nn.ReLU):
        return F.relu
    if isinstance(layer, nn.MaxPool2d):
        return per_cell(layer, lambda x: F.max_pool2d(x, layer.kernel_size, layer.stride, layer.padding,
                                                      layer.dilation, ceil_mode=layer.ceil_mode))
    if isinstance(layer, nn.AvgPool2d):
        return lambda x: F.avg_pool2d(x, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode,
                                      layer.count_include_pad, layer.divisor_override)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return lambda x: F.adaptive_avg_pool2d(x, layer.output_size)
    if isinstance(layer, nn.Flatten):
        return lambda x: x.flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return lambda x: x  # dropout is the identity in eval semantics
    if isinstance(layer, ThreshReLU):
        return layer.forward  # attrlab's own module (canonization), called without hooks
    raise TypeError(f"no functional form for layer type {type(layer).__name__}")


__all__ = [
    "Affine",
    "AlphaBeta",
    "Epsilon",
    "Flat",
    "Gamma",
    "Gradient",
    "LayerInfo",
    "MaxAsAvg",
    "Norm",
    "Pass",
    "Rule",
    "WSquare",
    "ZBox",
    "ZPlus",
    "propagation",
    "reroute",
    "stabilize",
]
