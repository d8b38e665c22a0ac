"""Image grids as batches of cells: the layout conversion and the layers that act on each cell of a grid alone.

An n x n grid of images (N, C, n*h, n*w) becomes a batch of its cells (N*n*n, C, h, w), grid-major with the cells of
a grid row by row, and back. :class:`CellwiseConv2d` and :class:`CellwiseMaxPool2d` run their layer on the cells
as a batch and tile the result back into the grid, which equals zeroing every kernel weight that would reach into
another cell: DiFull (:mod:`attrlab.grids.settings`) disconnects the cells of a grid this way.

Both are marked :class:`Cellwise`, so code that does not call a layer's ``forward`` but evaluates it from its
parameters (attrlab's LRP rules) can find out that it must apply the layer per cell (:meth:`Cellwise.split`,
:meth:`Cellwise.merge`). This module sits below both the grids and the LRP engine, so neither imports the other.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn


def to_cells(x: torch.Tensor, n: int) -> torch.Tensor:
    """(N, C, n*h, n*w) grids -> (N*n*n, C, h, w) cells (grid-major, cells row by row)."""
    batch, channels, height, width = x.shape
    if height % n or width % n:
        raise ValueError(f"a {height}x{width} map does not split into {n}x{n} equal cells")
    h, w = height // n, width // n
    return x.reshape(batch, channels, n, h, n, w).permute(0, 2, 4, 1, 3, 5).reshape(batch * n * n, channels, h, w)


def from_cells(x: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`to_cells`: (N*n*n, C, h, w) -> (N, C, n*h, n*w)."""
    count, channels, h, w = x.shape
    batch = count // (n * n)
    return x.reshape(batch, n, n, channels, h, w).permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, n * h, n * w)


class Cellwise:
    """Marks a layer that acts on each cell of an n x n grid alone; ``n`` is the grid's side."""

    n: int

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The grid-layout tensor as a batch of its cells."""
        return to_cells(x, self.n)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of cells back in the grid layout."""
        return from_cells(x, self.n)

    def cell_shape(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """The shape :meth:`split` gives a tensor of grid-layout ``shape`` (without building it)."""
        batch, channels, height, width = shape
        return (batch * self.n * self.n, channels, height // self.n, width // self.n)


class CellwiseConv2d(Cellwise, nn.Conv2d):
    """A ``Conv2d`` that convolves each cell of an n x n grid on its own (zero padding at every cell border).

    Being a ``Conv2d`` subclass that only swaps the input layout inside ``_conv_forward``, rules that modify the
    weights and call the module's forward (zennit-style LRP) still see a convolution.
    """

    def __init__(self, conv: nn.Conv2d, n: int):
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            # Conv2d's attributes are typed tuple[int, ...] in torch's stubs; a Conv2d's are pairs
            cast("tuple[int, int]", conv.kernel_size),
            stride=cast("tuple[int, int]", conv.stride),
            padding=cast("str | tuple[int, int]", conv.padding),
            dilation=cast("tuple[int, int]", conv.dilation),
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        # share the trained parameters (no copy)
        self.weight = conv.weight
        self.bias = conv.bias
        self.n = n

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.merge(super()._conv_forward(self.split(input), weight, bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cells={self.n}x{self.n}"


class CellwiseMaxPool2d(Cellwise, nn.MaxPool2d):
    """A ``MaxPool2d`` applied to each cell of an n x n grid on its own."""

    def __init__(self, pool: nn.MaxPool2d, n: int):
        super().__init__(
            pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode
        )
        self.n = n

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.merge(super().forward(self.split(input)))


__all__ = ["Cellwise", "CellwiseConv2d", "CellwiseMaxPool2d", "from_cells", "to_cells"]
