"""A small residual network for digits and canvases: torchvision's ResNet design (BasicBlocks) at a tenth of the width.

``resnet_small`` is torchvision's ResNet with a 3x3 convolution in the stem instead of the 7x7 one with stride 2 (the
images are 28x28 or 64x64, not 224x224; the stem's 3x3 max pooling with stride 2 stays), three stages of one :class:`torchvision.models.resnet.BasicBlock` each (16, 32 and
64 channels, the last two downsampling by 2, with a 1x1 convolution and BatchNorm on the shortcut), global average
pooling and a dense layer. The blocks are torchvision's own classes, so the traced LRP engine and zennit's
``ResNetCanonizer`` see the same modules as in ``resnet18``; layer names follow torchvision (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``avgpool``, ``fc``). About 78 k parameters: it trains on digits in
well under a minute on two CPU cores.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

#: channels of the three stages
WIDTHS = (16, 32, 64)


class ResNetSmall(nn.Module):
    """torchvision's ResNet layout for small images: 3x3 stem with max pooling, three one-block stages, average pooling, dense layer.

    Parameters
    ----------
    in_channels : int
        Image channels.
    num_classes : int
        Number of logits.
    widths : tuple of int
        Channels of the three stages.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = WIDTHS):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        previous = widths[0]
        for index, width in enumerate(widths, start=1):
            stride = 1 if index == 1 else 2
            downsample = None
            if stride != 1 or previous != width:
                downsample = nn.Sequential(
                    nn.Conv2d(previous, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
                )
            self.add_module(f"layer{index}", nn.Sequential(BasicBlock(previous, width, stride, downsample)))
            previous = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # as torchvision

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, 4):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_small(in_channels: int, image_size: int, num_classes: int) -> ResNetSmall:
    """:class:`ResNetSmall` with 16, 32 and 64 channels (any image side >= 8)."""
    return ResNetSmall(in_channels, num_classes)
