"""PatternNet and PatternAttribution (Kindermans et al. 2018): signal estimators fitted on data, then modified backward
passes through the network's dense and convolutional layers.

For a layer ``y = W x`` (per output unit ``y_j = w_j^T x``; for convolutions ``x`` is an input patch) the *pattern*
``a_j`` is the direction of the signal in ``x`` that ``y_j`` measures:

* linear estimator ``S_a``: ``a_j = cov[x, y_j] / (w_j^T cov[x, y_j])``, over all samples;
* two-component estimator ``S_a+-`` for rectified layers: the same over the samples with ``y_j > 0`` only (the
  positive regime, the only one a following ReLU passes):
  ``a_j+ = (E+[x y_j] - E+[x] E+[y_j]) / (w_j^T (E+[x y_j] - E+[x] E+[y_j]))``.
  Layers not followed by a ReLU (the logits) use the linear estimator.

Both are fitted by :func:`fit_patterns` in one pass over the data, batched, accumulating per layer (float64) the
counts, sums and cross sums that the covariances need; ``y`` includes the bias (it decides the regime; covariances do
not see a constant shift). The backward passes start from the target logit (1 at the target, the gradient's
convention) and keep the ReLU masks and max-pool switches of the forward pass:

* PatternNet (the signal): ``r_l = A_l^T r_{l+1}``;
* PatternAttribution: ``r_l = (W_l ⊙ A_l)^T r_{l+1}`` (Sixt et al.'s eq. 8).

Fitted patterns are a :class:`Patterns` object, saved next to a run's checkpoint (:func:`patterns_path`) with
``torch.save`` and loaded with ``weights_only=True``. Hook-free: each ``nn.Linear``/``nn.Conv2d`` runs as a custom
autograd function whose forward is the layer's and whose backward uses the pattern weights.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .autograd import target_gradient
from .base import Attribution, Explanation, Layer, Target, resolve_target
from .checks import check_batch, check_bool, check_choice, check_positive_int
from .layer_split import ModelSplit, ModuleSubstitutes, _flatten_sequential
from .model_state import eval_semantics

ESTIMATORS = ("two_component", "linear")


@dataclass
class Patterns:
    """Fitted signal patterns: layer name -> pattern shaped like that layer's weight, and the estimator used."""

    estimator: str
    patterns: dict[str, torch.Tensor]

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` atomically (temporary file, then rename); load with :meth:`load`."""
        from ..runstore import atomic_write_bytes

        buffer = io.BytesIO()
        torch.save({"estimator": self.estimator, "patterns": {k: v.cpu() for k, v in self.patterns.items()}}, buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> Patterns:
        """Read patterns written by :meth:`save` (``torch.load(..., weights_only=True)``)."""
        state = torch.load(path, map_location=map_location, weights_only=True)
        return cls(check_choice("estimator", state["estimator"], ESTIMATORS), dict(state["patterns"]))


def patterns_path(run_root: str | Path, step: int, estimator: str = "two_component") -> Path:
    """Where the patterns of a run's checkpoint at ``step`` live: next to it, in ``checkpoints/``."""
    check_choice("estimator", estimator, ESTIMATORS)
    return Path(run_root) / "checkpoints" / f"patterns-{estimator}-step-{step:08d}.pt"


def _layers(model: nn.Module) -> list[nn.Module]:
    flat = _flatten_sequential(model)
    if flat is None:
        raise ValueError(f"PatternNet walks nn.Sequential models; got {type(model).__name__}")
    leaves, _ = flat
    for module in leaves:
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError("PatternNet supports convolutions with groups=1 only")
    return leaves


def _patches(module: nn.Conv2d, value: torch.Tensor) -> torch.Tensor:
    """The input patches (N, C*kh*kw, L) each output position of the convolution sees."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same" (stride 1): the total padding d * (k - 1), the extra pixel on the right/bottom as torch pads
            pads = []
            for kernel, dilation in zip(reversed(module.kernel_size), reversed(module.dilation)):
                total = dilation * (kernel - 1)
                pads += [total // 2, total - total // 2]
            value = F.pad(value, pads)
            padding = (0, 0)
    if module.padding_mode != "zeros" and any(padding):
        raise ValueError(f"PatternNet supports zero padding only, not {module.padding_mode!r}")
    return F.unfold(value, module.kernel_size, module.dilation, padding, module.stride)


class _Moments:
    """Running sums for one layer: all samples (linear estimator) or the positive regime of each unit."""

    def __init__(self, inputs: int, outputs: int, positive: bool, device: torch.device):
        options: dict[str, Any] = {"dtype": torch.float64, "device": device}
        self.positive = positive
        self.xy = torch.zeros(inputs, outputs, **options)
        self.x = torch.zeros(inputs, outputs if positive else 1, **options)
        self.y = torch.zeros(outputs, **options)
        self.count = torch.zeros(outputs if positive else 1, **options)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Samples as rows: ``x`` (S, inputs), ``y`` (S, outputs)."""
        x, y = x.double(), y.double()
        if self.positive:
            mask = (y > 0).double()
            y = y * mask
            self.x += x.T @ mask
            self.count += mask.sum(0)
        else:
            self.x += x.sum(0)[:, None]
            self.count += y.shape[0]
        self.xy += x.T @ y
        self.y += y.sum(0)

    def pattern(self, weight: torch.Tensor) -> torch.Tensor:
        """a_j = cov_j / (w_j^T cov_j) with cov_j = E[x y_j] - E[x] E[y_j] over the layer's (regime's) samples."""
        count = self.count.clamp_min(1)
        covariance = self.xy / count - (self.x / count) * (self.y / count)
        w = weight.reshape(weight.shape[0], -1).double().T  # (inputs, outputs)
        denominator = (w * covariance).sum(0, keepdim=True)
        safe = torch.where(denominator.abs() > 1e-12, denominator, torch.ones_like(denominator))
        pattern = torch.where(denominator.abs() > 1e-12, covariance / safe, torch.zeros_like(covariance))
        return pattern.T.reshape(weight.shape).to(weight.dtype)


def fit_patterns(
    model: nn.Module,
    data: torch.Tensor | Iterable[torch.Tensor],
    estimator: str = "two_component",
    batch_size: int = 256,
    progress: bool = True,
) -> Patterns:
    """Fit the signal patterns of every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` in one pass over ``data``.

    Parameters
    ----------
    model : nn.Module
        A flat or nested ``nn.Sequential`` classifier (run in eval mode; it is not changed).
    data : torch.Tensor or iterable of tensors
        Training inputs (N, ...), split into batches of ``batch_size``, or an iterable of input batches.
    estimator : str
        ``"two_component"`` (S_a+-, for rectified layers) or ``"linear"`` (S_a, everywhere).
    batch_size : int
        Rows per forward pass when ``data`` is one tensor.
    progress : bool
        A progress bar over the batches.

    Returns
    -------
    Patterns
        One pattern per layer, shaped like its weight.
    """
    check_choice("estimator", estimator, ESTIMATORS)
    check_positive_int("batch_size", batch_size)
    check_bool("progress", progress)
    leaves = _layers(model)
    names = {id(module): name for name, module in model.named_modules()}
    batches = data.split(batch_size) if isinstance(data, torch.Tensor) else data
    moments: dict[int, _Moments] = {}
    with eval_semantics(model), torch.no_grad():
        for batch in tqdm(batches, desc="fitting patterns", disable=not progress):
            value = check_batch(batch)
            for index, module in enumerate(leaves):
                output = module(value)
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    if isinstance(module, nn.Conv2d):
                        x = _patches(module, value).transpose(1, 2).flatten(0, 1)
                        y = output.flatten(2).transpose(1, 2).flatten(0, 1)
                    else:
                        x, y = value.flatten(0, -2), output.flatten(0, -2)
                    if id(module) not in moments:
                        rectified = index + 1 < len(leaves) and isinstance(leaves[index + 1], nn.ReLU)
                        moments[id(module)] = _Moments(
                            x.shape[1], y.shape[1], estimator == "two_component" and rectified, value.device
                        )
                    moments[id(module)].add(x, y)
                value = output
    if not moments:
        raise ValueError("the model has no nn.Linear or nn.Conv2d layer to fit patterns for")
    patterns = {
        names[key]: moment.pattern(cast(torch.Tensor, _module(leaves, key).weight).detach())
        for key, moment in moments.items()
    }
    return Patterns(estimator, patterns)


def _module(leaves: list[nn.Module], key: int) -> nn.Module:
    return next(module for module in leaves if id(module) == key)


class _PatternBackward(torch.autograd.Function):
    """The layer's forward; the backward w.r.t. the input with ``backward_weight`` in place of the weight."""

    @staticmethod
    def forward(ctx, value, module, backward_weight):
        ctx.module, ctx.shape = module, value.shape
        ctx.save_for_backward(backward_weight)
        return module(value)

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        module = ctx.module
        if isinstance(module, nn.Linear):
            return grad_output @ weight, None, None
        padding = module.padding
        if isinstance(padding, str):
            padding = (
                [d * (k - 1) // 2 for k, d in zip(module.kernel_size, module.dilation)] if padding == "same" else 0
            )
            if any(k % 2 == 0 for k in module.kernel_size) and module.padding == "same":
                raise ValueError("PatternNet's backward does not support padding='same' with even kernels")
        grad = torch.nn.grad.conv2d_input(ctx.shape, weight, grad_output, module.stride, padding, module.dilation)
        return grad, None, None


class _PatternMethod(Attribution):
    """Shared frame: check the patterns against the model, substitute the layers, take the modified gradient."""

    def __init__(self, model: nn.Module, patterns: Patterns | str | Path | None = None):
        super().__init__(model)
        if patterns is None:
            raise ValueError(
                f"{self.name} needs fitted patterns: patterns=fit_patterns(model, training_inputs) or a saved file"
            )
        if isinstance(patterns, (str, Path)):
            patterns = Patterns.load(patterns)
        if not isinstance(patterns, Patterns):
            raise TypeError(f"patterns must be Patterns or a path to saved ones, not {type(patterns).__name__}")
        _layers(model)
        self.patterns = patterns
        self._by_module: dict[int, torch.Tensor] = {}
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                pattern = patterns.patterns.get(name)
                if pattern is None or pattern.shape != module.weight.shape:
                    found = "missing" if pattern is None else f"shaped {tuple(pattern.shape)}"
                    raise ValueError(
                        f"the patterns do not fit the model: layer {name!r} has weight {tuple(module.weight.shape)}, "
                        f"its pattern is {found}"
                    )
                self._by_module[id(module)] = pattern

    @abc.abstractmethod
    def _backward_weight(self, module: nn.Module, pattern: torch.Tensor) -> torch.Tensor:
        """The weight the backward pass of ``module`` uses in place of its own, from the layer's signal ``pattern``."""

    def _layer(self, module: nn.Module, value: torch.Tensor) -> torch.Tensor:
        pattern = self._by_module[id(module)].to(cast(torch.Tensor, module.weight))  # a Linear or Conv2d
        return _PatternBackward.apply(value, module, self._backward_weight(module, pattern).detach())

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        substitutes = {nn.Linear: self._layer, nn.Conv2d: self._layer}
        _, gradient, logits, target_index = _module_gradient(
            self.model, check_batch(inputs, self.model), target, layer, substitutes
        )
        return Explanation(gradient, logits, target_index)


def _module_gradient(
    model: nn.Module, inputs: torch.Tensor, target: Target, layer: Layer, module_substitutes: ModuleSubstitutes
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~attrlab.attribution.autograd.layer_gradient` with module-aware substitutes."""
    split = ModelSplit(model, layer, module_substitutes=module_substitutes)
    with eval_semantics(model):
        with torch.no_grad():
            activation = split.head(inputs)
        activation = activation.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = split.tail(activation, inputs)
            target_index = resolve_target(target, logits)
            gradient = target_gradient(logits, target_index, activation)
    return activation.detach(), gradient, logits.detach(), target_index


class PatternNet(_PatternMethod):
    """PatternNet (Kindermans et al. 2018): the signal ``r_l = A_l^T r_{l+1}`` (module docstring).

    ``patterns``: a :class:`Patterns` from :func:`fit_patterns` on this model, or the path of saved ones.
    """

    name = "pattern_net"

    def _backward_weight(self, module: nn.Module, pattern: torch.Tensor) -> torch.Tensor:
        return pattern


class PatternAttribution(_PatternMethod):
    """PatternAttribution (Kindermans et al. 2018): ``r_l = (W_l ⊙ A_l)^T r_{l+1}`` (module docstring).

    ``patterns``: a :class:`Patterns` from :func:`fit_patterns` on this model, or the path of saved ones.
    """

    name = "pattern_attribution"

    def _backward_weight(self, module: nn.Module, pattern: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, module.weight) * pattern  # a Linear or Conv2d


__all__ = ["ESTIMATORS", "PatternAttribution", "PatternNet", "Patterns", "fit_patterns", "patterns_path"]
