"""The LRP attribution method: one rule-modified forward pass and one backward pass, batched, hook-free.

The engine walks the model's layers in order (flat or nested ``nn.Sequential``), folds BatchNorms into their
neighbours (:mod:`attrlab.canonize`, eval semantics: running statistics), and lets each layer's rule compute the
layer's true output carrying the rule's gradient (:mod:`attrlab.lrp.rules`). A single ``torch.autograd.grad`` from the
target logits to the input (or to the chosen layer's output) then gives the relevance: activation x gradient. With
(N, T) targets the rule-modified forward pass is shared and each target column costs one more backward pass.

The model is never changed and never called: parameters are read (detached), layers are applied through functional
calls, so module hooks do not run, the train/eval flag, ``requires_grad`` and ``.grad`` stay as they are, and a
pending training ``loss.backward()`` still works.

The plan (canonized layers, each with its rule, and what the rules derive from the parameters) is cached per LRP
object and rebuilt when the model's parameters or BatchNorm statistics change (:class:`PlanCache`): rules hold no
state.

Limits (each raises an error naming the layer): models must be (nested) ``nn.Sequential`` of Conv1d/2d/3d (zero
padding, any stride, dilation, groups), Linear, ReLU and the element-wise activations, max / average / adaptive
average pooling, Flatten, dropout, Identity and foldable BatchNorms (see :mod:`attrlab.canonize`); flat / w^2 / z^B
only on the layer that receives the input. With a folded BatchNorm, ``layer="conv1"`` and ``layer="bn1"`` both mean
the output of the merged pair. A Sequential model with a BatchNorm before a padded convolution goes through the
traced engine, whose fold gives that convolution a spatial bias map. ``batchnorm="gradient"`` / ``"pass"`` keep the
BatchNorms as layers of their own with the matching rule instead (Pahde et al. 2023's uncanonized baselines).

An input encoding in front (:class:`~attrlab.interpretable.dynamic.PairEncoding`, ``[u, 1 - u]``: an affine map of
the pixels concatenated along the channels) is part of the input for LRP: the rules explain the encoded input (the
first Conv2d/Linear is the input layer, so give z^B the encoding's bounds [0, 1]) and each pixel gets the sum of its
channels' relevances, as the inherent B-cos contributions do; ``layer=<the encoding's name>`` keeps them apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..attribution.autograd import target_gradient
from ..attribution.base import Attribution, Explanation, Layer, Target, resolve_layer, resolve_target, target_columns
from ..attribution.checks import check_batch
from ..canonize import BatchNorm, SpatialBiasError, canonize_layers
from ..interpretable.dynamic import PairEncoding
from .autograd import reusable_backward
from .composites import Composite, make_composite
from .graph import graph_plan, layer_nodes
from .layers import AVERAGE_POOLS, IDENTITIES, MAX_POOLS, Affine, Convolution, LayerInfo
from .rules import Gradient, Pass, RelevanceGradient, Rule

Start = Literal["logit", "one"]
STARTS = ("logit", "one")
BatchNormMode = Literal["canonize", "gradient", "pass"]
#: what LRP does with BatchNorm layers (Pahde et al. 2023 compare the canonized maps with the two others)
BATCHNORM_MODES = ("canonize", "gradient", "pass")
_BATCHNORM_RULES: dict[str, Rule] = {"gradient": RelevanceGradient(), "pass": Pass()}
# layers through which a non-negative input stays non-negative
_SIGN_KEEPING = (*MAX_POOLS, *AVERAGE_POOLS, nn.Flatten, *IDENTITIES)
_RESHAPES = (nn.Flatten, *IDENTITIES)


def walk(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The leaf layers of a (nested) ``nn.Sequential`` in execution order, with their dotted names.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential`` whose children are layers or ``nn.Sequential`` containers.
    prefix : str
        The name prefix of ``model``'s children (for recursion).

    Returns
    -------
    list of (str, nn.Module)
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"LRP walks nn.Sequential models; {prefix or 'the model'} is a {type(model).__name__} (write it as an "
            "nn.Sequential of layers)"
        )
    layers: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            layers.extend(walk(child, full))
        elif next(child.children(), None) is not None:
            raise TypeError(
                f"LRP walks nn.Sequential models; layer {full!r} ({type(child).__name__}) has sub-modules but is not "
                "an nn.Sequential"
            )
        else:
            layers.append((full, child))
    return layers


@dataclass(frozen=True)
class Step:
    """One step of the LRP forward pass: a layer (or a Conv/Linear with its ReLU fused in) and its rule."""

    names: tuple[str, ...]  # the layers whose output this step produces (their relevances are the same)
    layer: nn.Module | Affine
    rule: Rule
    info: LayerInfo


def check_batchnorm_mode(batchnorm: str) -> str:
    """``batchnorm`` if it is one of :data:`BATCHNORM_MODES`, else a ``ValueError`` naming it and the valid ones."""
    if not isinstance(batchnorm, str) or batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"unknown batchnorm mode {batchnorm!r}; valid choices: {', '.join(BATCHNORM_MODES)}")
    return batchnorm


def plan(model: nn.Module, composite: Composite, batchnorm: BatchNormMode = "canonize") -> list[Step]:
    """The (canonized) layer sequence of ``model`` with each layer's rule and surroundings.

    Parameters
    ----------
    model : nn.Module
        See :func:`walk`.
    composite : Composite
        Assigns each layer its rule.
    batchnorm : str
        ``"canonize"`` (fold BatchNorms into their neighbours), ``"gradient"`` (:class:`RelevanceGradient`) or
        ``"pass"`` (:class:`Pass`); see :class:`LRP`.

    Returns
    -------
    list of Step
        One step per layer, a Conv2d/Linear and the ReLU after it fused into one; unsupported layers and misplaced
        input-space rules raise an error naming the layer.
    """
    encoding = _leading_encoding(model)
    walked = walk(model)[0 if encoding is None else encoding[0] + 1 :]  # an encoding is part of the input (explain)
    if check_batchnorm_mode(batchnorm) == "canonize":
        layers = canonize_layers(walked)
        rules = composite.rules(layers)
    else:
        layers = walked
        rules = composite.rules(layers, fallback=[(BatchNorm, _BATCHNORM_RULES[batchnorm])])
    steps: list[Step] = []
    nonnegative, only_reshapes, skip_until = False, True, -1
    for index, ((name, module), rule) in enumerate(zip(layers, rules)):
        if index <= skip_until:  # identities and a ReLU fused into the previous step
            nonnegative, only_reshapes = True, False
            continue
        # the next layer that computes something (folded BatchNorms leave identities behind)
        ahead = index + 1
        while ahead < len(layers) and isinstance(layers[ahead][1], nn.Identity) and type(rules[ahead]) is Gradient:
            ahead += 1
        following = layers[ahead][1] if ahead < len(layers) else None
        affine = isinstance(module, (*Convolution, nn.Linear))
        # a plain ReLU (pass-through rule) next: outputs with z <= 0 get no relevance
        rectified = isinstance(following, nn.ReLU) and type(rules[ahead]) in (Pass, Gradient)
        fuse = affine and rectified
        info = LayerInfo(
            name=name,
            input_nonnegative=nonnegative,
            output_rectified=rectified,
            model_input=only_reshapes,
            fused_relu=fuse,
        )
        if rule.input_space and not only_reshapes:
            raise ValueError(
                f"rule {rule!r} on layer {name!r} replaces the layer's input, so it only fits the layer that receives "
                "the model input (the first Conv2d/Linear)"
            )
        if affine:
            layer: nn.Module | Affine = Affine(module)
        elif isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Bilinear)):
            raise TypeError(f"layer {name!r} of type {type(module).__name__} is not supported by attrlab's LRP")
        else:
            layer = module
        names = tuple(n for n, _ in layers[index : ahead + 1]) if fuse else (name,)
        steps.append(Step(names, layer, rule, info))
        nonnegative = isinstance(module, nn.ReLU) or (nonnegative and isinstance(module, _SIGN_KEEPING))
        only_reshapes = only_reshapes and isinstance(module, _RESHAPES)
        skip_until = ahead if fuse else -1
    return steps


class PlanCache:
    """The engine's plan for one model and composite, reused while the parameters and buffers keep their values.

    Why: preparing the modified weights takes a handful of small tensor ops per layer, and on a busy CPU each op
    carries a large fixed cost (thread wake-ups), measured at 20-30% of an LRP call. A cached plan is valid while
    every floating-point parameter and buffer is the same tensor (``data_ptr``, shape, dtype) holding the same
    values: a changed version counter (``param._version``, bumped by optimiser steps and in-place edits) rebuilds at
    once, and a value comparison against a snapshot (``torch.equal``, one pass over the weights) catches edits through
    ``param.data``, which bypass version counters. Off the CPU, where that comparison would stall the device queue and
    small ops are cheap, the plan is rebuilt on every call.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._versions: tuple[int, ...] = ()
        self._snapshots: list[Tensor] = []
        self._steps: list = []

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        tensors = [p for p in model.parameters()] + [b for b in model.buffers() if b.dtype.is_floating_point]
        return [t.detach() for t in tensors]

    def steps(
        self, model: nn.Module, composite: Composite, batchnorm: BatchNormMode = "canonize", build: Callable = plan
    ) -> list:
        """The plan of ``model`` under ``composite``: the cached one if nothing changed, else ``build``'s new one
        (:func:`plan` for Sequential models, :func:`~attrlab.lrp.graph.graph_plan` for traced ones)."""
        tensors = self._tensors(model)
        if any(t.device.type != "cpu" for t in tensors):
            return build(model, composite, batchnorm)
        key = (
            id(model),
            id(composite),
            batchnorm,
            build,
            tuple(id(module) for module in model.modules()),
            tuple((t.data_ptr(), t.shape, t.dtype) for t in tensors),
        )
        versions = tuple(t._version for t in tensors)
        if (
            key == self._key
            and versions == self._versions
            and all(torch.equal(snapshot, t) for snapshot, t in zip(self._snapshots, tensors))
        ):
            return self._steps
        self._steps = build(model, composite, batchnorm)
        self._key, self._versions = key, versions
        self._snapshots = [t.clone() for t in tensors]
        return self._steps


class LRP(Attribution):
    """Layer-wise relevance propagation with a composite of rules (zennit-compatible results, one backward pass).

    Parameters
    ----------
    model : nn.Module
        A (nested) ``nn.Sequential`` of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten,
        Dropout and BatchNorm layers (BatchNorms are folded into their neighbours), or any other model that
        ``torch.fx`` can trace (residual, dense and gated networks: the traced engine of :mod:`attrlab.lrp.graph`,
        where ``layer=`` names any module, container or graph node).
    composite : str, Composite or mapping
        A registered name (see :data:`attrlab.lrp.composites.COMPOSITES`), a :class:`Composite`, or a mapping
        {layer name or layer type: rule}.
    start : str
        The relevance the explained logit starts with: ``"logit"`` (its value, seed 000's choice) or ``"one"``
        (zennit's one-hot convention). With ``"one"`` an explained logit that is exactly 0 gives zero relevance.
    batchnorm : str
        What BatchNorm layers do (eval semantics: running statistics): ``"canonize"`` folds each into its
        neighbouring linear layer (:mod:`attrlab.canonize`, the default); ``"gradient"`` gives it no rule, so the
        relevance goes through it like a gradient, ``R_in = s R_out`` (what zennit does without a canonizer,
        :class:`~attrlab.lrp.rules.RelevanceGradient`); ``"pass"`` is the identity for relevance,
        ``R_in = R_out`` (:class:`~attrlab.lrp.rules.Pass`, what Pahde et al.'s grid search code does).
    **composite_settings
        Settings of a composite given by name (``gamma=0.1``, ``max_pool="average"``, ...).

    Notes
    -----
    ``layer=None`` and ``layer="input"`` in :meth:`explain` both mean the input relevance.
    """

    name = "lrp"

    def __init__(
        self,
        model: nn.Module,
        composite: str | Composite | Mapping = "epsilon_plus_flat",
        start: Start = "logit",
        batchnorm: BatchNormMode = "canonize",
        **composite_settings: Any,
    ):
        super().__init__(model)
        if start not in STARTS:
            raise ValueError(f"unknown start {start!r}; valid choices: {', '.join(STARTS)}")
        self.batchnorm: BatchNormMode = check_batchnorm_mode(batchnorm)  # type: ignore[assignment]
        self.composite = make_composite(composite, **composite_settings)
        self.start = start
        #: traced engine (:mod:`attrlab.lrp.graph`) for models that are not (nested) nn.Sequential of layers
        # (also a Sequential model with a BatchNorm before a padded convolution: only the traced engine holds the
        # spatial bias map of that fold)
        self.traced = not _is_sequential(model) or (self.batchnorm == "canonize" and _needs_spatial_bias(model))
        self._build: Callable = graph_plan if self.traced else plan
        self._plans = PlanCache()
        # fail early on unsupported layers and misplaced rules
        self._plans.steps(model, self.composite, self.batchnorm, self._build)

    def explain(self, inputs: Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        return self.explain_keeping(inputs, target, layer)[0]

    def explain_keeping(
        self, inputs: Tensor, target: Target = None, layer: Layer = None, keep: Sequence[str] = ()
    ) -> tuple[Explanation, dict[str, Tensor]]:
        """:meth:`explain`, also handing out the model's activations at the layers ``keep`` names, from the same pass.

        LRP's forward pass computes every layer's true output (the rules only change the gradient), so a method that
        needs the activation at a layer (a CAM method in a tracked step) can take it from here instead of running
        the model below that layer again.

        Parameters
        ----------
        inputs, target, layer
            As for :meth:`explain`.
        keep : sequence of str
            Dotted layer names (as ``model.named_modules()`` gives them).

        Returns
        -------
        tuple of (Explanation, dict of str to torch.Tensor)
            The explanation and, detached, the activation of each name in ``keep`` whose output the pass computes as
            the model does: a layer the plan applies as it is, or the ReLU fused into a Conv2d/Linear step. Other
            names are left out (a layer merged by canonization or fused with the ReLU after it, whose own output the
            pass never forms; every layer of a traced model), so the caller computes those itself.
        """
        inputs = check_batch(inputs, self.model)  # dtype, device, channels and size before any rule runs
        if not self.traced:
            capture = _capture_name(self.model, resolve_layer(self.model, layer))
        else:
            capture = self._graph_capture(layer)
        # the plan is rebuilt when the parameters changed (training)
        steps = self._plans.steps(self.model, self.composite, self.batchnorm, self._build)
        several = not isinstance(target, (int, type(None))) and torch.as_tensor(target).dim() == 2
        encoding = None if self.traced else _leading_encoding(self.model)
        if encoding is not None and capture in [name for name, _ in walk(self.model)[: encoding[0]]]:
            capture = None  # an identity in front of the encoding: the input
        fold = encoding is not None and capture is None  # the input: each pixel gets its encoded channels' relevance
        capture = None if encoding is not None and capture == encoding[1] else capture  # the channels kept apart
        kept: dict[str, Tensor] = {}
        with torch.enable_grad(), reusable_backward() if several else contextlib.nullcontext():
            x = inputs.detach() if encoding is None else encoding[2].forward(inputs.detach())
            x = x.requires_grad_(True)
            if self.traced:
                logits, captured, input_space = _run_graph(steps, x, capture)
            else:
                activation, captured = x, None
                wanted = _model_outputs(self.model, steps, keep) if keep else {}
                for index, step in enumerate(steps):
                    activation = step.rule(step.layer, activation, step.info)
                    if capture in step.names:
                        captured = activation
                    if index in wanted:
                        kept[wanted[index]] = activation.detach()
                logits = activation
                input_space = bool(steps) and steps[_first_affine(steps)].rule.input_space
            if not isinstance(logits, Tensor) or logits.dim() != 2:
                shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ValueError(f"the model must output (N, classes) logits, got {shape}")
            target_index = resolve_target(target, logits)
            scale = None
            if self.start == "one":  # relevance 1 at the explained logit: its gradient divided by its value
                chosen = logits.detach().gather(1, target_columns(target_index)).view(target_index.shape)
                scale = torch.where(chosen != 0, 1.0 / torch.where(chosen != 0, chosen, 1.0), 0.0)
            wrt = x if captured is None else captured
            gradient = target_gradient(logits, target_index, wrt, scale)
        if captured is None and input_space:
            relevance = gradient  # input-space rules hand back the relevance itself
        else:
            activation = wrt.detach()
            relevance = (activation[:, None] if target_index.dim() == 2 else activation) * gradient
        if fold:
            relevance = PairEncoding.fold(relevance)
        return Explanation(attribution=relevance, logits=logits.detach(), target=target_index), kept

    def _graph_capture(self, layer: Layer) -> str | None:
        """The node whose output ``layer`` names on a traced model (``None``: the input)."""
        if layer is None or (isinstance(layer, str) and layer == "input"):
            return None
        steps = self._plans.steps(self.model, self.composite, self.batchnorm, self._build)
        names = layer_nodes(self.model, steps)
        if isinstance(layer, nn.Module):
            name = next((name for name, module in self.model.named_modules() if module is layer), None)
            if name is None:
                raise ValueError(f"layer {type(layer).__name__} is not a sub-module of the model")
            layer = name
        if not isinstance(layer, str) or layer not in names:
            raise ValueError(f"unknown layer {layer!r}; valid layers: input, {', '.join(names)}")
        return names[layer]


def _run_graph(steps: list, x: Tensor, capture: str | None) -> tuple[Any, Tensor | None, bool]:
    """The traced plan run on ``x``: (output, the captured node's value, whether the input rule is input-space)."""
    env: dict[str, Any] = {}
    input_space = False
    for step in steps:
        env[step.node] = x if not env else step.compute(env)
        if step.info is not None and step.info.model_input and step.rule.input_space:
            input_space = True
    captured = None if capture is None else env[capture]
    return env[steps[-1].node], captured, input_space


def _model_outputs(model: nn.Module, steps: list[Step], names: Sequence[str]) -> dict[int, str]:
    """{step index: name} for the names in ``names`` whose model output is the output of that step (see
    :meth:`LRP.explain_keeping`): the step's last layer, applied as it is or as the ReLU fused into the step."""
    modules = dict(walk(model))
    found = {}
    for index, step in enumerate(steps):
        name = step.names[-1]
        if name not in names:
            continue
        module = modules[name]
        applied = step.layer.module if isinstance(step.layer, Affine) else step.layer
        if applied is module or (step.info.fused_relu and isinstance(module, nn.ReLU)):
            found[index] = name
    return found


def _capture_name(model: nn.Module, module: nn.Module | None) -> str | None:
    """The walk name whose output is ``module``'s output (its last leaf for a container), None for the input."""
    if module is None:
        return None
    layers = walk(model)
    if next(module.children(), None) is None:
        return next(name for name, leaf in layers if leaf is module)
    leaves = {id(leaf) for leaf in module.modules()}
    inside = [name for name, leaf in layers if id(leaf) in leaves]
    if not inside:
        raise ValueError(f"layer {type(module).__name__} holds no layers to attribute to")
    return inside[-1]


def _is_sequential(model: nn.Module) -> bool:
    """True for a (nested) nn.Sequential of leaf layers (the Sequential engine's models), else False."""
    if not isinstance(model, nn.Sequential):
        return False
    try:
        walk(model)
    except TypeError:
        return False
    return True


def _leading_encoding(model: nn.Module) -> tuple[int, str, PairEncoding] | None:
    """(position, name, layer) of a :class:`PairEncoding` that only identities precede in a Sequential ``model``."""
    for position, (name, layer) in enumerate(walk(model)):
        if isinstance(layer, PairEncoding):
            return position, name, layer
        if not isinstance(layer, nn.Identity):
            return None
    return None


def _needs_spatial_bias(model: nn.Module) -> bool:
    """True when folding the BatchNorms of a Sequential model needs a spatial bias (BN before a padded convolution)."""
    try:
        canonize_layers(walk(model))
    except SpatialBiasError:
        return True
    return False


def _first_affine(steps: list[Step]) -> int:
    return next((i for i, step in enumerate(steps) if isinstance(step.layer, Affine)), 0)


__all__ = ["BATCHNORM_MODES", "LRP", "PlanCache", "Step", "check_batchnorm_mode", "plan", "walk"]
