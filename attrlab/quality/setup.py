"""The setting of the quality studies: single-digit canvases on a textured background, the image set, trained models.

Pahde et al. (2023) evaluated ImageNet classifiers on images with one labelled object and its bounding box. The
counterpart here is :mod:`attrlab.canvas` with one digit per 64 x 64 canvas (so the label is unambiguous) on its
smooth random texture (so relevance on the background is possible and localisation is not trivial); the digit's box
is the localisation ground truth. The models are the project's BatchNorm models trained on these canvases by the
project's trainer (:func:`train_quality_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..canvas import CanvasSplit, canvas_dataset
from ..data import ImageDataset

#: the canvases of the quality studies (keyword arguments of :func:`attrlab.canvas.canvas_dataset`)
CANVAS: dict[str, Any] = {"digits": (1, 1), "background": "texture"}
#: canvases of the training split (the digits' training images re-drawn on canvases)
TRAIN_COUNT = 3000
#: canvases of the test split, from which the image sets are drawn
TEST_COUNT = 600


def quality_dataset(train_count: int = TRAIN_COUNT, test_count: int = TEST_COUNT, seed: int = 0) -> ImageDataset:
    """The canvas data set of the quality studies (:data:`CANVAS`), on the CPU.

    Parameters
    ----------
    train_count, test_count : int
        Canvases per split.
    seed : int
        Seed of the training canvases (the test canvases use ``seed + 1``).

    Returns
    -------
    ImageDataset
    """
    return canvas_dataset(train_count=train_count, test_count=test_count, seed=seed, **CANVAS)


@dataclass
class ImageSet:
    """The images a study explains: images ``x``, explained classes ``y`` and the masks of their digits' boxes."""

    x: torch.Tensor
    y: torch.Tensor
    masks: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.x.to(device), self.y.to(device), self.masks.to(device))

    def select(self, index: torch.Tensor | slice) -> ImageSet:
        return ImageSet(self.x[index], self.y[index], self.masks[index])


def image_set(size: int, seed: int = 0, split: CanvasSplit | None = None, mask: str = "box") -> ImageSet:
    """A seeded random subset of ``size`` test canvases, explained for their digit's class.

    Parameters
    ----------
    size : int
        Number of images.
    seed : int
        Seed of the subset.
    split : CanvasSplit, optional
        The split to draw from (default: the test split of :func:`quality_dataset`).
    mask : str
        ``"box"`` (the digit's box) or ``"pixels"`` (its ink).

    Returns
    -------
    ImageSet
    """
    if split is None:
        test = quality_dataset(train_count=1).test
        assert isinstance(test, CanvasSplit)
        split = test
    chosen = split.subset(size, seed=seed)
    return ImageSet(chosen.x, chosen.y, chosen.class_masks(chosen.y, mask))


def load_quality_model(path: str | Path, model: str = "vgg_small_bn") -> nn.Module:
    """A model of the quality studies from its stored state dict (``torch.load(..., weights_only=True)``), eval mode.

    Parameters
    ----------
    path : str or Path
        The state dict file.
    model : str
        Its registered architecture.

    Returns
    -------
    torch.nn.Module
        On the CPU.
    """
    from ..models import build_model

    net = build_model(model, input_shape=(1, 64, 64), num_classes=10)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def test_accuracy(model: nn.Module, batch_size: int = 100) -> float:
    """``model``'s accuracy on the test canvases of :func:`quality_dataset`, in batches, on the model's device.

    Parameters
    ----------
    model : nn.Module
        A trained model of the quality studies, in eval mode.
    batch_size : int
        Canvases per forward pass.

    Returns
    -------
    float
    """
    test = quality_dataset(train_count=1).test
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test.y), batch_size):
            x = test.x[start : start + batch_size].to(device)
            correct += int((model(x).argmax(1).cpu() == test.y[start : start + batch_size]).sum())
    return correct / len(test.y)


def train_quality_model(
    run_dir: str | Path,
    model: str = "vgg_small_bn",
    epochs: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> nn.Module:
    """Train (or reopen, when finished) ``model`` on :func:`quality_dataset` in ``run_dir``; the model in eval mode.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (resumable, see :func:`attrlab.train.train`).
    model : str
        A registered model name.
    epochs : int
        Training epochs.
    lr : float
        Adam's initial learning rate (cosine schedule to 0; random 2-pixel crops as augmentation).
    seed : int
        Seed of the initialisation and the batches.
    device : str
        Where to train.
    progress : bool
        Show a progress bar.

    Returns
    -------
    torch.nn.Module
        The trained model on the CPU, in eval mode.
    """
    from ..train import TrainConfig, train

    config = TrainConfig(
        dataset="canvas",
        model=model,
        epochs=epochs,
        lr=lr,
        seed=seed,
        eval_every=10**6,
        lr_schedule="cosine",
        augment="crop",
        device=device,
        extra={"canvas": {key: list(value) if isinstance(value, tuple) else value for key, value in CANVAS.items()}},
    )
    run = train(run_dir, config, dataset=quality_dataset(), progress=progress)
    return run.load_model(device="cpu").eval()


__all__ = [
    "CANVAS",
    "TEST_COUNT",
    "TRAIN_COUNT",
    "ImageSet",
    "image_set",
    "load_quality_model",
    "quality_dataset",
    "test_accuracy",
    "train_quality_model",
]
