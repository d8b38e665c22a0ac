"""A small residual network for the skip-connection question of Sixt et al. (2020, Fig. 5), and a plain trainer.

Not in :mod:`attrlab.models`: attrlab's LRP engine walks ``nn.Sequential`` models only, so this model serves the
gradient-family CSC (which reads it with forward hooks) until residual LRP lands. Every block marks the point where
its skip connection and its residual branch meet: ``blockN.entry`` (an identity at the block's input: in the backward
pass the two branches' signals are summed there) and ``blockN.out`` (the ReLU after the addition).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualBlock(nn.Module):
    """``out(x + conv2(relu(conv1(x))))`` with 3x3 convolutions of ``channels``."""

    def __init__(self, channels: int):
        super().__init__()
        self.entry = nn.Identity()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        return self.out(x + self.conv2(self.relu1(self.conv1(x))))


class SmallResNet(nn.Module):
    """conv(16) relu, block(16), pool, conv(32) relu, block(32), pool, block(32), global average pool, fc."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.block1 = ResidualBlock(width)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.block2 = ResidualBlock(2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = ResidualBlock(2 * width)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.relu1(self.conv1(x)))
        x = self.block2(self.relu2(self.conv2(self.pool1(x))))
        x = self.block3(self.pool2(x))
        return self.fc(self.flatten(self.gap(x)))

    def record_layers(self) -> list[str | None]:
        """Every Conv2d output and every block's entry and output, in forward order, with ``None`` (the input)."""
        return [None] + [
            name
            for name, module in self.named_modules()
            if isinstance(module, nn.Conv2d) or name.endswith((".entry", ".out"))
        ]


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` with Adam and cross-entropy on shuffled mini-batches (seeded); the per-epoch mean losses.

    Parameters
    ----------
    model : nn.Module
        The model (trained in place, left in eval mode).
    images, labels : torch.Tensor
        Training data on the model's device.
    epochs, batch_size : int
        Passes over the data and mini-batch size.
    lr : float
        Adam's learning rate.
    seed : int
        Seed of the shuffling.

    Returns
    -------
    list of float
        The mean training loss of each epoch.
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got epochs={epochs}, batch_size={batch_size}")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator).to(labels.device)
        total = torch.zeros((), device=labels.device)
        for first in range(0, len(order), batch_size):
            index = order[first : first + batch_size]
            optimiser.zero_grad()
            loss = F.cross_entropy(model(images[index]), labels[index])
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(index)
        losses.append(float(total) / len(labels))  # one host sync per epoch
    model.eval()
    return losses


__all__ = ["ResidualBlock", "SmallResNet", "fit"]
