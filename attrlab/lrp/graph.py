"""The traced LRP engine: any model ``torch.fx`` can trace (residual, dense, gated), run node by node with node rules.

Why our own and not zennit's canonizers: zennit needs a hand-written canonizer per architecture that rewrites the
model's ``forward`` so that each residual addition becomes a module it can hook; a traced graph sees every addition,
concatenation and product as a node, so one engine covers torchvision's families, hook-free and batched, with the
design of :mod:`attrlab.lrp.engine`: one rule-modified forward pass over the graph, one backward pass per target
column, relevance = activation x gradient. The model is traced symbolically (its ``forward`` runs on proxies; no hook
runs and no parameter or flag changes) and never called on data: leaf modules are evaluated through
:class:`~attrlab.lrp.layers.Affine` and :func:`~attrlab.lrp.layers.functional`, function and method nodes through the
node rules below.

Node rules (each maps a node's arguments to its output carrying the rule's gradient):

* Convolution (1d/2d/3d, any stride, dilation, zero padding, groups) / Linear modules: the composite's rule (first
  layer by graph order, as zennit's first layer by module order).
* BatchNorm (1d/2d/3d): folded into its linear neighbour (``batchnorm="canonize"``: Linear -> BN, BN -> Linear and
  BN -> ReLU -> [adaptive average pooling / flatten] -> Linear via the threshold ReLU, Pahde et al. 2023 eq. 3-8;
  before a padded convolution the folded bias is the spatial map of their appendix A, :class:`SpatialAffine`), or
  :class:`~.rules.RelevanceGradient` (``"gradient"``) / :class:`~.rules.Pass` (``"pass"``).
* Addition of two tensors (a residual connection): relevance split in proportion to the summands,
  ``R_a = a R / stabilize(a + b)`` (zennit's ``Norm`` rule on the ``Sum`` module its ResNet canonizer inserts).
* Concatenation, slicing, reshapes (view, reshape, flatten, permute, ...), dropout, identity, torchvision's
  stochastic depth (the identity in eval semantics): their gradient, which routes each slice of the relevance back
  to its input.
* Element-wise product with a gate (a tensor computed by a sigmoid, as in squeeze-excitation): "signal takes it all"
  (Pahde et al. 2023): the gate is a constant, ``R_signal = R``; a product of two signals raises an error.
* Average pooling (modules, ``F.adaptive_avg_pool2d``, ``mean`` over dimensions): zennit's ``Norm`` rule.
* ReLU (module, function or method): pass-through (its gradient); other activations (ReLU6, SiLU, Sigmoid, ...):
  pass-through, ``R_in = R_out`` (zennit's ``Pass``).

Anything else raises an error naming the node and its target and how to add a rule: :func:`register_node_rule`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..canonize import BatchNorm, ThreshReLU, batchnorm_affine, fold_into_next, fold_into_previous, spatial_bias
from .autograd import reroute
from .composites import Composite
from .layers import ACTIVATIONS, AVERAGE_POOLS, IDENTITIES, MAX_POOLS, Affine, Convolution, LayerInfo
from .rules import Pass, RelevanceGradient, Rule, stabilize

#: a node rule: ``rule(args, kwargs, stabilizer) -> output`` with the node's evaluated arguments
NodeRule = Callable[[tuple, dict, float], Tensor]

_BATCHNORM_RULES: dict[str, Rule] = {"gradient": RelevanceGradient(), "pass": Pass()}
_ACTIVATIONS = (*ACTIVATIONS, nn.GELU, nn.LeakyReLU, nn.ELU)
_GATES = (nn.Sigmoid, nn.Hardsigmoid)
_GATE_FUNCTIONS = (torch.sigmoid, F.sigmoid, F.hardsigmoid)
_RELUS: tuple = (F.relu, torch.relu, "relu")
# nodes through which a gate is still a gate / a non-negative tensor stays non-negative
_RESHAPE_TARGETS = {"view", "reshape", "flatten", "expand", "expand_as", "squeeze", "unsqueeze", torch.flatten}
_SIGN_KEEPING_MODULES = (*MAX_POOLS, *AVERAGE_POOLS, nn.Flatten, *IDENTITIES, nn.ReLU)
_INPUT_RESHAPES = (nn.Flatten, *IDENTITIES)
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


# ------------------------------------------------------------------------------------------------------ node rules
def gradient_rule(function: Callable) -> NodeRule:
    """A node rule that evaluates ``function`` as is: its gradient routes the relevance (reshapes, slices, cat)."""

    def rule(args: tuple, kwargs: dict, stabilizer: float) -> Tensor:
        return function(*args, **kwargs)

    return rule


def _method(name: str) -> Callable:
    return lambda x, *args, **kwargs: getattr(x, name)(*args, **kwargs)


def sum_rule(args: tuple, kwargs: dict, stabilizer: float) -> Tensor:
    """Addition: each summand gets relevance in proportion to its value, ``R_a = a R / stabilize(a + b)``.

    zennit's ``Norm`` rule on the ``Sum`` module of its ResNet canonizer (epsilon-stabilised with ``sign(0) = +1``);
    a constant summand (a number) takes no relevance.
    """
    total = args[0] + args[1]
    with torch.no_grad():
        scale = total / stabilize(total, stabilizer)
    return reroute(total.detach(), total, scale)


def norm_rule(function: Callable) -> NodeRule:
    """Average pooling as a function (``F.adaptive_avg_pool2d``, ``mean``): zennit's ``Norm`` rule,
    ``R_in = x T(R / stabilize(y))`` with ``T`` the pooling's gradient."""

    def rule(args: tuple, kwargs: dict, stabilizer: float) -> Tensor:
        y = function(*args, **kwargs)
        with torch.no_grad():
            scale = y / stabilize(y, stabilizer)
        return reroute(y.detach(), y, scale)

    return rule


def pass_rule(function: Callable) -> NodeRule:
    """An element-wise activation function: relevance passes through unchanged (gradient ``f(x) / x``)."""

    def rule(args: tuple, kwargs: dict, stabilizer: float) -> Tensor:
        x = args[0]
        with torch.no_grad():
            y = function(*args, **kwargs)
            scale = torch.where(x != 0, y / torch.where(x != 0, x, 1.0), 0.0)
        return reroute(y, x, scale)

    return rule


def _identity(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x  # dropout in eval semantics


#: node rules by the target of ``call_function`` nodes (functions) and ``call_method`` nodes (method names)
NODE_RULES: dict[Any, NodeRule] = {
    operator.add: sum_rule,
    torch.add: sum_rule,
    "add": sum_rule,
    operator.iadd: sum_rule,
    torch.cat: gradient_rule(torch.cat),
    torch.concat: gradient_rule(torch.concat),
    operator.getitem: gradient_rule(operator.getitem),
    getattr: gradient_rule(getattr),
    torch.flatten: gradient_rule(torch.flatten),
    F.relu: gradient_rule(F.relu),
    torch.relu: gradient_rule(torch.relu),
    F.dropout: gradient_rule(_identity),
    F.adaptive_avg_pool2d: norm_rule(F.adaptive_avg_pool2d),
    F.avg_pool2d: norm_rule(F.avg_pool2d),
    torch.mean: norm_rule(torch.mean),
    "mean": norm_rule(_method("mean")),
    F.silu: pass_rule(F.silu),
    F.relu6: pass_rule(F.relu6),
    F.hardswish: pass_rule(F.hardswish),
    torch.sigmoid: pass_rule(torch.sigmoid),
    F.sigmoid: pass_rule(torch.sigmoid),
    F.hardsigmoid: pass_rule(F.hardsigmoid),
}
try:  # torchvision's stochastic depth is an fx-wrapped function: a node of its own, the identity in eval semantics
    from torchvision.ops.stochastic_depth import stochastic_depth as _stochastic_depth
except ImportError:  # pragma: no cover - torchvision is optional
    pass
else:
    NODE_RULES[_stochastic_depth] = gradient_rule(_identity)
_dropouts: tuple[Callable, ...] = (F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)
_poolings: tuple[Callable, ...] = (F.adaptive_avg_pool1d, F.adaptive_avg_pool3d, F.avg_pool1d, F.avg_pool3d)
_activations: tuple[Callable, ...] = (F.gelu, F.leaky_relu, F.elu, torch.tanh, F.tanh)
NODE_RULES.update({function: gradient_rule(_identity) for function in _dropouts})
NODE_RULES.update({function: norm_rule(function) for function in _poolings})
NODE_RULES.update({function: pass_rule(function) for function in _activations})
for _name in (
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "squeeze",
    "unsqueeze",
    "size",
    "dim",
    "chunk",
    "split",
    "relu",
):
    NODE_RULES[_name] = gradient_rule(_method(_name))


def register_node_rule(target: Any, rule: NodeRule) -> None:
    """Give the traced LRP engine a rule for the nodes calling ``target``.

    Parameters
    ----------
    target : callable or str
        The function of ``call_function`` nodes (e.g. ``torch.tanh``) or the method name of ``call_method`` nodes
        (e.g. ``"tanh"``).
    rule : callable
        ``rule(args, kwargs, stabilizer) -> Tensor``: the node's output from its evaluated arguments, carrying the
        gradient that realises the rule (relevance = activation x gradient); :func:`gradient_rule`,
        :func:`pass_rule` and :func:`norm_rule` build the common ones.
    """
    if not callable(rule):
        raise TypeError(f"a node rule must be callable rule(args, kwargs, stabilizer), got {rule!r}")
    NODE_RULES[target] = rule


# ---------------------------------------------------------------------------------------------------------- tracing
def trace(model: nn.Module) -> fx.Graph:
    """The ``torch.fx`` graph of ``model`` (standard ``torch.nn`` layers as leaves), or an error saying why not."""
    try:
        return fx.Tracer().trace(model)
    except Exception as error:  # fx raises several types; the message says which construct failed
        raise TypeError(
            f"LRP could not trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
            "models with data-dependent control flow need an nn.Sequential form or a traceable forward"
        ) from error


def _module_name(node: fx.Node) -> str:
    return str(node.target)


@dataclass
class GraphStep:
    """One node of the traced plan: how to compute it from the environment of evaluated nodes."""

    node: str  #: the fx node name
    names: tuple[str, ...]  #: the layer names whose output this node is (module name, node name)
    compute: Callable[[dict[str, Any]], Any]
    affine: Affine | SpatialAffine | None = None
    rule: Rule | None = None
    info: LayerInfo | None = None
    source: str | None = None  #: a module step's input node

    def with_info(self, info: LayerInfo) -> GraphStep:
        """This convolution / Linear step with other surroundings (e.g. no ReLU after it, to inject at its output)."""
        if self.affine is None or self.rule is None or self.source is None:
            raise ValueError(f"node {self.node!r} is not a convolution / Linear step")
        compute = _apply(self.rule, self.affine, self.source, info)
        return GraphStep(self.node, self.names, compute, self.affine, self.rule, info, self.source)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[_module_name(node)], nn.ReLU)
    return node.op in ("call_function", "call_method") and node.target in _RELUS


def _is_gate(node: Any, modules: dict[str, nn.Module]) -> bool:
    """True for a tensor made by a sigmoid (possibly reshaped): the gate of a squeeze-excitation product."""
    while isinstance(node, fx.Node):
        if node.op == "call_module" and isinstance(modules[_module_name(node)], _GATES):
            return True
        if node.op in ("call_function", "call_method") and node.target in _GATE_FUNCTIONS + ("sigmoid",):
            return True
        if node.op in ("call_function", "call_method") and node.target in _RESHAPE_TARGETS:
            node = node.args[0]
            continue
        return False
    return False


def _evaluate(value: Any, env: dict[str, Any]) -> Any:
    return fx.node.map_arg(value, lambda n: env[n.name])


# the steps' compute functions (factories: each closes over its own values)
def _read(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda env: env[name]


def _arguments(value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda env: _evaluate(value, env)


def _constant(value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda env: value


def _apply(rule: Rule, layer: Any, source: str, info: LayerInfo) -> Callable[[dict[str, Any]], Any]:
    if isinstance(layer, SpatialAffine):
        return lambda env: rule(layer.at(env[source].shape), env[source], info)
    return lambda env: rule(layer, env[source], info)


def _call(rule: NodeRule, args: Any, kwargs: Any, stabilizer: float) -> Callable[[dict[str, Any]], Any]:
    return lambda env: rule(_evaluate(args, env), _evaluate(kwargs, env), stabilizer)


class _Canonizer:
    """Which BatchNorm nodes fold into which linear nodes (Pahde et al. 2023 eq. 3-8), found on the graph."""

    def __init__(self, graph: fx.Graph, modules: dict[str, nn.Module]):
        self.modules = modules
        self.previous: dict[str, list[tuple[Tensor, Tensor]]] = {}  # linear node -> BNs after it (in order)
        self.following: dict[str, list[tuple[Tensor, Tensor]]] = {}  # linear node -> BNs before it
        self.aliases: dict[str, str] = {}  # folded BN node -> the node whose value it takes
        self.thresholds: dict[str, tuple[Tensor, Tensor]] = {}  # ReLU node -> the BN it swaps with
        for node in graph.nodes:
            if node.op == "call_module" and isinstance(modules[_module_name(node)], BatchNorm):
                self._fold(node)

    def _linear(self, node: Any) -> nn.Module | None:
        if isinstance(node, fx.Node) and node.op == "call_module":
            module = self.modules[_module_name(node)]
            if isinstance(module, (*Convolution, nn.Linear)):
                return module
        return None

    def _fold(self, bn_node: fx.Node) -> None:
        scale, shift = batchnorm_affine(self.modules[_module_name(bn_node)])  # type: ignore[arg-type]
        source: Any = bn_node.args[0]
        users = list(bn_node.users)
        if self._linear(source) is not None and len(source.users) == 1:  # Linear -> BN
            self.previous.setdefault(source.name, []).append((scale, shift))
            self.aliases[bn_node.name] = source.name
            return
        if len(users) == 1 and self._linear(users[0]) is not None:  # BN -> Linear
            self.following.setdefault(users[0].name, []).append((scale, shift))
            self.aliases[bn_node.name] = source.name
            return
        if len(users) == 1 and _is_relu(users[0], self.modules):  # BN -> ReLU -> [pooling / flatten] -> Linear
            relu = users[0]
            targets = [self._through_pooling(user) for user in relu.users]
            if targets and all(target is not None for target in targets):
                linears = [target for target in targets if target is not None]
                for linear in linears:
                    self.following.setdefault(linear.name, []).append((scale, shift))
                self.thresholds[relu.name] = (scale, shift)
                self.aliases[bn_node.name] = source.name
                return
        raise ValueError(
            f"cannot canonize BatchNorm node {bn_node.name!r} ({bn_node.target}): it needs a convolution / Linear "
            "right before it (used only by it), right after it, or after a ReLU (and adaptive average pooling / "
            "flatten) that feeds only convolutions / Linear layers; use LRP(..., batchnorm='gradient') or batchnorm='pass' for this model"
        )

    def _through_pooling(self, node: fx.Node) -> fx.Node | None:
        """The linear node reached from ``node`` through adaptive average pooling and flattening only."""
        while True:
            if self._linear(node) is not None:
                return node
            module = self.modules.get(_module_name(node)) if node.op == "call_module" else None
            # (adaptive average pooling commutes with the per-channel BatchNorm: it has no padding)
            pooling = isinstance(module, (*_ADAPTIVE_POOLS, nn.Flatten)) or (
                node.op in ("call_function", "call_method")
                and node.target
                in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.flatten, "flatten")
                + ("view", "reshape")
            )
            if not pooling or len(node.users) != 1:
                return None
            node = next(iter(node.users))

    def affine(self, node: fx.Node, module: Any) -> Affine | SpatialAffine:
        """The linear node's layer with every BatchNorm around it folded (a :class:`SpatialAffine` when a BatchNorm
        before a padded convolution makes the bias a map)."""
        weight = module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        if node.name not in self.previous and node.name not in self.following:
            return Affine(module)
        padded = None  # (weight, bias, shift) of a BatchNorm folded into a padded convolution
        for scale, shift in self.following.get(node.name, []):
            original = weight, bias
            weight, bias, pending = fold_into_next(module, weight, bias, scale, shift, str(node.target), spatial=True)
            if pending is not None:
                padded = (*original, pending)
        if padded is not None:
            return SpatialAffine(module, weight, padded, self.previous.get(node.name, []))
        for scale, shift in self.previous.get(node.name, []):
            weight, bias = fold_into_previous(module, weight, bias, scale, shift)
        return Affine(module, weight, bias)


class SpatialAffine:
    """A padded convolution with a BatchNorm folded into it: an :class:`~attrlab.lrp.layers.Affine` per input size,
    whose bias is the map of :func:`attrlab.canonize.spatial_bias` (Pahde et al. 2023, appendix A), then any
    BatchNorm after the convolution folded into that map.

    Parameters
    ----------
    module : nn.Module
        The convolution.
    weight : torch.Tensor
        Its weight with the BatchNorm before it folded in.
    padded : tuple
        (its weight before that fold, its bias before that fold, the BatchNorm's shift).
    previous : list of (scale, shift)
        BatchNorms after the convolution, folded in order.
    """

    def __init__(self, module: nn.Module, weight: Tensor, padded: tuple, previous: list[tuple[Tensor, Tensor]]):
        self.module, self.weight, self.padded, self.previous = module, weight, padded, previous
        self._layers: dict[tuple, Affine] = {}

    def at(self, shape: torch.Size) -> Affine:
        """The layer for inputs of ``shape`` ``(N, C, *spatial)``: built once per ``(C, *spatial)``, dtype-independent."""
        key = tuple(shape[1:])
        if key not in self._layers:
            original, bias, shift = self.padded
            weight, bias = self.weight, spatial_bias(self.module, original, bias, shift, shape)
            for scale, after in self.previous:
                weight, bias = fold_into_previous(self.module, weight, bias, scale, after)
            self._layers[key] = Affine(self.module, weight, bias)
        return self._layers[key]


def graph_plan(model: nn.Module, composite: Composite, batchnorm: str) -> list[GraphStep]:
    """The traced plan of ``model``: one :class:`GraphStep` per graph node, in execution order.

    Parameters
    ----------
    model : nn.Module
        Any model ``torch.fx`` can trace.
    composite : Composite
        Assigns each Conv2d / Linear / pooling / activation module its rule.
    batchnorm : str
        ``"canonize"``, ``"gradient"`` or ``"pass"`` (see :class:`~attrlab.lrp.engine.LRP`).

    Returns
    -------
    list of GraphStep
    """
    graph = trace(model)
    modules = dict(model.named_modules())
    canonizer = _Canonizer(graph, modules) if batchnorm == "canonize" else None
    stabilizer = composite.stabilizer
    nodes = list(graph.nodes)
    # the composite's rules for the module nodes, in graph order (its first layer: the first match in that order)
    module_nodes = [
        node
        for node in nodes
        if node.op == "call_module" and not (canonizer is not None and node.name in canonizer.aliases)
    ]
    layers = []
    for node in module_nodes:
        module = modules[_module_name(node)]
        if canonizer is not None and node.name in canonizer.thresholds:
            module = ThreshReLU(*canonizer.thresholds[node.name])
        layers.append((_module_name(node), module))
    fallback: list[tuple[type | tuple[type, ...], Rule]] = [(_ACTIVATIONS, Pass())]
    if batchnorm != "canonize":
        fallback.append((BatchNorm, _BATCHNORM_RULES[batchnorm]))
    try:
        rules = dict(zip((node.name for node in module_nodes), composite.rules(layers, fallback=fallback)))
    except TypeError as error:
        raise TypeError(f"{error} (or register a node rule with attrlab.lrp.graph.register_node_rule)") from None

    nonnegative: set[str] = set()
    input_like: set[str] = set()  # the input and reshapes of it
    steps: list[GraphStep] = []
    for node in nodes:
        names: tuple[str, ...] = (node.name,)
        if node.op == "placeholder":
            if node.name != nodes[0].name:
                raise TypeError(f"LRP explains models with one input; node {node.name!r} is a second one")
            input_like.add(node.name)
            steps.append(GraphStep(node.name, names, _read(node.name)))
            continue
        if node.op == "output":
            steps.append(GraphStep(node.name, names, _arguments(node.args[0])))
            continue
        if node.op == "get_attr":
            value = model
            for part in str(node.target).split("."):
                value = getattr(value, part)
            constant = value.detach() if isinstance(value, Tensor) else value
            steps.append(GraphStep(node.name, names, _constant(constant)))
            continue
        if node.op == "call_module":
            steps.append(_module_step(node, modules, rules, canonizer, nonnegative, input_like))
            continue
        if canonizer is not None and node.name in canonizer.thresholds:  # a functional ReLU after a folded BN
            threshold, info = ThreshReLU(*canonizer.thresholds[node.name]), LayerInfo(name=node.name)
            source = node.args[0].name
            steps.append(GraphStep(node.name, names, _apply(Pass(), threshold, source, info)))
            continue
        steps.append(_function_step(node, modules, stabilizer, nonnegative, input_like))
    return steps


def _module_step(node, modules, rules, canonizer, nonnegative, input_like) -> GraphStep:
    name = _module_name(node)
    module = modules[name]
    source = node.args[0]
    names = (name, node.name)
    if len(node.args) != 1 or node.kwargs or not isinstance(source, fx.Node):
        raise TypeError(f"LRP supports modules called with one tensor; node {node.name!r} ({name}) has {node.args}")
    if canonizer is not None and node.name in canonizer.aliases:  # a folded BatchNorm: the merged layer's output
        alias = canonizer.aliases[node.name]
        if source.name in nonnegative:
            nonnegative.add(node.name)
        return GraphStep(node.name, names, _read(alias))
    rule = rules[node.name]
    if isinstance(module, ThreshReLU) or (canonizer is not None and node.name in canonizer.thresholds):
        module = ThreshReLU(*canonizer.thresholds[node.name])
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        raise TypeError(f"node {node.name!r} ({name}, {type(module).__name__}) is not supported by attrlab's LRP")
    if isinstance(module, (*Convolution, nn.Linear)):
        affine = canonizer.affine(node, module) if canonizer is not None else Affine(module)
        users = list(node.users)
        info = LayerInfo(
            name=name,
            input_nonnegative=source.name in nonnegative,
            output_rectified=len(users) == 1 and _is_relu(users[0], modules),
            model_input=source.name in input_like,
        )
        if rule.input_space and not info.model_input:
            raise ValueError(
                f"rule {rule!r} on layer {name!r} replaces the layer's input, so it only fits the layer that receives "
                "the model input (the first Conv2d/Linear)"
            )
        return GraphStep(node.name, names, _apply(rule, affine, source.name, info), affine, rule, info, source.name)
    # (a threshold ReLU's output is not: it is the input or the BatchNorm's zero)
    if isinstance(module, _SIGN_KEEPING_MODULES) and (source.name in nonnegative or isinstance(module, nn.ReLU)):
        nonnegative.add(node.name)
    if isinstance(module, _INPUT_RESHAPES) and source.name in input_like:
        input_like.add(node.name)
    info = LayerInfo(name=name)
    return GraphStep(node.name, names, _apply(rule, module, source.name, info))


def _function_step(node, modules, stabilizer, nonnegative, input_like) -> GraphStep:
    target = node.target
    names = (node.name,)
    if node.op == "call_function" and target in (operator.mul, torch.mul) or target == "mul":
        return _product_step(node, modules)
    rule = NODE_RULES.get(target)
    if rule is None:
        shown = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        raise TypeError(
            f"no LRP rule for node {node.name!r} ({node.op} {shown}); register one with "
            f"attrlab.lrp.graph.register_node_rule({'' if isinstance(target, str) else 'the function, '}"
            f"{'the method name ' + repr(target) + ', ' if isinstance(target, str) else ''}rule)"
        )
    sources = [arg.name for arg in node.all_input_nodes]
    if sources and (all(s in nonnegative for s in sources) or target in _RELUS):
        if target in _RELUS or target in _RESHAPE_TARGETS or target in (torch.cat, operator.getitem, F.dropout):
            nonnegative.add(node.name)
        elif rule is sum_rule or target in (F.adaptive_avg_pool2d, F.avg_pool2d, torch.mean, "mean"):
            nonnegative.add(node.name)
    if sources and all(s in input_like for s in sources) and target in _RESHAPE_TARGETS:
        input_like.add(node.name)
    return GraphStep(
        node.name,
        names,
        _call(rule, node.args, node.kwargs, stabilizer),
    )


def _product_step(node: fx.Node, modules: dict[str, nn.Module]) -> GraphStep:
    """``a * b``: "signal takes it all" when one factor is a gate; scaling by a constant keeps its gradient."""
    left, right = node.args[0], node.args[1]
    gate = [isinstance(arg, fx.Node) and _is_gate(arg, modules) for arg in (left, right)]
    tensors = [isinstance(arg, fx.Node) for arg in (left, right)]
    if all(tensors) and not any(gate):
        raise TypeError(
            f"no LRP rule for node {node.name!r} (the product of two signals, {left} * {right}); only a gate made by a "
            "sigmoid can multiply a signal (register a rule with attrlab.lrp.graph.register_node_rule(operator.mul, "
            "rule) to handle this model)"
        )
    if gate[0] and gate[1]:
        raise TypeError(f"node {node.name!r} multiplies two gates; no signal to give the relevance to")

    def compute(env: dict[str, Any]) -> Tensor:
        a, b = _evaluate(left, env), _evaluate(right, env)
        if gate[0]:
            a = a.detach()
        if gate[1]:
            b = b.detach()
        return a * b

    return GraphStep(node.name, (node.name,), compute)


def layer_nodes(model: nn.Module, steps: list[GraphStep]) -> dict[str, str]:
    """Layer name -> node name: module names (a module called several times: its last call), container names (their
    last node) and node names."""
    graph = trace(model)
    by_node = {step.node: step for step in steps}
    names: dict[str, str] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        names[node.name] = node.name
        for name in by_node[node.name].names:
            names[name] = node.name
        for container in node.meta.get("nn_module_stack", {}):
            if container:
                names[str(container).split("@")[0]] = node.name
    return names


__all__ = [
    "NODE_RULES",
    "GraphStep",
    "NodeRule",
    "graph_plan",
    "gradient_rule",
    "layer_nodes",
    "norm_rule",
    "pass_rule",
    "register_node_rule",
    "sum_rule",
    "trace",
]
