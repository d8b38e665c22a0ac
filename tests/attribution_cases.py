"""Models and images shared by the attribution tests: seed models with random and briefly trained weights.

Briefly trained = 8 Adam steps (lr 3e-3, batch 32) on digits (1x28x28; for 3x32x32 resized and repeated over 3
channels), enough to move the weights off their initialisation so gradients are not those of a random network.
Built once per session.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from attrlab.data import load_dataset
from attrlab.models import build_model

#: (architecture, shape, weights) for parametrize: every pair of architecture, shape and weights occurs once (a
#: covering design: 4 cases instead of all 8 keeps the suite fast)
CASES = [
    ("shallow", (1, 28, 28), "random"),
    ("shallow", (3, 32, 32), "trained"),
    ("deep", (1, 28, 28), "trained"),
    ("deep", (3, 32, 32), "random"),
]


@functools.cache
def digits_images(shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits training images (x, y) in ``shape`` (1x28x28 as loaded, or resized and channel-repeated)."""
    split = load_dataset("digits", device="cpu").train
    x = split.x
    if tuple(x.shape[1:]) != shape:
        x = F.interpolate(x, size=shape[1:], mode="bilinear", align_corners=False).repeat(1, shape[0], 1, 1)
    return x, split.y


@functools.cache
def _model(architecture: str, shape: tuple[int, int, int], weights: str) -> nn.Module:
    model = build_model(architecture, shape, seed=7)
    if weights == "trained":
        x, y = digits_images(shape)
        generator = torch.Generator().manual_seed(3)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(8):
            index = torch.randint(0, x.shape[0], (32,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[index]), y[index]).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@functools.cache
def _model_on(architecture: str, shape: tuple[int, int, int], weights: str, device: str) -> nn.Module:
    return copy.deepcopy(_model(architecture, shape, weights)).to(device)


def model_for(
    architecture: str, shape: tuple[int, int, int], weights: str = "trained", device: str = "cpu"
) -> nn.Module:
    """The cached model (trained on the CPU, copied to ``device``); callers must not change it (every method under
    test promises not to)."""
    if device == "cpu":
        return _model(architecture, tuple(shape), weights)
    return _model_on(architecture, tuple(shape), weights, device)


def images(shape: tuple[int, int, int], count: int = 6, offset: int = 0, device: str = "cpu") -> torch.Tensor:
    x, _ = digits_images(tuple(shape))
    return x[offset : offset + count].clone().to(device)


def noise_images(shape: tuple[int, int, int], count: int = 3, seed: int = 11) -> torch.Tensor:
    """``count`` images of uniform noise in [-1, 1] (signed inputs everywhere, no flat background)."""
    return torch.rand((count, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def editable_model(architecture: str, shape: tuple[int, int, int], weights: str = "trained") -> nn.Module:
    """A copy of :func:`model_for`'s model, for tests that train, edit or re-weight it."""
    return copy.deepcopy(model_for(architecture, shape, weights))


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """||ours - reference|| / ||reference|| (reference norm floored at 1e-12)."""
    reference = reference.detach().to(ours.dtype)
    return float((ours.detach() - reference).norm() / reference.norm().clamp_min(1e-12))


def last_conv(model: nn.Module) -> str:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)][-1]
