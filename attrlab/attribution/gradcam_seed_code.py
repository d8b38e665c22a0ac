"""The seed code's defective Grad-CAM, reproduced on purpose (``gradcam_seed_code``): a reproduction, not a Grad-CAM.

What the public code of seed 000 (Terzieva et al., ``main/experiment_gradcam.py`` and ``GradCAMModel.py``) computes:
its model stores, through a tensor hook on the output of the feature block (the ReLU after the last convolution),
the gradient flowing back through that tensor. For each attribution image it then calls ``logit.backward()`` on
``model(inputs).data`` - a *detached* copy - so no gradient reaches the hook and the stored gradient is still the
one of the last training step: the gradient of the mean cross-entropy of the training minibatch (batch 100) with
respect to that minibatch's activations. The channel weights are this gradient averaged over the training batch and
the spatial positions, and the map is the channel *mean* (not sum) of weights x activation of the attribution image,
kept unrectified (the summaries take its positive part later).

Why that is wrong: a Grad-CAM weight must be the gradient of *that image's* target logit. Here every image of the
attribution set, whatever its class or prediction, gets the same channel weighting, taken from a training loss of
unrelated images that is largely noise from step to step. The maps are the activations seen through a random-looking
projection that changes every step, which plausibly explains the seed's "Grad-CAM shows no trend" (all ``|rho| <= 0.26``
in its Table 1). attrlab keeps this variant only to show that effect next to the correct :class:`GradCAM`.

What this class computes: the weights from ``training_batch`` (inputs, labels) as above, with the model's current
parameters, in eval semantics; the seed's models have no dropout or BatchNorm, so eval and train mode agree there.
The map is ``mean_c(w_c A_c)`` at the same layer (default: the end of the block after the last ``nn.Conv2d``, i.e.
its ReLU; ``layer=`` overrides), at layer resolution. ``target`` only selects what is reported: the map ignores it.

Feeding it during training: ``SeedCodeGradCAM(model, training_batch=(x, y))``, then per step
``method.set_training_batch(x, y)`` with the step's minibatch (``trainer.batch`` in a callback). The seed took the
gradient before ``optimizer.step()``; a callback that runs after the step gets the weights at the updated parameters
unless it calls ``set_training_batch(x, y, compute_now=True)`` before the step. The difference is one optimiser step.
The class says so through the generic protocol of :class:`~attrlab.attribution.base.Attribution`
(``wants_training_batch = True``), which the tracker checks; it is listed in ``attrlab.attribution.REPRODUCTIONS``,
not in ``METHODS``: it ignores its target, so evaluations of "every method" leave it out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    Attribution,
    Explanation,
    Layer,
    Target,
    after_elementwise,
    last_layer_of_type,
    resolve_layer,
    resolve_target,
)
from .checks import check_bool, check_image_batch
from .gradcam import finish_map
from .layer_split import ModelSplit
from .model_state import eval_semantics


def seed_code_layer(model: nn.Module) -> str:
    """The layer whose output the seed code hooked: the last ``nn.Conv2d`` and the element-wise modules after it.

    Parameters
    ----------
    model : nn.Module
        A model with at least one ``nn.Conv2d``.

    Returns
    -------
    str
        The layer's dotted name (``relu2`` for the shallow seed model, ``relu6`` for the deep ones).
    """
    return after_elementwise(model, last_layer_of_type(model, nn.Conv2d))


class SeedCodeGradCAM(Attribution):
    """The seed code's Grad-CAM: channel weights from the last training loss, shared by all images (see module doc).

    Parameters
    ----------
    model : nn.Module
        The classifier (left unchanged).
    training_batch : tuple of torch.Tensor, optional
        ``(inputs, labels)``: the training minibatch whose mean cross-entropy gives the channel weights; without it,
        :meth:`set_training_batch` must be called before the first attribution.
    relu : bool
        Rectify the map (the seed kept it unrectified).
    upsample : bool
        Resize the map bilinearly to the input size.
    """

    name = "gradcam_seed_code"
    wants_training_batch = True

    def __init__(
        self,
        model: nn.Module,
        training_batch: tuple[torch.Tensor, torch.Tensor] | None = None,
        relu: bool = False,
        upsample: bool = False,
    ):
        super().__init__(model)
        self.relu = check_bool("relu", relu)
        self.upsample = check_bool("upsample", upsample)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._weights: tuple[nn.Module | None, torch.Tensor] | None = None  # (layer, weights); None: the input
        if training_batch is not None:
            if not isinstance(training_batch, (tuple, list)) or len(training_batch) != 2:
                raise ValueError("training_batch must be a pair (inputs, labels) of tensors")
            self.set_training_batch(*training_batch)

    def set_training_batch(self, inputs: torch.Tensor, labels: torch.Tensor, compute_now: bool = False) -> None:
        """Use this training minibatch for the channel weights from now on.

        Parameters
        ----------
        inputs : torch.Tensor
            The training images (B, C, H, W).
        labels : torch.Tensor
            Their (B,) integer labels.
        compute_now : bool
            Compute the weights at once from the current parameters (at the default layer) and keep them until the
            next call, as the seed code kept the gradient of the step's ``loss.backward()``; an explicit other
            ``layer=`` recomputes them from the stored batch with the parameters of that moment.
        """
        x = check_image_batch(inputs, self.model)
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.shape != (x.shape[0],):
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},), got {labels!r:.80}")
        self._batch = (x, labels.detach())
        self._weights = None
        if check_bool("compute_now", compute_now):
            layer = resolve_layer(self.model, seed_code_layer(self.model))
            self._weights = (layer, self._training_weights(layer))

    def _training_weights(self, layer: nn.Module | None) -> torch.Tensor:
        """(1, C, 1, 1): d mean-CE(training batch) / d activation, averaged over the batch and the positions."""
        if self._batch is None:
            raise RuntimeError(
                "gradcam_seed_code needs the training minibatch: pass training_batch=(x, y) or call set_training_batch"
            )
        x, y = self._batch
        split = ModelSplit(self.model, layer)
        with eval_semantics(self.model):
            with torch.no_grad():
                activation = split.head(x)
            activation = activation.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(split.tail(activation, x), y)
                (gradient,) = torch.autograd.grad(loss, activation)
        return gradient.mean((0, 2, 3), keepdim=True)

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        x = check_image_batch(inputs, self.model)
        module = resolve_layer(self.model, seed_code_layer(self.model) if layer is None else layer)
        if self._weights is not None and self._weights[0] is module:
            weights = self._weights[1]
        else:
            weights = self._training_weights(module)
        split = ModelSplit(self.model, module)
        with eval_semantics(self.model), torch.no_grad():
            activation = split.head(x)
            logits = split.tail(activation, x)
        if activation.ndim != 4:
            raise ValueError(
                f"gradcam_seed_code needs a spatial layer; {layer!r} gives shape {tuple(activation.shape)}"
            )
        target_index = resolve_target(target, logits)
        cam = (weights * activation).mean(1, keepdim=True)
        if target_index.dim() == 2:  # the map ignores the target: the same map for every column
            cam = cam[:, None].expand(-1, target_index.shape[1], -1, -1, -1)
        return Explanation(finish_map(cam, x, self.relu, self.upsample), logits, target_index)


__all__ = ["SeedCodeGradCAM", "seed_code_layer"]
