"""A model cut in two at one layer, ``logits = tail(head(x))``, run without registering hooks where the model allows.

Layer attributions (Grad-CAM, layer gradients, layer Integrated Gradients, occlusion of activations) need the layer's
activation and the rest of the network as a function of it. Captum and pytorch-grad-cam get both with forward hooks
on the model; attrlab's models are flat ``nn.Sequential`` stacks, so the split simply runs the leading modules (the
*head*) and then the remaining ones (the *tail*). That costs nothing extra, registers nothing on the model, lets the
caller run the head under ``torch.no_grad()`` (no graph below the layer: the lean Grad-CAM) and lets interpolated or
occluded activations be fed to the tail directly.

Nested ``nn.Sequential`` containers are flattened. A layer that is not reachable that way (inside a custom module),
or a module to substitute that lives inside one, switches to the fallback: forward hooks registered for the duration
of one call and removed in a ``finally`` block, so no state is left on the model either way. In the fallback the tail
re-runs the whole forward (the head's result is replaced at the layer), so it is slower but gives the same numbers.

``substitutes`` replaces the forward of modules of given types by a function (Guided Backprop swaps ``nn.ReLU`` for a
ReLU whose backward is clamped); ``module_substitutes`` does the same with functions that also receive the module
(``f(module, value)``: DeepLIFT's max-pool rule needs the pooling settings, PatternNet the layer's weights). Expanded batches (several copies of the N inputs, as Integrated Gradients and
occlusion build) are block-major: copy ``j`` of image ``i`` is row ``j * N + i``, the layout of ``Tensor.repeat``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .base import Layer, resolve_layer

TensorFunction = Callable[[torch.Tensor], torch.Tensor]
Substitutes = Mapping[type, TensorFunction]
ModuleFunction = Callable[[nn.Module, torch.Tensor], torch.Tensor]
ModuleSubstitutes = Mapping[type, ModuleFunction]


class _ActivationCaptured(Exception):
    """Stops the fallback head's forward pass once the layer has produced its output."""

    def __init__(self, activation: torch.Tensor):
        super().__init__()
        self.activation = activation


def _flatten_sequential(model: nn.Module) -> tuple[list[nn.Module], dict[int, int]] | None:
    """The leaf modules of nested ``nn.Sequential`` containers, and for each module (by id) the cut after it."""
    if not isinstance(model, nn.Sequential):
        return None
    leaves: list[nn.Module] = []
    cut_after: dict[int, int] = {}

    def walk(container: nn.Sequential) -> None:
        for module in container:
            if isinstance(module, nn.Sequential):
                walk(module)
            else:
                leaves.append(module)
            cut_after[id(module)] = len(leaves)

    walk(model)
    return leaves, cut_after


class ModelSplit:
    """``model`` cut after ``layer``: ``tail(head(x))`` is the model's output.

    Parameters
    ----------
    model : nn.Module
        The model (hook-free for flat or nested ``nn.Sequential`` stacks, forward hooks for one call otherwise).
    layer : None, str or nn.Module
        Where to cut; ``None`` or ``"input"``: before the first module (the head is the identity).
    substitutes : mapping of type to callable, optional
        Module types whose forward is replaced by a function in both halves (Guided Backprop's ReLU).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: Layer = None,
        substitutes: Substitutes | None = None,
        module_substitutes: ModuleSubstitutes | None = None,
    ):
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.substitutes = dict(substitutes or {})
        self.module_substitutes = dict(module_substitutes or {})
        flat = _flatten_sequential(model)
        self._leaves: list[nn.Module] = []
        self._cut = 0
        self.hook_free = flat is not None
        if flat is not None:
            leaves, cut_after = flat
            if self.layer is not None and id(self.layer) not in cut_after:
                self.hook_free = False
            leaf_ids = {id(module) for module in leaves}
            hidden = [m for m in model.modules() if self._substitute(m) is not None and id(m) not in leaf_ids]
            if hidden:
                self.hook_free = False
            if self.hook_free:
                self._leaves = leaves
                self._cut = 0 if self.layer is None else cut_after[id(self.layer)]

    def _substitute(self, module: nn.Module) -> TensorFunction | None:
        for kind, function in self.substitutes.items():
            if isinstance(module, kind):
                return function
        for kind, module_function in self.module_substitutes.items():
            if isinstance(module, kind):
                return functools.partial(module_function, module)
        return None

    def _run(self, modules: list[nn.Module], value: torch.Tensor) -> torch.Tensor:
        for module in modules:
            function = self._substitute(module)
            value = function(value) if function is not None else module(value)
        return value

    # ----------------------------------------------------------------- hook fallback
    def _substitution_hooks(self) -> list[torch.utils.hooks.RemovableHandle]:
        handles = []
        for module in self.model.modules():
            function = self._substitute(module)
            if function is not None:
                handles.append(module.register_forward_hook(lambda _m, args, _out, f=function: f(args[0])))
        return handles

    def _hooked_forward(self, inputs: torch.Tensor, layer_hook: Callable | None) -> torch.Tensor:
        handles = self._substitution_hooks()
        try:
            if layer_hook is not None:
                assert self.layer is not None  # head and tail give a hook only when there is a layer
                handles.append(self.layer.register_forward_hook(layer_hook))
            return self.model(inputs)
        finally:
            for handle in handles:
                handle.remove()

    # ----------------------------------------------------------------- the two halves
    def head(self, inputs: torch.Tensor) -> torch.Tensor:
        """The activation at the layer (the inputs themselves when no layer was given)."""
        if self.layer is None:
            return inputs
        if self.hook_free:
            return self._run(self._leaves[: self._cut], inputs)

        def capture(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            raise _ActivationCaptured(output)

        try:
            self._hooked_forward(inputs, capture)
        except _ActivationCaptured as captured:
            return captured.activation
        raise RuntimeError(f"layer {type(self.layer).__name__} was not called in the model's forward pass")

    def tail(self, activation: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The logits computed from ``activation`` at the layer.

        ``inputs`` (the N images the activation came from) is used only by the hook fallback, which re-runs the
        forward from the input; an activation holding k block-major copies of the N images gets them repeated.
        """
        if self.hook_free:
            rest = self._leaves[self._cut :]
            if rest and getattr(rest[0], "inplace", False) and self._substitute(rest[0]) is None:
                activation = activation.clone()  # an in-place first module must not overwrite the caller's activation
            return self._run(rest, activation)
        if self.layer is None:
            return self._hooked_forward(activation, None)
        copies, remainder = divmod(activation.shape[0], inputs.shape[0])
        if remainder:
            raise ValueError(
                f"an activation batch of {activation.shape[0]} is not a whole number of copies of "
                f"{inputs.shape[0]} inputs"
            )
        if copies > 1:
            inputs = inputs.repeat(copies, *([1] * (inputs.ndim - 1)))
        return self._hooked_forward(inputs, lambda _module, _args, _output: activation)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """The whole model (with substitutes): ``tail(head(inputs))``."""
        return self.tail(self.head(inputs), inputs)
