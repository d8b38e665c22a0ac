"""The one call shape of every attribution method: ``Method(model, **settings).attribute(x, target=..., layer=...)``.

Conventions shared by all methods (captum's, with attrlab's additions):

* ``inputs``: a batch (N, C, H, W) on any device; the attribution is computed on that device, for the whole batch
  at once.
* ``target``: ``None`` (the predicted class of each image), an ``int`` (that logit for every image), or a sequence or
  1-D tensor of N class indices (for example the labels). Several targets per image: an (N, T) tensor (or nested
  sequence) of class indices; the attribution then has shape (N, T, ...), row ``[i, t]`` explaining logit
  ``target[i, t]`` of image ``i``, and every method shares its forward passes across a row's T targets (one backward
  pass per target column; perturbation methods score all T from the same perturbed forwards). Grid evaluations ask
  for every cell of a grid this way.
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

    attribution: torch.Tensor  # shaped like the input (or the layer's output); (N, T, ...) for (N, T) targets
    logits: torch.Tensor  # (N, classes) of the forward pass the attribution came from
    target: torch.Tensor  # (N,) the class index explained for each image, or (N, T)


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into a (N,) long tensor on the logits' device, or (N, T) for several targets per image; see the
    module docstring."""
    batch, classes = logits.shape[0], logits.shape[1]
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, bool):
        raise TypeError(f"target must be None, an int, N class indices or (N, T) of them, not a bool ({target!r})")
    if isinstance(target, int):
        if not 0 <= target < classes:
            raise ValueError(f"target holds class indices outside 0..{classes - 1}: [{target}]")
        return torch.full((batch,), target, dtype=torch.long, device=logits.device)
    else:
        # host targets are checked on the host, before they are copied to the logits' device
        indices = torch.as_tensor(target)
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"target must hold integer class indices, got dtype {indices.dtype}")
        if indices.dim() == 2:
            if indices.shape[0] != batch or indices.shape[1] == 0:
                raise ValueError(
                    f"a 2-D target must be (N, T) with N = {batch} images and T >= 1, got shape {tuple(indices.shape)}"
                )
            indices = indices.long()
        else:
            indices = indices.long().reshape(-1)
            if indices.numel() == 1 and batch != 1:
                indices = indices.expand(batch)
            if indices.numel() != batch:
                raise ValueError(f"target has {indices.numel()} entries but the batch has {batch} images")
    outside = ((indices < 0) | (indices >= classes)).any()
    if indices.device.type == "cpu":
        if bool(outside):
            raise ValueError(f"target holds class indices outside 0..{classes - 1}: {indices.unique().tolist()}")
    else:  # reading the flag back would stall the device every call: it is checked there and fails the next sync
        torch._assert_async(~outside, f"target holds class indices outside 0..{classes - 1}")
    return indices.to(logits.device)


def target_columns(target_index: torch.Tensor) -> torch.Tensor:
    """A resolved target as (N, T) columns (T = 1 for one target per image): methods loop over columns, not images."""
    return target_index if target_index.dim() == 2 else target_index[:, None]


def stack_targets(per_column: list[torch.Tensor]) -> torch.Tensor:
    """Per-column results (each (N, ...)) as one (N, T, ...) tensor; a single column as a view, without a copy."""
    return per_column[0][:, None] if len(per_column) == 1 else torch.stack(per_column, 1)


def per_target(attribution: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """An (N, T, ...) attribution in the caller's layout: unchanged for (N, T) targets, (N, ...) for one per image."""
    return attribution if target_index.dim() == 2 else attribution[:, 0]


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
