"""A small S-CoDA-style network for digits (thesis ch. 5, Tab. B.1 scaled down): convolutional DAU layers.

Flat ``nn.Sequential`` in the layout of :mod:`attrlab.models.bcos` (the grid settings wrap it unchanged)::

    encode                        [-1, 1] images -> [u, 1 - u] with u in [0, 1] (2C channels)
    conv1 conv2(stride 2)         DAU 3x3, 16 units, rank 8
    conv3 conv4(stride 2)         DAU 3x3, 32 units, rank 16
    conv5 conv6                   DAU 3x3, 64 units, rank 16   (conv6: the final spatial layer)
    head                          DAU 1x1 -> classes, rank 16
    gap flatten                   global average pooling -> (N, classes)

The thesis pools by a global *sum*; the average used here (so the grid wrappers apply) is the sum divided by the
number of positions, a constant: a temperature T here equals T * positions there (49 for 28x28 digits).
Train with the binary cross-entropy and a temperature (``TrainConfig(loss="bce", temperature=T)``, eq. 5.12).

Registered names: ``coda`` (squashing), ``coda_l2`` (L2 rescaling), ``coda_wb`` (weight-bounded eDAUs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from ..interpretable.coda import DAUConv2d
from ..interpretable.dynamic import PairEncoding

#: (units, rank) of the three blocks
BLOCKS = ((16, 8), (32, 16), (64, 16))
HEAD_RANK = 16
SIDE_MULTIPLE = 4


def coda_digits(in_channels: int, image_size: int, num_classes: int, rescaling: str = "sq") -> nn.Sequential:
    """The digits CoDA net (module docstring) with DAU rescaling ``rescaling`` ("sq", "l2" or "wb")."""
    if image_size % SIDE_MULTIPLE:
        raise ValueError(f"CoDA digits nets need an image side divisible by {SIDE_MULTIPLE}, got {image_size}")
    layers: list[tuple[str, nn.Module]] = [("encode", PairEncoding())]
    previous, index = 2 * in_channels, 0
    for block, (width, rank) in enumerate(BLOCKS, start=1):
        for second in (False, True):
            index += 1
            stride = 2 if second and block < len(BLOCKS) else 1
            layers.append((f"conv{index}", DAUConv2d(previous, width, rank, 3, stride, 1, rescaling)))
            previous = width
    layers += [
        ("head", DAUConv2d(previous, num_classes, HEAD_RANK, 1, 1, 0, rescaling)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
    return nn.Sequential(OrderedDict(layers))


def _builder(rescaling: str):
    def build(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
        return coda_digits(in_channels, image_size, num_classes, rescaling)

    build.__doc__ = f"The digits CoDA net with {rescaling} rescaling."
    return build


def registry() -> dict[str, tuple[Callable[[int, int, int], nn.Module], int]]:
    """name -> (builder, smallest image side) for :data:`attrlab.models.MODELS`."""
    return {
        "coda": (_builder("sq"), SIDE_MULTIPLE),
        "coda_l2": (_builder("l2"), SIDE_MULTIPLE),
        "coda_wb": (_builder("wb"), SIDE_MULTIPLE),
    }
