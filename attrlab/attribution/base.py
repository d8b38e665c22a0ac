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
* ``layer``: ``"input"`` (:data:`INPUT`, attribute to the input) or the name of a sub-module (``"conv2"``, dotted
  paths for nested models) or the module itself: the attribution is then with respect to that layer's output, shaped
  like it. ``None`` is each method's default layer: the input for the gradient, perturbation and LRP methods (kept
  for backward compatibility), the last spatial feature layer after its activation for the CAM methods
  (:func:`feature_layer`).
* ``explain`` returns an :class:`Explanation` (attribution, logits of the same forward pass, the resolved targets) so
  callers that also need the prediction pay for one forward pass only; ``attribute`` returns the attribution alone.
* Methods never change the model: parameters, ``requires_grad``, the train/eval flag, hooks and ``.grad`` are as they
  were afterwards.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

Target = None | int | Sequence[int] | torch.Tensor
Layer = None | str | nn.Module

#: the layer name that means the model input, accepted by every method and by :func:`resolve_layer`
INPUT = "input"
#: modules that keep a feature map's shape and act per position: the CAM default layer extends over them
ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


@dataclass
class Explanation:
    """What one attribution call produced."""

    attribution: torch.Tensor  # shaped like the input (or the layer's output); (N, T, ...) for (N, T) targets
    logits: torch.Tensor  # (N, classes) of the forward pass the attribution came from
    target: torch.Tensor  # (N,) the class index explained for each image, or (N, T)


def resolve_target(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Turn ``target`` into class indices on the logits' device.

    Parameters
    ----------
    target : None, int, sequence of int or torch.Tensor
        ``None`` (each row's arg-max), an ``int`` (for every row), N indices, or an (N, T) tensor / nested sequence of
        T indices per row; see the module docstring.
    logits : torch.Tensor
        The (N, classes) logits the targets refer to.

    Returns
    -------
    torch.Tensor
        A (N,) long tensor, or (N, T) for several targets per row. Indices outside ``0..classes-1``, float or bool
        targets and wrong lengths raise an error naming them.
    """
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
    """A resolved target as (N, T) columns (T = 1 for one target per image): methods loop over columns, not images.

    Parameters
    ----------
    target_index : torch.Tensor
        A resolved (N,) or (N, T) target.

    Returns
    -------
    torch.Tensor
        (N, T), a view.
    """
    return target_index if target_index.dim() == 2 else target_index[:, None]


def stack_targets(per_column: list[torch.Tensor]) -> torch.Tensor:
    """Per-column results (each (N, ...)) as one (N, T, ...) tensor; a single column as a view, without a copy.

    Parameters
    ----------
    per_column : list of torch.Tensor
        One (N, ...) result per target column.

    Returns
    -------
    torch.Tensor
        (N, T, ...).
    """
    return per_column[0][:, None] if len(per_column) == 1 else torch.stack(per_column, 1)


def per_target(attribution: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """An (N, T, ...) attribution in the caller's layout: unchanged for (N, T) targets, (N, ...) for one per image.

    Parameters
    ----------
    attribution : torch.Tensor
        (N, T, ...).
    target_index : torch.Tensor
        The resolved target the caller passed: (N, T) or (N,).

    Returns
    -------
    torch.Tensor
    """
    return attribution if target_index.dim() == 2 else attribution[:, 0]


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every sub-module by its dotted name (the model itself excluded).

    Parameters
    ----------
    model : nn.Module
        The model.

    Returns
    -------
    dict of str to nn.Module
        In registration order (execution order for ``nn.Sequential`` models).
    """
    return {name: module for name, module in model.named_modules() if name}


def resolve_layer(model: nn.Module, layer: Layer) -> nn.Module | None:
    """The sub-module ``layer`` names; ``None`` for the input.

    Parameters
    ----------
    model : nn.Module
        The model whose layer is meant.
    layer : None, str or nn.Module
        ``"input"`` (:data:`INPUT`) or ``None``: the model input; a name of :func:`named_layers` (dotted for nested
        models); or a sub-module of ``model``.

    Returns
    -------
    nn.Module or None
        The sub-module, or ``None`` for the input. Unknown names raise a ``ValueError`` listing the valid ones; a
        model with its own sub-module named ``"input"`` makes that name ambiguous and raises (pass the module).
    """
    if layer is None:
        return None
    layers = named_layers(model)
    if isinstance(layer, nn.Module):
        if not any(module is layer for module in layers.values()):
            raise ValueError(f"layer {type(layer).__name__} is not a sub-module of the model")
        return layer
    if isinstance(layer, str):
        if layer == INPUT:
            if INPUT in layers:
                raise ValueError(
                    f"layer {INPUT!r} is ambiguous: it means the model input, and the model also has a sub-module "
                    f"named {INPUT!r} ({type(layers[INPUT]).__name__}); pass that module itself to mean it"
                )
            return None
        if layer not in layers:
            raise ValueError(f"unknown layer {layer!r}; valid layers: {', '.join(layers)} (and {INPUT!r}: the input)")
        return layers[layer]
    raise TypeError(f"layer must be None, 'input', a layer name or a module, not {type(layer).__name__}")


def last_layer_of_type(model: nn.Module, kind: type[nn.Module] | tuple[type[nn.Module], ...]) -> str:
    """The name of the last sub-module of type ``kind`` (for example the last ``nn.Conv2d``).

    Parameters
    ----------
    model : nn.Module
        The model, its sub-modules in registration order (execution order for ``nn.Sequential`` models).
    kind : type or tuple of types
        The module type(s) looked for.

    Returns
    -------
    str
        The dotted name; a model without such a layer raises a ``ValueError``.
    """
    names = [name for name, module in named_layers(model).items() if isinstance(module, kind)]
    if not names:
        raise ValueError(f"the model has no layer of type {kind}")
    return names[-1]


def after_elementwise(model: nn.Module, name: str) -> str:
    """The last leaf layer of the run of :data:`ELEMENTWISE` modules that directly follows layer ``name``.

    Parameters
    ----------
    model : nn.Module
        The model, its leaf modules in registration order.
    name : str
        A leaf layer's dotted name (a convolution).

    Returns
    -------
    str
        ``name`` itself when no element-wise module follows it, else the name of the last one of that run (for
        ``conv -> bn -> relu`` the ReLU).
    """
    modules = named_layers(model)
    leaves = [leaf for leaf, module in modules.items() if next(module.children(), None) is None]
    index = leaves.index(name)
    while index + 1 < len(leaves) and isinstance(modules[leaves[index + 1]], ELEMENTWISE):
        index += 1
    return leaves[index]


def feature_layer(model: nn.Module) -> str:
    """The CAM methods' default layer: the last spatial feature layer, after its activation.

    The rule: take the last ``nn.Conv2d`` whose kernel is larger than 1x1 (a spatial feature convolution; 1x1
    convolutions after it are a pointwise classifier head, like ``vgg_small``'s ``head1``/``head2``, whose output is
    the class-evidence map rather than features), or the last ``nn.Conv2d`` of any kernel when all are 1x1; then
    extend over the element-wise modules that directly follow it (BatchNorm, the activation, dropout:
    :data:`ELEMENTWISE`). On the seed models that is ``relu2`` (shallow) or ``relu6`` (deep, deep_bn), on
    ``vgg_small`` and its grid wrappers ``relu6``.

    Parameters
    ----------
    model : nn.Module
        A model with at least one ``nn.Conv2d`` (sub-modules in execution order, as in ``nn.Sequential`` models).

    Returns
    -------
    str
        The dotted layer name.
    """
    convolutions = [name for name, module in named_layers(model).items() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError("the CAM methods' default layer is the last spatial convolution; the model has no nn.Conv2d")
    modules = named_layers(model)
    spatial = [name for name in convolutions if tuple(cast(nn.Conv2d, modules[name]).kernel_size) != (1, 1)]
    return after_elementwise(model, (spatial or convolutions)[-1])


class Attribution(abc.ABC):
    """Base class of all methods: settings go to the constructor, data to :meth:`attribute` / :meth:`explain`.

    Parameters
    ----------
    model : nn.Module
        The classifier to explain (returning (N, classes) logits). Methods never change it.

    Notes
    -----
    A subclass sets :attr:`name` (its registry name) and implements :meth:`explain`. Settings that depend on the batch
    (a baseline tensor per image) are keyword arguments of :meth:`explain`, which :meth:`attribute` passes on.
    """

    #: the registry name, set by each subclass
    name: str = ""
    #: True for a method that needs the training minibatch of the step it explains (a reproduction of published code
    #: that reads it, :class:`~attrlab.attribution.gradcam_seed_code.SeedCodeGradCAM`): a training-time caller
    #: (the tracker) then calls :meth:`set_training_batch` with the step's minibatch before the optimiser step.
    wants_training_batch: bool = False

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model

    @abc.abstractmethod
    def explain(self, inputs: torch.Tensor, target: Target = None, layer: Layer = None) -> Explanation:
        """Attribute ``inputs`` (a batch) for ``target`` at ``layer``; return attribution, logits and targets.

        Parameters
        ----------
        inputs : torch.Tensor
            A batch (N, C, H, W) (some methods take any (N, ...)) on any device; the attribution is computed there,
            for the whole batch at once.
        target : None, int, sequence of int or torch.Tensor
            ``None``: each image's predicted class; an ``int``: that class for every image; N class indices (a
            sequence or a 1-D tensor, for example the labels); or an (N, T) tensor of T classes per image, explained
            from shared forward passes (see :func:`resolve_target`).
        layer : None, str or nn.Module
            ``"input"`` (:data:`INPUT`) for the input, a layer name (dotted for nested models) or the sub-module
            itself; ``None`` is the method's default layer (the input, except for the CAM methods:
            :func:`feature_layer`).

        Returns
        -------
        Explanation
            ``attribution`` shaped like the input or the layer's output ((N, T, ...) for (N, T) targets; CAM maps
            are (N, 1, h, w)), the ``logits`` of the same forward pass and the resolved ``target``.
        """

    def attribute(
        self, inputs: torch.Tensor, target: Target = None, layer: Layer = None, **call_arguments: Any
    ) -> torch.Tensor:
        """The attribution alone: ``explain(inputs, target, layer, **call_arguments).attribution``.

        Parameters
        ----------
        inputs : torch.Tensor
            A batch (N, C, H, W); see :meth:`explain`.
        target : None, int, sequence of int or torch.Tensor
            See :meth:`explain`.
        layer : None, str or nn.Module
            See :meth:`explain`.
        **call_arguments
            Batch-dependent settings the method's :meth:`explain` takes (``baselines=`` for Integrated Gradients,
            Occlusion and RISE).

        Returns
        -------
        torch.Tensor
            Shaped like the input or the layer's output; (N, T, ...) for (N, T) targets.
        """
        return self.explain(inputs, target=target, layer=layer, **call_arguments).attribution

    def set_training_batch(self, inputs: torch.Tensor, labels: torch.Tensor, compute_now: bool = False) -> None:
        """Hand the method the training minibatch of the coming step (only where :attr:`wants_training_batch`).

        Parameters
        ----------
        inputs : torch.Tensor
            The step's training images (B, C, H, W).
        labels : torch.Tensor
            Their (B,) integer labels.
        compute_now : bool
            Derive what the method needs from the batch now, with the parameters of this moment (a caller that
            runs before the optimiser step passes True).
        """
        raise TypeError(f"attribution method {self.name or type(self).__name__!r} does not use a training batch")
