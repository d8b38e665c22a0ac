"""Fully convolutional VGG-style classifiers for grid evaluations: conv blocks, a sliding 1x1-conv head, global pooling.

The classifier is applied as 1x1 convolutions *before* the global average pooling, so the same weights that classify
one 28x28 image produce a class-evidence map on an n x n grid of images (GridPG), and the grid settings of
:mod:`attrlab.grids.settings` only have to replace the final pooling (DiPart) or the padding of the spatial layers
(DiFull). The head has a hidden layer (``head1``, ``head_relu``, ``head2``): with a single linear 1x1 layer the head
would commute with the average pooling and each cell's evidence would simply add up.

Layout (flat ``nn.Sequential``, names as below; ``bn*`` only in ``vgg_small_bn``)::

    conv1 [bn1] relu1 conv2 [bn2] relu2 pool1     8 channels, full resolution
    conv3 [bn3] relu3 conv4 [bn4] relu4 pool2     16 channels, 1/2
    conv5 [bn5] relu5 conv6 [bn6] relu6           32 channels, 1/4   (relu6: the final spatial layer)
    head1 head_relu head2                         1x1 convolutions: 32 -> 32 -> classes

The widths are small on purpose: perturbation methods run hundreds of forward passes per grid on two CPU cores.
    gap flatten                                   global average pooling -> (N, classes)

Two 2x2 max-pools keep every cell of a grid aligned with whole cells of every feature map (28 -> 14 -> 7 per cell),
which DiPart's per-cell pooling and DiFull's per-cell padding need: images must have a side divisible by 4.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

#: channels of the three conv blocks
WIDTHS = (8, 16, 32)
#: the layers ML-Att evaluates at besides the input: a middle and the final spatial layer
MIDDLE_LAYER = "relu4"
FINAL_LAYER = "relu6"
#: the side of an image must be a multiple of this (two 2x2 max-pools)
SIDE_MULTIPLE = 4


def _vgg_small(in_channels: int, image_size: int, num_classes: int, batchnorm: bool) -> nn.Sequential:
    if image_size % SIDE_MULTIPLE:
        raise ValueError(f"grid models need an image side divisible by {SIDE_MULTIPLE}, got {image_size}")
    layers: list[tuple[str, nn.Module]] = []
    previous = in_channels
    index = 0
    for block, width in enumerate(WIDTHS, start=1):
        for _ in range(2):
            index += 1
            layers.append((f"conv{index}", nn.Conv2d(previous, width, kernel_size=3, padding=1)))
            if batchnorm:
                layers.append((f"bn{index}", nn.BatchNorm2d(width)))
            layers.append((f"relu{index}", nn.ReLU()))
            previous = width
        if block < len(WIDTHS):
            layers.append((f"pool{block}", nn.MaxPool2d(kernel_size=2, stride=2)))
    layers += [
        ("head1", nn.Conv2d(previous, previous, kernel_size=1)),
        ("head_relu", nn.ReLU()),
        ("head2", nn.Conv2d(previous, num_classes, kernel_size=1)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
    model = nn.Sequential(OrderedDict(layers))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # He initialisation: PyTorch's default shrinks the signal through six ReLU convs and the global average,
            # and the model without BatchNorm then barely trains in a few epochs on digits
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            assert module.bias is not None  # every convolution above is built with a bias
            nn.init.zeros_(module.bias)
    return model


def vgg_small(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """Six 3x3 convolutions in three blocks, a 1x1-conv head before global average pooling; no BatchNorm."""
    return _vgg_small(in_channels, image_size, num_classes, batchnorm=False)


def vgg_small_bn(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """:func:`vgg_small` with a BatchNorm2d after every 3x3 convolution (before its ReLU)."""
    return _vgg_small(in_channels, image_size, num_classes, batchnorm=True)
