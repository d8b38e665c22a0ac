"""Gradient-based attribution methods: Gradient, Input x Gradient, Integrated Gradients, SmoothGrad, Guided Backprop.

All share the call shape of :mod:`attrlab.attribution.base` and captum's semantics (tests compare against captum's
Saliency(abs=False), InputXGradient, IntegratedGradients, NoiseTunnel(smoothgrad) and GuidedBackprop). With
``layer=`` the attribution is with respect to that layer's output (captum's LayerGradientXActivation /
LayerIntegratedGradients): the model is cut there (:class:`~attrlab.attribution.layer_split.ModelSplit`), the part
below the layer runs once without a graph and only the part above it is differentiated.

Gradients of a batch come from one backward pass of the sum of the selected logits, which is exact per image because
images do not interact in eval mode. With (N, T) targets the forward pass (and its graph) is shared and each target
column costs one more backward pass. ``torch.autograd.grad`` is asked for the input (or activation) gradient only,
so no parameter's ``.grad`` is touched and a pending training backward is unaffected.
"""

from __future__ import annotations

import abc
import numpy as np
import torch
from torch import nn

from .base import Attribution, Explanation, Layer, Target, per_target, resolve_target, target_columns
from .checks import (
    check_baseline,
    check_batch,
    check_bool,
    check_choice,
    check_internal_batch_size,
    check_non_negative_float,
    check_positive_int,
    pass_rows,
)
from .autograd import layer_gradient, target_gradient
from .layer_split import ModelSplit, Substitutes
from .model_state import eval_semantics

#: quadrature rules of Integrated Gradients (captum's names)
QUADRATURES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


class _LayerGradient(Attribution):
    """Shared core: the gradient of the target logits w.r.t. the input or a layer's output, then ``_combine``."""

    substitutes: Substitutes = {}

    @abc.abstractmethod
    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """The attribution from the activation (or input) and the gradient of the target logits w.r.t. it."""

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        activation, gradient, logits, target_index = layer_gradient(
            self.model, check_batch(inputs, self.model), target, layer, self.substitutes
        )
        return Explanation(self._combine(activation, gradient), logits, target_index)


class Gradient(_LayerGradient):
    """The gradient of the target logit: captum's Saliency with ``abs=False`` (``absolute=True``: its default)."""

    name = "gradient"

    def __init__(self, model: nn.Module, absolute: bool = False):
        super().__init__(model)
        self.absolute = check_bool("absolute", absolute)

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.abs() if self.absolute else gradient


class InputXGradient(_LayerGradient):
    """Input (or layer activation) times the gradient of the target logit."""

    name = "input_x_gradient"

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return activation * gradient


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through active units (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        output = value.clamp(min=0)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (output,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (output > 0)


class GuidedBackprop(_LayerGradient):
    """Guided Backpropagation: the gradient with every ``nn.ReLU``'s backward clamped to positive values.

    Hook-free on flat or nested ``nn.Sequential`` models: the ReLU modules are replaced by a custom autograd function
    in a functional forward. ReLUs called as ``torch.relu`` inside a custom ``forward`` cannot be found and stay
    ordinary ReLUs (captum's module hooks have the same limitation).
    """

    name = "guided_backprop"
    substitutes = {nn.ReLU: _GuidedReLU.apply}

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alphas`` in [0, 1] and weights of the rule approximating the integral over [0, 1] with n_steps points.

    The points are captum's. The trapezoid weights are the textbook ones (spacing 1 / (n - 1), halved ends, summing to
    1); captum's ``riemann_trapezoid`` weighs every point 1 / n instead (sum (n - 1) / n), so its attributions are
    ``(n - 1) / n`` times these and break completeness by that factor.
    """
    check_choice("integration method", method, QUADRATURES)
    check_positive_int("n_steps", n_steps, minimum=1 if method == "gausslegendre" else 2)
    n = n_steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        weights = np.full(n, 1 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0, 1, n), weights
    alphas = {
        "riemann_left": np.linspace(0, 1 - 1 / n, n),
        "riemann_right": np.linspace(1 / n, 1, n),
        "riemann_middle": np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n),
    }[method]
    return alphas, np.full(n, 1 / n)


def _broadcast_baseline(baseline: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        try:
            return torch.broadcast_to(baseline.to(like), like.shape)
        except RuntimeError as err:
            raise ValueError(
                f"baseline of shape {tuple(baseline.shape)} does not broadcast to the inputs {tuple(like.shape)}"
            ) from err
    return torch.full_like(like, float(baseline))


class IntegratedGradients(Attribution):
    """Integrated Gradients (Sundararajan et al. 2017): (x - x') times the path integral of the gradient.

    ``baseline`` is a number or a tensor broadcastable to the inputs (zeros by default: mid-grey for inputs in
    [-1, 1]). With ``layer=`` the path runs between the layer's activations of the baseline and of the input and only
    the part above the layer is differentiated (captum's LayerIntegratedGradients). All steps are evaluated batched,
    ``internal_batch_size`` rows per forward pass (whole steps of N images, at least one step per pass; ``"auto"``:
    sized for the device, see :func:`~attrlab.attribution.checks.pass_rows`).
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        baseline: float | torch.Tensor = 0.0,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | str | None = "auto",
    ):
        super().__init__(model)
        self.baseline = check_baseline(baseline)
        alphas, weights = quadrature(method, n_steps)
        self.n_steps, self.method = n_steps, method
        self._alphas, self._weights = torch.as_tensor(alphas), torch.as_tensor(weights)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        x = check_batch(inputs, self.model)
        split = ModelSplit(self.model, layer)
        batch = x.shape[0]
        alphas = self._alphas.to(x)
        weights = self._weights.to(x)
        with eval_semantics(self.model):
            with torch.no_grad():
                end = split.head(x)
                start = split.head(_broadcast_baseline(self.baseline, x))
                logits = split.tail(end, x)
            steps_per_pass = max(1, pass_rows(self.internal_batch_size, end, batch * self.n_steps) // batch)
            target_index = resolve_target(target, logits)
            columns = target_columns(target_index)
            difference = end - start
            integral = end.new_zeros((batch, columns.shape[1], *end.shape[1:]))
            shape = (-1,) + (1,) * end.ndim
            for first in range(0, self.n_steps, steps_per_pass):
                step_alphas = alphas[first : first + steps_per_pass]
                count = step_alphas.shape[0]
                path = (start + step_alphas.view(shape) * difference).reshape(count * batch, *end.shape[1:])
                path.requires_grad_(True)
                with torch.enable_grad():
                    path_logits = split.tail(path, x)
                    gradient = target_gradient(path_logits, columns.repeat(count, 1), path)
                step_weights = weights[first : first + count].view(shape + (1,))
                integral += (gradient.view(count, *integral.shape) * step_weights).sum(0)
        return Explanation(per_target(difference[:, None] * integral, target_index), logits, target_index)


class SmoothGrad(Attribution):
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over ``n_samples`` noisy copies of each input.

    The noise is Gaussian with standard deviation ``stdev`` in input units (captum's ``stdevs``; 0.2 is 10 % of the
    [-1, 1] range), drawn from a generator seeded with ``seed`` at every call: same seed, same maps. Noise is laid out
    as captum's NoiseTunnel draws it (the samples of image i are rows i * n_samples ...), so with the global seed set to
    ``seed`` captum draws the same noise. ``absolute=True`` averages absolute gradients; with ``layer=`` the gradient
    is taken w.r.t. that layer's output for each noisy input.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 25,
        stdev: float = 0.2,
        seed: int = 0,
        absolute: bool = False,
        internal_batch_size: int | str | None = "auto",
    ):
        super().__init__(model)
        self.n_samples = check_positive_int("n_samples", n_samples)
        self.stdev = check_non_negative_float("stdev", stdev)
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.absolute = check_bool("absolute", absolute)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        x = check_batch(inputs, self.model)
        split = ModelSplit(self.model, layer)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        noisy = x.repeat_interleave(self.n_samples, dim=0)
        noisy = noisy + self.stdev * torch.randn(noisy.shape, generator=generator, device=x.device, dtype=x.dtype)
        rows = pass_rows(self.internal_batch_size, x, noisy.shape[0])
        gradients = []
        with eval_semantics(self.model):
            with torch.no_grad():
                logits = split.tail(split.head(x), x)
            target_index = resolve_target(target, logits)
            noisy_target = target_index.repeat_interleave(self.n_samples, dim=0)
            for first in range(0, noisy.shape[0], rows):
                chunk = noisy[first : first + rows]
                with torch.no_grad():
                    activation = split.head(chunk).detach()
                activation.requires_grad_(True)
                with torch.enable_grad():
                    chunk_logits = split.tail(activation, chunk)
                    gradient = target_gradient(chunk_logits, noisy_target[first : first + rows], activation)
                gradients.append(gradient.abs() if self.absolute else gradient)
        gradient = torch.cat(gradients)
        return Explanation(gradient.view(x.shape[0], self.n_samples, *gradient.shape[1:]).mean(1), logits, target_index)


__all__ = [
    "QUADRATURES",
    "Gradient",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "SmoothGrad",
    "quadrature",
]
