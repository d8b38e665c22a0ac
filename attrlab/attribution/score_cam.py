"""Gradient-free class activation maps: Score-CAM and Ablation-CAM, batched over channels and images, hook-free.

Both weigh the K channels of a layer's activation ``A`` (N, K, h, w) by forward passes and return
``ReLU(sum_k w_k A_k)`` at the layer's resolution, (N, 1, h, w) (``upsample=True``: bilinear to the input size, as
:class:`~attrlab.attribution.gradcam.GradCAM`). The model is cut at the layer
(:class:`~attrlab.attribution.layer_split.ModelSplit`); every perturbed copy of every image is one row of a batch,
``internal_batch_size`` rows per forward pass, so there is no loop over images or channels. With (N, T) targets all
T weights come from the same forward passes.

Why not pytorch-grad-cam: it loops over images in Python, moves every score to the host one at a time, swaps the
model's layer for an ablation layer (Ablation-CAM) and returns maps min-max scaled and resized with OpenCV. The tests
check the weights and the maps against it.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .base import (
    Attribution,
    Explanation,
    Layer,
    Target,
    feature_layer,
    per_target,
    resolve_target,
    target_columns,
)
from .checks import (
    check_bool,
    check_choice,
    check_image_batch,
    check_internal_batch_size,
    pass_rows,
)
from .gradcam import finish_map
from .layer_split import ModelSplit
from .model_state import eval_semantics

#: Score-CAM's channel scores: the target's softmax probability (the paper) or the softmax over channels of the
#: target logits (pytorch-grad-cam)
SCORE_CAM_OUTPUTS = ("probability", "logit")


class _ChannelCAM(Attribution):
    """Shared frame: split at the layer, score K perturbed copies per image in chunks, weigh the channels."""

    def __init__(
        self, model: nn.Module, relu: bool, upsample: bool, internal_batch_size: int | str | None, progress: bool
    ):
        super().__init__(model)
        self.relu = check_bool("relu", relu)
        self.upsample = check_bool("upsample", upsample)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.progress = check_bool("progress", progress)

    @abc.abstractmethod
    def _copies(self, inputs: torch.Tensor, activation: torch.Tensor, split: ModelSplit) -> tuple[torch.Tensor, str]:
        """The (N, K, ...) perturbed copies and where they enter: ``"input"`` (head and tail) or ``"layer"`` (tail)."""

    @abc.abstractmethod
    def _weights(self, scores: torch.Tensor, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """(N, T, K) channel weights from the copies' (N, K, classes) logits and the unperturbed (N, classes)."""

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        x = check_image_batch(inputs, self.model)
        layer = feature_layer(self.model) if layer is None else layer
        split = ModelSplit(self.model, layer)
        with eval_semantics(self.model), torch.no_grad():
            activation = split.head(x)
            if activation.ndim != 4:
                raise ValueError(
                    f"CAM methods need a spatial layer with output (N, C, h, w); layer {layer!r} gives shape "
                    f"{tuple(activation.shape)}"
                )
            logits = split.tail(activation, x)
            target_index = resolve_target(target, logits)
            columns = target_columns(target_index)
            copies, entry = self._copies(x, activation, split)
            batch, channels = copies.shape[:2]
            rows = pass_rows(self.internal_batch_size, copies[0], batch * channels)
            flat = copies.flatten(0, 1)  # image-major: copy k of image i is row i * K + k
            image_of_row = torch.arange(batch, device=x.device).repeat_interleave(channels)
            outputs = []
            for first in tqdm(range(0, flat.shape[0], rows), desc=self.name, disable=not self.progress):
                chunk = flat[first : first + rows]
                if entry == "input":
                    outputs.append(split.tail(split.head(chunk), chunk))
                else:
                    outputs.append(split.tail(chunk, x[image_of_row[first : first + rows]]))
            scores = torch.cat(outputs).view(batch, channels, -1)
            weights = self._weights(scores, logits, columns)  # (N, T, K)
            cam = torch.einsum("ntk,nkhw->nthw", weights, activation)[:, :, None]
        return Explanation(per_target(finish_map(cam, x, self.relu, self.upsample), target_index), logits, target_index)


class ScoreCAM(_ChannelCAM):
    """Score-CAM (Wang et al. 2020): channels weighted by the score of the input masked with each channel's map.

    ``H_k`` = channel k of the activation, upsampled to the input size (bilinear, ``align_corners=True``) and min-max
    scaled to [0, 1] per image (``+1e-8`` in the denominator); the masked input ``x * H_k`` is scored. Weights:
    ``output="probability"`` (default): ``w_k = softmax(f(x * H_k))_t``, the paper and its authors' code;
    ``output="logit"``: ``w = softmax_k(f_t(x * H_k))``, pytorch-grad-cam's ``ScoreCAM``.
    Map ``ReLU(sum_k w_k A_k)``. Costs one forward pass per channel and image.
    """

    name = "score_cam"

    def __init__(
        self,
        model: nn.Module,
        output: str = "probability",
        relu: bool = True,
        upsample: bool = False,
        internal_batch_size: int | str | None = "auto",
        progress: bool = False,
    ):
        super().__init__(model, relu, upsample, internal_batch_size, progress)
        self.output = check_choice("output", output, SCORE_CAM_OUTPUTS)

    def _copies(self, inputs: torch.Tensor, activation: torch.Tensor, split: ModelSplit) -> tuple[torch.Tensor, str]:
        masks = F.interpolate(activation, size=inputs.shape[-2:], mode="bilinear", align_corners=True)
        low = masks.amin((-2, -1), keepdim=True)
        high = masks.amax((-2, -1), keepdim=True)
        masks = (masks - low) / (high - low + 1e-8)
        return inputs[:, None] * masks[:, :, None], "input"  # (N, K, C, H, W)

    def _weights(self, scores: torch.Tensor, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        index = columns[:, None, :].expand(-1, scores.shape[1], -1)  # (N, K, T)
        if self.output == "probability":
            return scores.softmax(-1).gather(2, index).transpose(1, 2)
        return scores.gather(2, index).transpose(1, 2).softmax(-1)


class AblationCAM(_ChannelCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): channels weighted by the relative drop of the target logit when the
    channel is set to zero at the layer: ``w_k = (y_t - y_t^{(k)}) / y_t``; map ``ReLU(sum_k w_k A_k)``.

    The ablated activations enter the part of the model above the layer directly (one forward of the part below).
    pytorch-grad-cam ablates with 0 when the image's activations have minimum 0 (post-ReLU layers, where the two
    agree) and otherwise with ``min - 1e7``; here the ablation value is always the paper's 0.
    """

    name = "ablation_cam"

    def __init__(
        self,
        model: nn.Module,
        relu: bool = True,
        upsample: bool = False,
        internal_batch_size: int | str | None = "auto",
        progress: bool = False,
    ):
        super().__init__(model, relu, upsample, internal_batch_size, progress)

    def _copies(self, inputs: torch.Tensor, activation: torch.Tensor, split: ModelSplit) -> tuple[torch.Tensor, str]:
        channels = activation.shape[1]
        keep = 1 - torch.eye(channels, dtype=activation.dtype, device=activation.device)  # (K, K): copy, channel
        return activation[:, None] * keep[None, :, :, None, None], "layer"  # (N, K, K, h, w)

    def _weights(self, scores: torch.Tensor, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        original = logits.gather(1, columns)  # (N, T)
        ablated = scores.gather(2, columns[:, None, :].expand(-1, scores.shape[1], -1)).transpose(1, 2)  # (N, T, K)
        return (original[:, :, None] - ablated) / original[:, :, None]


__all__ = ["SCORE_CAM_OUTPUTS", "AblationCAM", "ScoreCAM"]
