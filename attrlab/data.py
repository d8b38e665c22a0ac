"""Datasets as device tensors: scikit-learn digits (embedded default), the digit canvases, FashionMNIST, CIFAR10, and the
attribution set.

Every dataset is held as float tensors normalised to [-1, 1] (``Normalize(0.5, 0.5)``, as in the seed code) plus
integer labels, so the training loop only indexes tensors: no per-sample PIL transforms, no DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device

#: the value range of every normalised input: (x - 0.5) / 0.5 maps [0, 1] to [-1, 1]
INPUT_BOUNDS = (-1.0, 1.0)

DATASETS = ("digits", "canvas", "fashionmnist", "cifar10")
#: input shape (channels, height, width) and number of classes of each dataset
DATASET_SHAPES = {
    "digits": ((1, 28, 28), 10),
    "canvas": ((1, 64, 64), 10),
    "fashionmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
}
SELECTIONS = ("first", "random")

FASHIONMNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class DatasetUnavailableError(RuntimeError):
    """A dataset could neither be found on disk nor downloaded."""


@dataclass
class Split:
    """One split of a dataset: normalised images ``x`` (N, C, H, W) and labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))

    def subset(self, size: int, seed: int = 0) -> Split:
        """A fixed, seeded random subset of ``size`` samples (in increasing index order)."""
        if not 0 < size <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {size}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size].sort().values.to(self.y.device)
        return Split(self.x[index], self.y[index])


@dataclass
class ImageDataset:
    """A classification dataset held as tensors on one device."""

    name: str
    train: Split
    test: Split
    classes: list[str]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: torch.device | str) -> ImageDataset:
        return ImageDataset(self.name, self.train.to(device), self.test.to(device), self.classes)


def normalise(images01: torch.Tensor) -> torch.Tensor:
    """Map images in [0, 1] to [-1, 1], the seed code's ``Normalize(0.5, 0.5)``."""
    return (images01 - 0.5) / 0.5


def load_dataset(
    name: str = "digits",
    data_root: str | Path = "data",
    download: bool = True,
    device: str | torch.device | None = "auto",
) -> ImageDataset:
    """Load ``name`` ("digits", "canvas", "fashionmnist" or "cifar10") as normalised tensors on ``device``.

    "canvas" is :func:`attrlab.canvas.canvas_dataset` with its defaults: digits placed on 64 x 64 canvases, with boxes
    and masks (built from "digits", so it needs no download either).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    target = resolve_device(device)
    if (
        name not in ("digits", "canvas") and not Path(data_root).is_dir()
    ):  # a typo must not become a new, empty download folder
        raise DatasetUnavailableError(
            f"data_root {str(data_root)!r} ({Path(data_root).resolve()}) does not exist; create it (mkdir -p) for "
            f"{name} to be downloaded into it, or pass the folder that holds the files"
        )
    if name == "digits":
        dataset = _digits()
    elif name == "canvas":
        from .canvas import canvas_dataset

        dataset = canvas_dataset()
    elif name == "fashionmnist":
        dataset = _torchvision_dataset("FashionMNIST", Path(data_root), download)
    else:
        dataset = _torchvision_dataset("CIFAR10", Path(data_root), download)
    return dataset.to(target)


def _digits(test_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images), bilinearly resized to 1x28x28, stratified fixed split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=bunch.target
    )
    train_index, test_index = np.sort(train_index), np.sort(test_index)
    x = normalise(images)
    return ImageDataset(
        "digits",
        Split(x[train_index].contiguous(), labels[train_index]),
        Split(x[test_index].contiguous(), labels[test_index]),
        [str(digit) for digit in range(10)],
    )


_HAND_INSTALL = {
    "FashionMNIST": (
        "put the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz (from the Fashion-MNIST release) into {root}/FashionMNIST/raw/"
    ),
    "CIFAR10": (
        "put cifar-10-python.tar.gz (from the CIFAR-10 website) into {root}/, or its extracted folder "
        "cifar-10-batches-py/ into {root}/"
    ),
}


def _torchvision_dataset(kind: str, root: Path, download: bool) -> ImageDataset:
    import torchvision

    cls = getattr(torchvision.datasets, kind)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ... depending on what failed
        how = "the download failed" if download else "download=False and the files are not there"
        raise DatasetUnavailableError(
            f"could not load {kind} from {root.resolve()}: {how} ({type(err).__name__}: {err}). "
            f"Either run once on a machine with internet access (download=True), or "
            f"{_HAND_INSTALL[kind].format(root=root.resolve())} and call again."
        ) from err
    splits = [_to_split(part) for part in (train, test)]
    classes = FASHIONMNIST_CLASSES if kind == "FashionMNIST" else CIFAR10_CLASSES
    return ImageDataset(kind.lower(), splits[0], splits[1], list(classes))


def _to_split(part) -> Split:
    data = part.data
    images = torch.as_tensor(np.asarray(data))
    if images.ndim == 3:  # FashionMNIST: N, H, W
        images = images.unsqueeze(1)
    else:  # CIFAR10: N, H, W, C
        images = images.permute(0, 3, 1, 2)
    x = normalise(images.float().div_(255.0)).contiguous()
    return Split(x, torch.as_tensor(np.asarray(part.targets), dtype=torch.int64))


class BatchSampler:
    """Seeded minibatch indices addressed by global step, so a resumed run draws exactly the same batches.

    Epoch ``e`` uses a permutation drawn from a generator seeded with ``(seed, e)``; step ``s`` is batch
    ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``. The last, smaller batch of an epoch is kept.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu"):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if size <= 0:
            raise ValueError(f"cannot draw batches from an empty split (size {size})")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.device = torch.device(device)
        self.steps_per_epoch = -(-size // batch_size)
        self._epoch: int | None = None
        self._permutation: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.size, generator=generator).to(self.device)
            self._epoch = epoch
        return self._permutation  # type: ignore[return-value]

    def indices(self, step: int) -> torch.Tensor:
        epoch, batch = divmod(step, self.steps_per_epoch)
        start = batch * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]


@dataclass
class AttributionSet:
    """The images attributions are computed on: k train + k test images per class, class-major."""

    x: torch.Tensor
    y: torch.Tensor
    is_train: torch.Tensor  # bool: True for images from the training split
    index: torch.Tensor  # position of each image in its split

    def __len__(self) -> int:
        return int(self.y.shape[0])


def attribution_set(
    dataset: ImageDataset, per_class: int = 10, selection: str = "first", seed: int = 0
) -> AttributionSet:
    """Pick ``per_class`` training and ``per_class`` test images of every class.

    ``selection="first"`` takes the first images of each class in dataset order (the seed code's choice),
    ``"random"`` a seeded random choice. The result is class-major: class 0's train images, its test images, class 1...
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; valid choices: {', '.join(SELECTIONS)}")
    if per_class <= 0:
        raise ValueError(f"per_class must be positive, got {per_class}")
    generator = torch.Generator().manual_seed(seed)
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]] = []
    for label in range(dataset.num_classes):
        for split, is_train in ((dataset.train, True), (dataset.test, False)):
            candidates = torch.nonzero(split.y.cpu() == label).flatten()
            if len(candidates) < per_class:
                name = "train" if is_train else "test"
                raise ValueError(
                    f"class {label} has only {len(candidates)} {name} images, fewer than per_class={per_class}"
                )
            if selection == "random":
                candidates = candidates[torch.randperm(len(candidates), generator=generator)[:per_class]].sort().values
            chosen = candidates[:per_class].to(split.y.device)
            parts.append((split.x[chosen], split.y[chosen], chosen, is_train))
    device = dataset.device
    return AttributionSet(
        x=torch.cat([p[0] for p in parts]),
        y=torch.cat([p[1] for p in parts]),
        is_train=torch.cat([torch.full((len(p[2]),), p[3], dtype=torch.bool, device=device) for p in parts]),
        index=torch.cat([p[2] for p in parts]),
    )
