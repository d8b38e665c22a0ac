"""Class activation maps from gradients: Grad-CAM, Grad-CAM++ and LayerCAM at any convolutional layer, hook-free.

One call runs the model once, split at the layer (:class:`~attrlab.attribution.layer_split.ModelSplit`): the part
below the layer under ``torch.no_grad()`` (no graph, no saved activations), the part above it with a graph, then one
``torch.autograd.grad`` of the selected logits' sum with respect to the activation only. Images are independent in
eval mode, so that single backward pass gives every image the gradient of its own target logit. Nothing is registered
on the model and no parameter gradient is computed, so the call is safe between a training forward and its backward.

``layer=None`` means the CAM default layer, :func:`~attrlab.attribution.base.feature_layer`: the output of the last
spatial feature convolution *after* its activation (the rectified feature maps Selvaraju et al. weight; at the
pre-ReLU convolution output Grad-CAM++'s denominator crosses zero, and on ``vgg_small`` the last ``nn.Conv2d`` is
the 1x1 classifier ``head2``, which would make Grad-CAM a CAM of the class-evidence map). ``layer="input"`` explains
the input itself (the maps then have the input's resolution). Maps have the layer's resolution (captum's
LayerGradCam) unless ``upsample=True`` (bilinear to the input size, ``align_corners=False`` as captum's
``LayerAttribution.interpolate``); shape (N, 1, h, w). With (N, T) targets the forward pass is shared, each target
column costs one backward pass through the part above the layer, and maps are (N, T, 1, h, w).

The seed code's defective Grad-CAM lives in :mod:`attrlab.attribution.gradcam_seed_code`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autograd import layer_gradient, split_gradient
from .base import Attribution, Explanation, Layer, Target, feature_layer
from .checks import check_bool, check_image_batch
from .layer_split import ModelSplit
from .model_state import eval_semantics


def finish_map(cam: torch.Tensor, inputs: torch.Tensor, relu: bool, upsample: bool) -> torch.Tensor:
    """Rectify and resize a (N, 1, h, w) map (or (N, T, 1, h, w) for several targets) as the options ask.

    Parameters
    ----------
    cam : torch.Tensor
        The map at the layer's resolution.
    inputs : torch.Tensor
        The images (N, C, H, W) explained (their size is the upsampling target).
    relu : bool
        Keep the positive part.
    upsample : bool
        Resize bilinearly (``align_corners=False``) to (H, W).

    Returns
    -------
    torch.Tensor
        The finished map, (N, 1, h, w) or (N, 1, H, W), with the target axis kept when there is one.
    """
    if relu:
        cam = cam.clamp(min=0)
    if upsample:
        resized = F.interpolate(cam.flatten(0, -4), size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        cam = resized.view(*cam.shape[:-2], *resized.shape[-2:])
    return cam


class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_c mean_hw(dy_t / dA_c) A_c), per image and its own target.

    ``layer=None`` in :meth:`explain` is :func:`~attrlab.attribution.base.feature_layer` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    relu : bool
        Rectify the map (the papers' definition); ``False`` keeps negative evidence.
    upsample : bool
        Resize the map bilinearly to the input size; else it has the layer's resolution.
    """

    name = "gradcam"

    def __init__(self, model: nn.Module, relu: bool = True, upsample: bool = False):
        super().__init__(model)
        self.relu = check_bool("relu", relu)
        self.upsample = check_bool("upsample", upsample)

    def _channel_weighted_sum(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        # negative dimensions: the same code serves (N, C, h, w) and (N, T, C, h, w)
        return (gradient.mean((-2, -1), keepdim=True) * activation).sum(-3, keepdim=True)

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        x = check_image_batch(inputs, self.model)
        layer = feature_layer(self.model) if layer is None else layer
        return self._map(x, layer, *layer_gradient(self.model, x, target, layer))

    def explain_activation(
        self, inputs: torch.Tensor, activation: torch.Tensor, target: Target = None, layer: Layer = None
    ) -> Explanation:
        """:meth:`explain` given the activation at the layer, which another pass over ``inputs`` computed.

        Only the part of the model above the layer runs (forward and backward): a tracked step takes the activation
        from LRP's forward pass (:meth:`attrlab.lrp.LRP.explain_keeping`) instead of running the layers below twice.
        The map is the one :meth:`explain` gives when ``activation`` is the model's output at the layer.

        Parameters
        ----------
        inputs : torch.Tensor
            The images (N, C, H, W) the activation comes from.
        activation : torch.Tensor
            The model's (N, c, h, w) output at ``layer`` for ``inputs``, in eval semantics.
        target : Target
            As for :meth:`explain`.
        layer : Layer
            As for :meth:`explain` (``None``: the CAM default layer).

        Returns
        -------
        Explanation
        """
        x = check_image_batch(inputs, self.model)
        layer = feature_layer(self.model) if layer is None else layer
        if not isinstance(activation, torch.Tensor) or activation.dim() == 0 or activation.shape[0] != x.shape[0]:
            shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
            raise ValueError(f"the activation must have one row per input (N={x.shape[0]}), got {shape}")
        with eval_semantics(self.model):
            result = split_gradient(ModelSplit(self.model, layer), activation.detach(), x, target, at_layer=True)
        activation, gradient, logits, target_index = result
        if target_index.dim() == 2:  # as layer_gradient returns it: (N, 1, ...) to broadcast with (N, T, ...)
            activation = activation[:, None]
        return self._map(x, layer, activation, gradient, logits, target_index)

    def _map(
        self,
        x: torch.Tensor,
        layer: Layer,
        activation: torch.Tensor,
        gradient: torch.Tensor,
        logits: torch.Tensor,
        target_index: torch.Tensor,
    ) -> Explanation:
        """The finished map from the activation and the target logits' gradient at the layer."""
        if gradient.dim() != 3 + target_index.dim():  # (N, C, h, w), or (N, T, C, h, w) for several targets
            raise ValueError(
                f"CAM methods need a spatial layer with output (N, C, h, w); layer {layer!r} gives shape "
                f"{(gradient.shape[0], *gradient.shape[target_index.dim() :])}"
            )
        cam = self._channel_weighted_sum(activation, gradient)
        return Explanation(finish_map(cam, x, self.relu, self.upsample), logits, target_index)


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018) with the closed-form weights of its exponential-score derivation.

    alpha = g^2 / (2 g^2 + sum_hw(A) g^3) (0 where g = 0), channel weight = sum_hw(alpha ReLU(g)); the same formula
    (and epsilon 1e-6 in the denominator) as pytorch-grad-cam, so maps are comparable with it.

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    relu : bool
        Rectify the map (the papers' definition); ``False`` keeps negative evidence.
    upsample : bool
        Resize the map bilinearly to the input size; else it has the layer's resolution.
    """

    name = "gradcam_pp"

    def _channel_weighted_sum(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        squared = gradient.pow(2)
        denominator = 2 * squared + activation.sum((-2, -1), keepdim=True) * squared * gradient + 1e-6
        alpha = torch.where(gradient != 0, squared / denominator, torch.zeros_like(gradient))
        weights = (alpha * gradient.clamp(min=0)).sum((-2, -1), keepdim=True)
        return (weights * activation).sum(-3, keepdim=True)


class LayerCAM(GradCAM):
    """LayerCAM (Jiang et al. 2021): ReLU(sum_c ReLU(dy_t / dA_c) * A_c), element-wise weights instead of averages.

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    relu : bool
        Rectify the map (the papers' definition); ``False`` keeps negative evidence.
    upsample : bool
        Resize the map bilinearly to the input size; else it has the layer's resolution.
    """

    name = "layercam"

    def _channel_weighted_sum(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return (gradient.clamp(min=0) * activation).sum(-3, keepdim=True)


__all__ = ["GradCAM", "GradCAMPlusPlus", "LayerCAM", "finish_map"]
