"""Gradient-based attribution methods: Gradient, Input x Gradient, Integrated Gradients, SmoothGrad, Guided Backprop,
Deconvolution.

All share the call shape of :mod:`attrlab.attribution.base` and captum's semantics (tests compare against captum's
Saliency(abs=False), InputXGradient, IntegratedGradients, NoiseTunnel(smoothgrad), GuidedBackprop and
Deconvolution). With
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

from .autograd import layer_gradient, split_gradient
from .base import Attribution, Explanation, Layer, Target, per_target, resolve_target, target_columns
from .checks import (
    check_baseline,
    check_baselines,
    check_batch,
    check_bool,
    check_choice,
    check_internal_batch_size,
    check_non_negative_float,
    check_positive_int,
    pass_rows,
)
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
    """The gradient of the target logit: captum's Saliency with ``abs=False`` (``absolute=True``: its default).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    absolute : bool
        Return the gradient's absolute value.
    """

    name = "gradient"

    def __init__(self, model: nn.Module, absolute: bool = False):
        super().__init__(model)
        self.absolute = check_bool("absolute", absolute)

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient.abs() if self.absolute else gradient


class InputXGradient(_LayerGradient):
    """Input (or layer activation) times the gradient of the target logit.

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    """

    name = "input_x_gradient"

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return activation * gradient


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through active units (Springenberg et al. 2015)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor) -> torch.Tensor:
        output = value.clamp(min=0)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad_output.clamp(min=0) * (output > 0)


class GuidedBackprop(_LayerGradient):
    """Guided Backpropagation: the gradient with every ``nn.ReLU``'s backward clamped to positive values.

    Hook-free on flat or nested ``nn.Sequential`` models: the ReLU modules are replaced by a custom autograd function
    in a functional forward. ReLUs called as ``torch.relu`` inside a custom ``forward`` cannot be found and stay
    ordinary ReLUs (captum's module hooks have the same limitation).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    """

    name = "guided_backprop"
    substitutes = {nn.ReLU: _GuidedReLU.apply}

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward rectifies the incoming signal without the forward mask (Zeiler & Fergus 2014)."""

    @staticmethod
    def forward(ctx, value: torch.Tensor) -> torch.Tensor:
        return value.clamp(min=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.clamp(min=0)


class Deconvolution(_LayerGradient):
    """Deconvolution (Zeiler & Fergus 2014): the backward pass with every ReLU replaced by ``r_l = [r_{l+1}]^+``.

    Linear layers and max-pools propagate as in the gradient (pooling "switches" = the forward argmax); each ReLU
    rectifies the backward signal itself, ignoring which units were active in the forward pass (Guided Backprop uses
    both). Captum's ``Deconvolution`` does the same with module hooks; here ``nn.ReLU`` modules are swapped for a
    custom autograd function in a hook-free forward (same limitation as :class:`GuidedBackprop` for ReLUs called as
    functions).
    """

    name = "deconvolution"
    substitutes = {nn.ReLU: _DeconvReLU.apply}

    def _combine(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return gradient


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``alphas`` in [0, 1] and weights of the rule approximating the integral over [0, 1] with n_steps points.

    Parameters
    ----------
    method : str
        One of :data:`QUADRATURES`.
    n_steps : int
        The number of points (at least 2 for the Riemann rules).

    Returns
    -------
    tuple of numpy.ndarray
        ``(alphas, weights)``, each of length ``n_steps``.

    Notes
    -----
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


class IntegratedGradients(Attribution):
    """Integrated Gradients (Sundararajan et al. 2017): (x - x') times the path integral of the gradient.

    With ``layer=`` the path runs between the layer's activations of the baseline and of the input and only the part
    above the layer is differentiated (captum's LayerIntegratedGradients). All steps are evaluated batched,
    ``internal_batch_size`` rows per forward pass (whole steps of N images, at least one step per pass).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    baseline : float
        The baseline value x' of every input element when :meth:`explain` gets no ``baselines`` (0: mid-grey for
        inputs in [-1, 1]). A baseline tensor depends on the batch: pass it to ``attribute(..., baselines=...)``.
    n_steps : int
        Quadrature points of the path integral.
    method : str
        The quadrature rule, one of :data:`QUADRATURES` (captum's names; see :func:`quadrature`).
    internal_batch_size : int, "auto" or None
        Rows per forward pass; ``"auto"`` sizes them for the device (:func:`~attrlab.attribution.checks.pass_rows`),
        ``None`` runs all steps at once.
    """

    name = "integrated_gradients"

    def __init__(
        self,
        model: nn.Module,
        baseline: float = 0.0,
        n_steps: int = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | str | None = "auto",
    ):
        super().__init__(model)
        self.baseline = check_baseline(baseline)
        alphas, weights = quadrature(method, n_steps)
        self.n_steps, self.method = n_steps, method
        self._alphas, self._weights = torch.as_tensor(alphas), torch.as_tensor(weights)
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)

    def explain(
        self,
        inputs: torch.Tensor,
        target: Target = None,
        layer: Layer = None,
        baselines: float | torch.Tensor | None = None,
    ) -> Explanation:
        """Integrated Gradients of ``inputs`` for ``target`` at ``layer``.

        Parameters
        ----------
        inputs : torch.Tensor
            A batch (N, ...) on any device.
        target : None, int, sequence or tensor
            See :meth:`Attribution.explain`.
        layer : None, str or nn.Module
            ``None`` or ``"input"``: the input; else the layer whose activation is integrated along the path.
        baselines : float or torch.Tensor, optional
            The baseline x' of this call in input space: a tensor broadcastable to ``inputs`` (one per image,
            (N, ...), or one shared by all, (1, ...)) or a number; ``None`` uses the constructor's ``baseline``.

        Returns
        -------
        Explanation
            The attribution (shaped like the input or the layer's activation; (N, T, ...) for (N, T) targets), the
            logits and the resolved targets.
        """
        x = check_batch(inputs, self.model)
        start_inputs = check_baselines(baselines, self.baseline, x)
        split = ModelSplit(self.model, layer)
        batch = x.shape[0]
        key = (x.device, x.dtype)
        if key not in self._on_device:  # copied to a device once per method, not every call (a copy there waits)
            self._on_device[key] = (self._alphas.to(x), self._weights.to(x))
        alphas, weights = self._on_device[key]
        with eval_semantics(self.model):
            with torch.no_grad():
                end = split.head(x)
                start = split.head(start_inputs)
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
                gradient = split_gradient(
                    split, path, x, columns.repeat(count, 1), at_layer=True, resolved=True
                ).gradient
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

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    n_samples : int
        Noisy copies per image.
    stdev : float
        Standard deviation of the Gaussian noise, in input units.
    seed : int
        Seed of the noise generator, drawn afresh at every call.
    absolute : bool
        Average the gradients' absolute values.
    internal_batch_size : int, "auto" or None
        Rows (noisy copies) per forward pass; ``"auto"`` sizes them for the device, ``None`` runs all at once.
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
                gradient = split_gradient(
                    split, chunk, chunk, noisy_target[first : first + rows], resolved=True
                ).gradient
                gradients.append(gradient.abs() if self.absolute else gradient)
        gradient = torch.cat(gradients)
        return Explanation(gradient.view(x.shape[0], self.n_samples, *gradient.shape[1:]).mean(1), logits, target_index)


__all__ = [
    "QUADRATURES",
    "Deconvolution",
    "Gradient",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "SmoothGrad",
    "quadrature",
]
