"""Grid datasets: confidently classified images tiled into seeded n x n grids with one mask per cell.

GridPG grids hold n*n distinct classes; DiFull/DiPart grids hold distinct classes except the last (bottom-right)
cell, which repeats the class of the first (top-left) cell with another image of that class. Cells are numbered row
by row (0 = top-left, n*n - 1 = bottom-right). Everything is built as whole tensors on the images' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..attribution.model_state import eval_semantics

#: grid layouts: "distinct" (GridPG) or "repeated" (DiFull, DiPart: the top-left class again at the bottom-right)
LAYOUTS = ("distinct", "repeated")


@dataclass
class ConfidentImages:
    """Images every model under test classifies correctly with softmax >= ``threshold``."""

    x: torch.Tensor  # (M, C, H, W)
    y: torch.Tensor  # (M,)
    threshold: float

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def per_class(self, num_classes: int) -> torch.Tensor:
        """How many confident images each class has."""
        return torch.bincount(self.y, minlength=num_classes)


@torch.no_grad()
def confident_images(
    models: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    threshold: float = 0.99,
    min_per_class: int = 2,
    batch_size: int = 512,
) -> ConfidentImages:
    """The images of (x, y) that every model classifies correctly with a softmax score of at least ``threshold``.

    Raises a ``ValueError`` naming the classes that keep fewer than ``min_per_class`` images (the repeated layout
    needs two images of the top-left class).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold!r}")
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise ValueError("confident_images needs at least one model")
    keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for model in models:
        with eval_semantics(model):
            probs = torch.cat([model(x[i : i + batch_size]).softmax(1) for i in range(0, len(x), batch_size)])
        score = probs.gather(1, y[:, None])[:, 0]
        keep &= (probs.argmax(1) == y) & (score >= threshold)
    num_classes = int(y.max()) + 1
    counts = torch.bincount(y[keep], minlength=num_classes).tolist()
    short = {c: n for c, n in enumerate(counts) if n < min_per_class}
    if short:
        raise ValueError(
            f"too few confident images (softmax >= {threshold}) for classes {short} (class: count); need at least "
            f"{min_per_class} per class: train the model(s) longer, lower the threshold or pass more images"
        )
    return ConfidentImages(x[keep], y[keep], threshold)


@dataclass
class GridSet:
    """A batch of n x n grids: images (G, C, n*H, n*W), the class and source image of every cell (G, n*n)."""

    images: torch.Tensor
    labels: torch.Tensor
    sources: torch.Tensor  # index of each cell's image in the confident set
    n: int
    layout: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def cells(self) -> int:
        return self.n * self.n

    @property
    def cell_size(self) -> tuple[int, int]:
        return self.images.shape[-2] // self.n, self.images.shape[-1] // self.n

    @property
    def masks(self) -> torch.Tensor:
        """(n*n, n*H, n*W) boolean: True inside each cell (the same for every grid)."""
        return cell_masks(self.n, self.cell_size, self.images.device)

    def subset(self, index: slice | torch.Tensor) -> GridSet:
        return GridSet(self.images[index], self.labels[index], self.sources[index], self.n, self.layout)


def cell_masks(n: int, cell_size: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(n*n, n*h, n*w) boolean masks of the cells of an n x n grid of h x w cells, row by row."""
    h, w = cell_size
    rows = torch.arange(n * h, device=device) // h
    cols = torch.arange(n * w, device=device) // w
    cell_of_pixel = rows[:, None] * n + cols[None, :]
    return cell_of_pixel[None] == torch.arange(n * n, device=device)[:, None, None]


def tile(cells: torch.Tensor, n: int) -> torch.Tensor:
    """(G, n*n, C, H, W) cell images, row by row -> (G, C, n*H, n*W) grids."""
    g, count, c, h, w = cells.shape
    if count != n * n:
        raise ValueError(f"{count} cells do not fill a {n}x{n} grid")
    return cells.reshape(g, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(g, c, n * h, n * w)


def make_grids(
    confident: ConfidentImages,
    count: int,
    n: int = 2,
    layout: str = "distinct",
    seed: int = 0,
    num_classes: int | None = None,
) -> GridSet:
    """``count`` seeded n x n grids of confident images in ``layout`` ("distinct" or "repeated").

    Each grid draws n*n distinct classes (n*n - 1 for "repeated", whose bottom-right cell repeats the top-left
    class with a different image) uniformly, and one image per cell uniformly within its class.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown grid layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if count <= 0:
        raise ValueError(f"count must be positive, got {count!r}")
    device = confident.y.device
    num_classes = num_classes or int(confident.y.max()) + 1
    cells = n * n
    distinct = cells if layout == "distinct" else cells - 1
    if distinct > num_classes or (layout == "repeated" and n < 2):
        raise ValueError(
            f"a {layout} {n}x{n} grid needs {distinct} distinct classes (and n >= 2); there are {num_classes}"
        )
    counts = confident.per_class(num_classes)
    needed = 2 if layout == "repeated" else 1
    if bool((counts < needed).any()):
        raise ValueError(f"every class needs at least {needed} confident images; counts per class: {counts.tolist()}")

    generator = torch.Generator().manual_seed(seed)
    # distinct classes per grid: the first columns of a random permutation of the classes, drawn for all grids at once
    classes = torch.rand(count, num_classes, generator=generator).argsort(1)[:, :distinct]
    if layout == "repeated":
        classes = torch.cat([classes, classes[:, :1]], 1)
    classes = classes.to(device)

    # images of each class sit at offsets[c] .. offsets[c] + counts[c] in the class-sorted order
    order = torch.argsort(confident.y, stable=True)
    offsets = torch.cumsum(counts, 0) - counts
    draws = torch.rand(count, cells, generator=generator).to(device)
    within = (draws * counts[classes]).long()
    if layout == "repeated":
        # another image of the same class: shift by 1 .. counts-1 places (mod counts) from the top-left one
        shift = 1 + (draws[:, -1] * (counts[classes[:, 0]] - 1)).long()
        within[:, -1] = (within[:, 0] + shift) % counts[classes[:, 0]]
    sources = order[offsets[classes] + within]
    images = tile(confident.x[sources], n)
    return GridSet(images, classes, sources, n, layout)
