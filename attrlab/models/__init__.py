"""Model registry: ``build_model(name, input_shape=..., num_classes=...)`` for every architecture attrlab ships."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import bcos, coda, densenet, grid, resnet, seed
from .xdnn import remove_biases

ModelBuilder = Callable[[int, int, int], nn.Module]

#: name -> (builder(in_channels, image_size, num_classes), smallest image side it accepts)
MODELS: dict[str, tuple[ModelBuilder, int]] = {
    "shallow": (seed.shallow, 4),
    "deep": (seed.deep, 8),
    "deep_bn": (seed.deep_bn, 8),
    "vgg_small": (grid.vgg_small, 4),
    "vgg_small_bn": (grid.vgg_small_bn, 4),
    "resnet_small": (resnet.resnet_small, 8),
    "densenet_small": (densenet.densenet_small, 8),
    **bcos.registry(),  # the B-cos nets: bcos, bcos_b{B}, bcos_b{B}_maxout, bcos_cifar
    **coda.registry(),  # the CoDA nets: coda, coda_l2, coda_wb
}


def _bias_free(builder: ModelBuilder) -> ModelBuilder:
    def build(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
        return remove_biases(builder(in_channels, image_size, num_classes))

    return build


#: X-DNN variants (Hesse et al. 2021): the same architectures without any bias, e.g. "deep_xdnn"
MODELS.update({f"{name}_xdnn": (_bias_free(builder), size) for name, (builder, size) in list(MODELS.items())})


def register_model(name: str, builder: ModelBuilder, min_size: int = 1) -> None:
    """Add an architecture to the registry (``builder(in_channels, image_size, num_classes) -> nn.Module``)."""
    if name in MODELS:
        raise ValueError(f"a model named {name!r} is registered already")
    MODELS[name] = (builder, min_size)


def available_models() -> list[str]:
    return sorted(MODELS)


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int | None = None,
    bias: bool = True,
) -> nn.Module:
    """Build the architecture ``name`` for square images of ``input_shape`` = (channels, height, width).

    With ``seed`` the initial weights are drawn from a generator seeded with it (the global RNG is left alone).
    ``bias=False`` builds the X-DNN variant (:func:`~attrlab.models.xdnn.remove_biases`: the same weights, no bias),
    which is also registered as ``"<name>_xdnn"``.
    """
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(available_models())}")
    builder, min_size = MODELS[name]
    if len(input_shape) != 3 or any(int(s) != s or s <= 0 for s in input_shape):
        raise ValueError(f"input_shape must be three positive integers (channels, height, width), got {input_shape!r}")
    channels, height, width = (int(s) for s in input_shape)
    if height != width:
        raise ValueError(f"model {name!r} needs square images, got height {height} and width {width}")
    if height < min_size:
        raise ValueError(f"model {name!r} needs images of at least {min_size}x{min_size}, got {height}x{width}")
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if seed is None:
        model = builder(channels, height, int(num_classes))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builder(channels, height, int(num_classes))
    return model if bias else remove_biases(model)


__all__ = ["MODELS", "available_models", "build_model", "register_model", "remove_biases"]
