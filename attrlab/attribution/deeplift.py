"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017): multipliers of differences to a reference input, hook-free.

Attribution (captum's ``DeepLift``, ``multiply_by_inputs=True``)::

    R(x) = (x - x') * m(x),   m = the chain rule with every ReLU's derivative replaced by the multiplier
    m_ReLU = (ReLU(z) - ReLU(z')) / (z - z')   (the ReLU's own derivative where |z - z'| < 1e-10)

where ``x'`` is the reference (``baselines``) and ``z'`` the pre-activation of the reference. Max-pools use captum's
rule: the output difference ``max(o, o') - o'`` is routed to the input's argmax and ``o - max(o, o')`` to the
reference's, then divided by the input difference. Linear layers (convolutions, dense, BatchNorm in eval, average
pools, flatten) keep their gradient. With these rules the attributions are complete: they sum to
``f_t(x) - f_t(x')``.

Why not captum: captum runs the inputs and the references as one doubled batch with forward and backward hooks on
every non-linearity, and back-propagates through both halves. Here the reference runs first without a graph (one row
when the reference is the same for every image, which is the usual constant baseline), its ReLU and max-pool inputs
and outputs are kept on a tape, and the inputs then run once with a graph in which each ``nn.ReLU`` and
``nn.MaxPool2d`` is a custom autograd function reading its reference from the tape: one backward pass over N rows, no
hooks on the model. With ``layer=`` the attribution is to that layer's output, ``(a - a') * m`` (captum's
``LayerDeepLift``). Multipliers are the same for every target (the rescale rule only depends on the two forward
passes), so (N, T) targets share both forward passes and cost one backward pass per column.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import target_gradient
from .base import Attribution, Explanation, Layer, Target, resolve_target
from .checks import check_baseline, check_batch
from .layer_split import ModelSplit
from .model_state import eval_semantics

#: below this input difference a non-linearity keeps its own derivative (captum's ``eps``)
EPS = 1e-10
#: module types DeepLIFT passes through with their gradient (they are linear, or affine in eval mode)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Flatten,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.Sequential,
)


class _RescaleReLU(torch.autograd.Function):
    """ReLU whose backward multiplies by (ReLU(z) - ReLU(z')) / (z - z') (its derivative where z ~ z')."""

    @staticmethod
    def forward(ctx, value, reference_in, reference_out):
        output = value.clamp(min=0)
        ctx.save_for_backward(value, output, reference_in, reference_out)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        value, output, reference_in, reference_out = ctx.saved_tensors
        delta_in = value - reference_in
        rescaled = grad_output * (output - reference_out) / delta_in
        local = grad_output * (value > 0)
        return torch.where(delta_in.abs() < EPS, local, rescaled), None, None


class _RescaleMaxPool2d(torch.autograd.Function):
    """2-D max-pool with captum's DeepLIFT backward (see the module docstring)."""

    @staticmethod
    def forward(ctx, value, settings, reference_in, reference_out, reference_indices):
        kernel, stride, padding, dilation, ceil_mode = settings
        output, indices = F.max_pool2d(value, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        ctx.settings = settings
        ctx.save_for_backward(value, output, indices, reference_in, reference_out, reference_indices)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        value, output, indices, reference_in, reference_out, reference_indices = ctx.saved_tensors
        kernel, stride, padding, dilation, ceil_mode = ctx.settings
        size = list(value.shape[-2:])
        cross_max = torch.max(output, reference_out)
        reference_indices = reference_indices.expand_as(indices)
        routed = F.max_unpool2d(grad_output * (cross_max - reference_out), indices, kernel, stride, padding, size)
        routed = routed + F.max_unpool2d(
            grad_output * (output - cross_max), reference_indices, kernel, stride, padding, size
        )
        local = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_output, value, _pair(kernel), _pair(stride), _pair(padding), _pair(dilation), ceil_mode, indices
        )
        delta_in = value - reference_in
        return torch.where(delta_in.abs() < EPS, local, routed / delta_in), None, None, None, None


def _pair(value: Any) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


class _ReferenceTape:
    """Module substitutes that record the reference pass (``mode="record"``) and replay it in the input's pass."""

    def __init__(self) -> None:
        self.mode = "plain"
        self.entries: list[tuple[str, torch.Tensor, *tuple[torch.Tensor, ...]]] = []  # (kind, input, output, ...)
        self.position = 0

    def start(self, mode: str) -> None:
        self.mode, self.position = mode, 0
        if mode == "record":
            self.entries = []

    def _reference(self, kind: str, value: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.position >= len(self.entries) or self.entries[self.position][0] != kind:
            raise RuntimeError("the model called its layers in a different order for the input and the reference")
        entry = self.entries[self.position]
        self.position += 1
        if entry[1].shape[1:] != value.shape[1:]:
            raise RuntimeError(f"{kind} input of shape {tuple(value.shape)} differs from the reference's")
        return entry[1:]

    def relu(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor:
        if self.mode == "plain":
            return value.clamp(min=0)
        if self.mode == "record":
            output = value.clamp(min=0)
            self.entries.append(("relu", value, output))
            return output
        reference_in, reference_out = self._reference("relu", value)
        return _RescaleReLU.apply(value, reference_in, reference_out)

    def max_pool(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor:
        pool = cast(nn.MaxPool2d, module)  # the substitute of nn.MaxPool2d only
        if pool.return_indices:
            raise ValueError("DeepLIFT does not support MaxPool2d(return_indices=True)")
        settings = (pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        if self.mode == "plain":
            return module(value)
        if self.mode == "record":
            output, indices = F.max_pool2d(value, *settings, return_indices=True)
            self.entries.append(("max_pool", value, output, indices))
            return output
        reference_in, reference_out, reference_indices = self._reference("max_pool", value)
        return _RescaleMaxPool2d.apply(value, settings, reference_in, reference_out, reference_indices)


def check_deeplift_model(model: nn.Module) -> None:
    """Raise for module types whose DeepLIFT rule is not implemented (they would silently fall back to gradients)."""
    unknown = sorted(
        {
            type(m).__name__
            for m in model.modules()
            if m is not model and not list(m.children()) and not isinstance(m, (nn.ReLU, nn.MaxPool2d) + LINEAR_TYPES)
        }
    )
    if unknown:
        raise ValueError(
            f"DeepLIFT has rules for ReLU, MaxPool2d and linear layers only; the model has {', '.join(unknown)}"
        )


def reference_batch(baselines: Any, inputs: torch.Tensor) -> torch.Tensor:
    """The reference as a batch: one row for a number or a single image (shared by all), else N rows."""
    if isinstance(baselines, torch.Tensor):
        if not baselines.dtype.is_floating_point:
            raise TypeError(f"baselines must be floating point, got dtype {baselines.dtype}")
        reference = baselines.detach().to(inputs)
        if reference.shape == inputs.shape[1:]:
            reference = reference[None]
        if (
            reference.ndim != inputs.ndim
            or reference.shape[1:] != inputs.shape[1:]
            or reference.shape[0] not in (1, inputs.shape[0])
        ):
            raise ValueError(
                f"baselines of shape {tuple(baselines.shape)} must be one input {tuple(inputs.shape[1:])}, "
                f"(1, ...) or the inputs' shape {tuple(inputs.shape)}"
            )
        return reference
    value = check_baseline(baselines)
    if isinstance(value, torch.Tensor):
        return reference_batch(value, inputs)
    return torch.full((1, *inputs.shape[1:]), float(value), dtype=inputs.dtype, device=inputs.device)


class DeepLift(Attribution):
    """DeepLIFT, Rescale rule (Shrikumar et al. 2017), equal to captum's ``DeepLift`` / ``LayerDeepLift``.

    ``R = (x - x') * m`` with the multipliers of the module docstring; ``baselines`` (an argument of
    :meth:`attribute`, as in captum) is a number, one input, or one reference per image; 0 by default.
    """

    name = "deeplift"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        check_deeplift_model(model)

    def explain(
        self, inputs: torch.Tensor, target: Target = None, layer: Layer = None, baselines: float | torch.Tensor = 0.0
    ) -> Explanation:
        """Attribute ``inputs`` relative to ``baselines``.

        Parameters
        ----------
        inputs : torch.Tensor
            A batch (N, ...).
        target : None, int, sequence or tensor
            The logits to explain (see :mod:`attrlab.attribution.base`); (N, T) for several per image.
        layer : None, str or nn.Module
            Attribute to the input (``None``) or to this layer's output.
        baselines : float or torch.Tensor
            The reference input: a number, one input (C, H, W) or (1, C, H, W), or one per image (N, C, H, W).

        Returns
        -------
        Explanation
            Attribution shaped like the inputs (or the layer's output), (N, T, ...) for (N, T) targets.
        """
        x = check_batch(inputs, self.model)
        reference = reference_batch(baselines, x)
        tape = _ReferenceTape()
        split = ModelSplit(self.model, layer, module_substitutes={nn.ReLU: tape.relu, nn.MaxPool2d: tape.max_pool})
        with eval_semantics(self.model):
            with torch.no_grad():
                activation = split.head(x)
                reference_activation = split.head(reference)
                tape.start("record")
                split.tail(reference_activation, reference)
            tape.start("replay")
            activation = activation.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = split.tail(activation, x)
                target_index = resolve_target(target, logits)
                multipliers = target_gradient(logits, target_index, activation)
            tape.start("plain")
        difference = activation.detach() - reference_activation
        if target_index.dim() == 2:
            difference = difference[:, None]
        return Explanation(difference * multipliers, logits.detach(), target_index)

    def attribute(  # type: ignore[override]
        self, inputs: torch.Tensor, target: Target = None, layer: Layer = None, baselines: float | torch.Tensor = 0.0
    ) -> torch.Tensor:
        """:meth:`explain`'s attribution alone."""
        return self.explain(inputs, target=target, layer=layer, baselines=baselines).attribution


__all__ = ["DeepLift", "check_deeplift_model", "reference_batch"]
