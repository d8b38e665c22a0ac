"""Perturbation-based attribution methods: Occlusion and RISE, batched over windows / masks and images.

Both methods only evaluate the model (no gradients). Every perturbed copy of every image is built as one tensor per
chunk - (copies x N) rows, block-major - and scored by one forward pass, so there is no Python loop over images or
over single windows. With (N, T) targets all T scores of an image come from the same perturbed forward passes, so
explaining every class of a grid costs what explaining one does. With ``layer=`` the perturbation is applied to that
layer's (N, C, h, w) activation: the part below the layer runs once and only the part above it runs per chunk
(Occlusion K=5/s=2 at layers in seed 004).

``output`` picks what is scored: the target ``"logit"`` (captum's Occlusion scores the forward output, our models
return logits) or its softmax ``"probability"`` (RISE's black-box definition).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .base import Attribution, Explanation, Layer, Target, per_target, resolve_target, target_columns
from .checks import (
    check_baseline,
    check_baselines,
    check_bool,
    check_choice,
    check_image_batch,
    check_internal_batch_size,
    check_pair,
    check_positive_int,
    check_probability,
    pass_rows,
)
from .layer_split import ModelSplit
from .model_state import eval_semantics

OUTPUTS = ("logit", "probability")


def _score(logits: torch.Tensor, columns: torch.Tensor, output: str) -> torch.Tensor:
    """The (rows, T) scores of the target ``columns`` (rows, T)."""
    if output == "probability":
        logits = logits.softmax(1)
    return logits.gather(1, columns)


class _Perturbation(Attribution):
    """Shared loop: score ``masks`` (M, h, w) applied to the activation in chunks, fold the scores into a map."""

    def __init__(
        self, model: nn.Module, baseline: float, output: str, internal_batch_size: int | str | None, progress: bool
    ):
        super().__init__(model)
        self.baseline = check_baseline(baseline)
        self.output = check_choice("output", output, OUTPUTS)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.progress = check_bool("progress", progress)

    #: whether mask value 1 keeps the activation (RISE) or replaces it by the baseline (occlusion)
    _keep = False

    @abc.abstractmethod
    def _masks(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(M, h, w) masks in [0, 1]; what 1 means depends on ``_keep``."""

    @abc.abstractmethod
    def _mask_value(self, scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """What each mask contributes, (k, N, T), from the perturbed scores (k, N, T) and the unperturbed (N, T)."""

    @abc.abstractmethod
    def _finish(self, weighted: torch.Tensor, masks: torch.Tensor, channels: int) -> torch.Tensor:
        """The (N, T, C or 1, h, w) map from sum_m value_m * mask_m (``weighted``, (N, T, h, w)) and the masks."""

    def explain(
        self,
        inputs: torch.Tensor,
        target: Target = None,
        layer: Layer = None,
        baselines: float | torch.Tensor | None = None,
    ) -> Explanation:
        """Attribute ``inputs`` for ``target`` by perturbing them (or the activation at ``layer``).

        Parameters
        ----------
        inputs : torch.Tensor
            Images (N, C, H, W) on any device.
        target : None, int, sequence or tensor
            See :meth:`Attribution.explain`; (N, T) targets are scored from the same perturbed forward passes.
        layer : None, str or nn.Module
            ``None`` or ``"input"``: perturb the images; else perturb that layer's (N, C, h, w) activation.
        baselines : float or torch.Tensor, optional
            What perturbed positions are set to in this call: a tensor broadcastable to what is perturbed (the
            images, or the activation at ``layer``: one per image, (N, C, h, w), or one shared, (1, C, h, w)), or a
            number; ``None`` uses the constructor's ``baseline``.

        Returns
        -------
        Explanation
            The attribution (see the class), the unperturbed logits and the resolved targets.
        """
        x = check_image_batch(inputs, self.model)
        split = ModelSplit(self.model, layer)
        with eval_semantics(self.model), torch.no_grad():
            activation = split.head(x)
            if activation.ndim != 4:
                raise ValueError(
                    f"{self.name} needs images or a spatial layer (N, C, h, w); layer {layer!r} gives shape "
                    f"{tuple(activation.shape)}"
                )
            baseline: float | torch.Tensor = (
                self.baseline if baselines is None else check_baselines(baselines, 0.0, activation, "perturbed tensor")
            )
            logits = split.tail(activation, x)
            target_index = resolve_target(target, logits)
            columns = target_columns(target_index)
            reference = _score(logits, columns, self.output)
            batch, height, width = activation.shape[0], activation.shape[2], activation.shape[3]
            masks = self._masks(height, width, activation.device).to(activation.dtype)
            per_pass = max(1, pass_rows(self.internal_batch_size, activation, batch * masks.shape[0]) // batch)
            weighted = activation.new_zeros((batch, columns.shape[1], height, width))
            for first in tqdm(range(0, masks.shape[0], per_pass), desc=self.name, disable=not self.progress):
                chunk = masks[first : first + per_pass]
                keep = chunk if self._keep else 1 - chunk
                shaped = keep[:, None, None]  # (k, 1, 1, h, w) against activation (N, C, h, w)
                perturbed = activation * shaped + baseline * (1 - shaped)
                scores = _score(
                    split.tail(perturbed.flatten(0, 1), x), columns.repeat(chunk.shape[0], 1), self.output
                ).view(chunk.shape[0], batch, -1)
                weighted += torch.einsum("knt,khw->nthw", self._mask_value(scores, reference), chunk)
            attribution = self._finish(weighted, masks, activation.shape[1])
        return Explanation(per_target(attribution, target_index), logits, target_index)


class Occlusion(_Perturbation):
    """Occlusion (Zeiler & Fergus 2014) as captum computes it: the drop of the target score per covering window.

    A ``window`` (height, width; all channels at once) slides with ``stride``; positions start at 0, stride apart,
    ceil((size - window) / stride) + 1 per axis, the last one cropped at the border. Each element's attribution is
    the mean over the windows covering it of score(x) - score(x with the window set to ``baseline``), the same value
    for every channel: shape (N, C, h, w) like captum's ``Occlusion`` with window (C, kh, kw).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    window : int or tuple of int
        The occluded window (height, width), all channels at once.
    stride : int or tuple of int
        The step between windows (at most the window, so every position is occluded).
    baseline : float
        What perturbed positions are set to when :meth:`explain` gets no ``baselines`` (a tensor depends on the batch:
        pass it as ``attribute(..., baselines=...)``).
    output : str
        What is scored, one of :data:`OUTPUTS`: the target ``"logit"`` or its softmax ``"probability"``.
    internal_batch_size : int, "auto" or None
        Rows (perturbed copies) per forward pass; ``"auto"`` sizes them for the device, ``None`` runs all at once.
    progress : bool
        Show a progress bar over the forward passes.
    """

    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        window: int | tuple[int, int] = 4,
        stride: int | tuple[int, int] = 2,
        baseline: float = 0.0,
        output: str = "logit",
        internal_batch_size: int | str | None = "auto",
        progress: bool = False,
    ):
        super().__init__(model, baseline, output, internal_batch_size, progress)
        self.window = check_pair("window", window)
        self.stride = check_pair("stride", stride)
        for axis, (size, step) in enumerate(zip(self.window, self.stride)):
            if step > size:
                raise ValueError(
                    f"stride {self.stride} is larger than the window {self.window} along axis {axis}: "
                    "positions between windows would never be occluded"
                )

    def _masks(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        axes = []
        for size, window, stride in zip((height, width), self.window, self.stride):
            if window > size:
                raise ValueError(f"occlusion window {self.window} is larger than the map ({height}, {width})")
            starts = torch.arange(math.ceil((size - window) / stride) + 1, device=device) * stride
            positions = torch.arange(size, device=device)
            axes.append((positions >= starts[:, None]) & (positions < starts[:, None] + window))  # (windows, size)
        rows, columns = axes
        return (rows[:, None, :, None] & columns[None, :, None, :]).flatten(0, 1)

    def _mask_value(self, scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return reference - scores

    def _finish(self, weighted: torch.Tensor, masks: torch.Tensor, channels: int) -> torch.Tensor:
        mean_drop = weighted / masks.sum(0)
        return mean_drop[:, :, None].expand(-1, -1, channels, -1, -1).contiguous()


class RISE(_Perturbation):
    """RISE (Petsiuk et al. 2018): the target score's average over random smooth masks, weighted by each mask.

    Masks: a random binary grid with cells of ``cell_size`` pixels, each cell kept with probability ``p``, upsampled
    bilinearly to (grid + 1) cells and cropped at a random shift of up to one cell, from a generator seeded with
    ``seed`` at every call (same seed, same maps). Map = sum_m score(x * M_m + baseline (1 - M_m)) M_m / (n_masks p),
    shape (N, 1, h, w). The paper resizes with scikit-image; torch's bilinear ``interpolate`` does the same job on the
    input's device without a host round trip.

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    n_masks : int
        The number of random masks.
    cell_size : int
        The side of a mask's grid cell, in pixels of what is masked.
    p : float
        The probability that a cell is kept.
    seed : int
        Seed of the mask generator, drawn afresh at every call.
    baseline : float
        What perturbed positions are set to when :meth:`explain` gets no ``baselines`` (a tensor depends on the batch:
        pass it as ``attribute(..., baselines=...)``).
    output : str
        What is scored, one of :data:`OUTPUTS`: the target ``"logit"`` or its softmax ``"probability"``.
    internal_batch_size : int, "auto" or None
        Rows (perturbed copies) per forward pass; ``"auto"`` sizes them for the device, ``None`` runs all at once.
    progress : bool
        Show a progress bar over the forward passes.
    """

    name = "rise"
    _keep = True

    def __init__(
        self,
        model: nn.Module,
        n_masks: int = 1000,
        cell_size: int = 4,
        p: float = 0.5,
        seed: int = 0,
        baseline: float = 0.0,
        output: str = "probability",
        internal_batch_size: int | str | None = "auto",
        progress: bool = False,
    ):
        super().__init__(model, baseline, output, internal_batch_size, progress)
        self.n_masks = check_positive_int("n_masks", n_masks)
        self.cell_size = check_positive_int("cell_size", cell_size)
        self.p = check_probability("p", p)
        self.seed = check_positive_int("seed", seed, minimum=0)

    def _masks(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        return rise_masks(self.n_masks, (height, width), self.cell_size, self.p, self.seed, device)

    def _mask_value(self, scores: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return scores

    def _finish(self, weighted: torch.Tensor, masks: torch.Tensor, channels: int) -> torch.Tensor:
        return (weighted / (self.n_masks * self.p))[:, :, None]


def rise_masks(
    n_masks: int, size: tuple[int, int], cell_size: int, p: float, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(n_masks, h, w) RISE masks in [0, 1] (see :class:`RISE`), deterministic for a given seed.

    Parameters
    ----------
    n_masks : int
        The number of masks.
    size : tuple of int
        Their (height, width).
    cell_size : int
        The side of a grid cell before the bilinear upsampling.
    p : float
        The probability that a cell is kept (value 1).
    seed : int
        Seed of the generator.
    device : torch.device or str
        Where the masks are drawn and returned.

    Returns
    -------
    torch.Tensor
        (n_masks, height, width) float masks.
    """
    generator = torch.Generator(device=device).manual_seed(seed)
    height, width = size
    grid = (math.ceil(height / cell_size), math.ceil(width / cell_size))
    cells = (torch.rand(n_masks, 1, *grid, generator=generator, device=device) < p).float()
    smooth = F.interpolate(
        cells, size=((grid[0] + 1) * cell_size, (grid[1] + 1) * cell_size), mode="bilinear", align_corners=False
    )[:, 0]
    shift_y = torch.randint(0, cell_size, (n_masks,), generator=generator, device=device)
    shift_x = torch.randint(0, cell_size, (n_masks,), generator=generator, device=device)
    rows = (shift_y[:, None] + torch.arange(height, device=device))[:, :, None]
    columns = (shift_x[:, None] + torch.arange(width, device=device))[:, None, :]
    return smooth[torch.arange(n_masks, device=device)[:, None, None], rows, columns]


__all__ = ["OUTPUTS", "RISE", "Occlusion", "rise_masks"]
