"""The four classifiers of seed 000's appendix (Fig. 4-7), as flat ``nn.Sequential`` models with named layers.

The seed printed its models as ``features_conv`` blocks followed by ``pool2`` and the dense head. Here the same layers
stand in one flat, ordered ``nn.Sequential`` (plus an explicit ``nn.Flatten``) so that attribution code can walk the
layers front to back and address each by name (``conv1`` ... ``fc2``). Layer shapes are exactly the seed's:

* shallow (Fig. 4 / 6): conv5x5(16) relu maxpool conv5x5(32) relu maxpool fc(10)
* deep (Fig. 5 / 7): 3 x [conv3x3 relu conv3x3 relu] (32, 64, 128) with a maxpool after each pair, fc(1024) relu fc(10)

``deep_bn`` is the deep model with a BatchNorm2d after every convolution and a BatchNorm1d after ``fc1`` (each before
its ReLU): it is not in the seed, attrlab uses it to study canonization.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def _flat_size(channels: int, size: int, pools: int) -> int:
    for _ in range(pools):
        size //= 2
    return channels * size * size


def shallow(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """Seed Fig. 4 (1x28x28: fc1 has 1568 inputs) and Fig. 6 (3x32x32: 2048 inputs)."""
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(in_channels, 16, kernel_size=5, padding=2)),
                ("relu1", nn.ReLU()),
                ("pool1", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("conv2", nn.Conv2d(16, 32, kernel_size=5, padding=2)),
                ("relu2", nn.ReLU()),
                ("pool2", nn.MaxPool2d(kernel_size=2, stride=2)),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(_flat_size(32, image_size, 2), num_classes)),
            ]
        )
    )


def _deep(in_channels: int, image_size: int, num_classes: int, batchnorm: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    widths = [32, 32, 64, 64, 128, 128]
    previous = in_channels
    for index, width in enumerate(widths, start=1):
        layers.append((f"conv{index}", nn.Conv2d(previous, width, kernel_size=3, padding="same")))
        if batchnorm:
            layers.append((f"bn{index}", nn.BatchNorm2d(width)))
        layers.append((f"relu{index}", nn.ReLU()))
        if index in (2, 4):
            layers.append((f"pool{index // 2}", nn.MaxPool2d(kernel_size=2, stride=2)))
        previous = width
    layers.append(("pool3", nn.MaxPool2d(kernel_size=2, stride=2)))
    layers.append(("flatten", nn.Flatten()))
    layers.append(("fc1", nn.Linear(_flat_size(128, image_size, 3), 1024)))
    if batchnorm:
        layers.append(("bn7", nn.BatchNorm1d(1024)))
    layers.append(("relu7", nn.ReLU()))
    layers.append(("fc2", nn.Linear(1024, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def deep(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """Seed Fig. 5 (1x28x28: fc1 has 1152 inputs) and Fig. 7 (3x32x32: 2048 inputs)."""
    return _deep(in_channels, image_size, num_classes, batchnorm=False)


def deep_bn(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """The deep model with BatchNorm after every convolution and after fc1 (for canonization studies)."""
    return _deep(in_channels, image_size, num_classes, batchnorm=True)
