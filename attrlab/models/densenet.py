"""A small densely connected network for digits and canvases: torchvision's DenseNet-BC with a small stem and blocks.

``densenet_small`` is an instance of :class:`torchvision.models.DenseNet` (growth rate 8, three dense blocks of two
BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 layers, bottleneck width 2 x growth, transitions halving the channels and the side)
whose stem convolution is a 3x3 one with 16 channels and stride 1 instead of 7x7 with stride 2 (the images are 28x28
or 64x64, not 224x224; the stem's max pooling stays). Being
torchvision's own class, it has the BN -> ReLU -> Conv pattern (Pahde et al. 2023's threshold-ReLU canonization), the
concatenations and the final ``norm5`` -> ReLU -> average pooling -> ``classifier`` chain of ``densenet121``, and its
layer names (``features.denseblock1.denselayer1.conv1``, ``features.transition1.conv``, ``classifier``). About 11 k
parameters: it trains on digits in well under a minute on two CPU cores.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import DenseNet

GROWTH_RATE = 8
BLOCKS: Any = (2, 2, 2)  # torchvision annotates block_config as a 4-tuple; any length works
STEM_CHANNELS = 16


def densenet_small(in_channels: int, image_size: int, num_classes: int) -> DenseNet:
    """torchvision's DenseNet-BC (growth 8, blocks (2, 2, 2)) with a 3x3 stem convolution for small images (side >= 8)."""
    model = DenseNet(
        growth_rate=GROWTH_RATE,
        block_config=BLOCKS,
        num_init_features=STEM_CHANNELS,
        bn_size=2,
        num_classes=num_classes,
    )
    stem = nn.Conv2d(in_channels, STEM_CHANNELS, kernel_size=3, padding=1, bias=False)
    nn.init.kaiming_normal_(stem.weight)  # as torchvision initialises its stem
    model.features.conv0 = stem
    return model
