"""The one call shape of every attribution method: ``Method(model, **settings).attribute(x, target=..., layer=...)``.

Conventions shared by all methods (captum's, with attrlab's additions):

* ``inputs``: a batch (N, C, H, W) on any device; the attribution is computed on that device, for the whole batch
  at once.
* ``target``: ``None`` (the predicted class of each image), an ``int`` (that logit for every image), or a sequence or
  1-D tensor of N class indices (for example the labels).
* ``layer``: ``None`` (attribute to the input) or the name of a sub-module (``"conv2"``, dotted paths for nested
  models) or the module itself: the attribution is then with respect to that layer's output, shaped like it.
* ``explain`` returns an :class:`Explanation` (attribution, logits of the same forward pass, the resolved targets) so
  callers that also need the prediction pay for one forward pass only; ``attribute`` returns the attribution alone.
* Methods never change the model: parameters, ``requires_grad``, the train/eval flag, hooks and ``.grad`` are as they
  were afterwards.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

Target = Union[None, int, Sequence[int], torch.Tensor]
Layer = Union[None, str, nn.Module]


@dataclass
class Explanation:
    """What one attribution call produced."""

    attribution: torch.Tensor  # shaped like the input, or like the layer's output when a layer was given
    logits: torch.Tensor  # (N, classes) of the forward pass the attribution came from
    target: torch.Tensor  # (N,) the class index explained for each image


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into a (N,) long tensor on the logits' device; see the module docstring."""
    batch, classes = logits.shape[0], logits.shape[1]
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, bool):
        raise TypeError(f"target must be None, an int or N class indices, not a bool ({target!r})")
    if isinstance(target, int):
        indices = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        indices = torch.as_tensor(target, device=logits.device)
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {indices.dtype}")
        indices = indices.long().reshape(-1)
        if indices.numel() == 1 and batch != 1:
            indices = indices.expand(batch)
        if indices.numel() != batch:
            raise ValueError(f"target has {indices.numel()} entries but the batch has {batch} images")
    # one comparison on the (already needed) device tensor; raising needs the host anyway
    if bool(((indices < 0) | (indices >= classes)).any()):
        raise ValueError(f"target holds class indices outside 0..{classes - 1}: {indices.unique().tolist()}")
    return indices


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every sub-module by its dotted name (the model itself excluded)."""
    return {name: module for name, module in model.named_modules() if name}


def resolve_layer(model: nn.Module, layer: Layer) -> nn.Module | None:
    """The sub-module ``layer`` names (``None`` stays ``None``: the input); unknown names list the valid ones."""
    if layer is None:
        return None
    layers = named_layers(model)
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in layers.values()):
            raise ValueError(f"layer {type(layer).__name__} is not a sub-module of the model")
        return layer
    if isinstance(layer, str):
        if layer not in layers:
            raise ValueError(f"unknown layer {layer!r}; valid layers: {', '.join(layers)}")
        return layers[layer]
    raise TypeError(f"layer must be None, a layer name or a module, not {type(layer).__name__}")


def last_layer_of_type(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> str:
    """The name of the last sub-module of type ``kind`` (for example the last Conv2d, Grad-CAM's default layer)."""
    names = [name for name, module in named_layers(model).items() if isinstance(module, kind)]
    if not names:
        raise ValueError(f"the model has no layer of type {kind}")
    return names[-1]


class Attribution(abc.ABC):
    """Base class of all methods: settings go to the constructor, data to :meth:`attribute`."""

    #: the registry name, set by each subclass
    name: str = ""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model

    @abc.abstractmethod
    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        """Attribute ``inputs`` (a batch) for ``target`` at ``layer``; return attribution, logits and targets."""

    def attribute(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> torch.Tensor:
        return self.explain(inputs, target=target, layer=layer).attribution
