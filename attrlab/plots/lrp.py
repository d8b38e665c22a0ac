"""Figures of the chapter on LRP for any model: composite maps side by side, and the appendix A.8 before/after maps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from .style import PAGE_WIDTH_IN, book_figure

#: the relevance colour map: red positive, blue negative, white zero
RELEVANCE_CMAP = "bwr"


def _show_relevance(ax, relevance: np.ndarray) -> None:
    """A signed map, scaled to its own largest magnitude (so maps of rules with different totals compare by shape)."""
    limit = float(np.abs(relevance).max()) or 1.0
    ax.imshow(relevance, cmap=RELEVANCE_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _wrap(label: str) -> str:
    """A registry name on short lines (underscores become line breaks after the first word)."""
    parts = label.split("_")
    lines, line = [], ""
    for part in parts:
        candidate = f"{line}_{part}" if line else part
        if len(candidate) > 10 and line:
            lines.append(line)
            line = part
        else:
            line = candidate
    lines.append(line)
    return "\n".join(lines)


@book_figure
def plot_composite_maps(
    maps: Mapping[str, Mapping[tuple[str, str], Tensor]],
    composites: Sequence[str],
    modes: Sequence[str],
) -> Figure:
    """One input relevance per composite (rows) and model and BatchNorm mode (columns), each scaled to itself.

    Parameters
    ----------
    maps : mapping
        {model label: {(composite, mode): (H, W) relevance}} (channels summed).
    composites : sequence of str
        The rows, in order.
    modes : sequence of str
        The BatchNorm modes shown for every model, in order.

    Returns
    -------
    Figure
    """
    models = list(maps)
    columns = [(model, mode) for model in models for mode in modes]
    missing = [(m, c, b) for m, b in columns for c in composites if (c, b) not in maps[m]]
    if missing:
        raise ValueError(f"maps lack (model, composite, mode) entries {missing[:3]}")
    panel = (PAGE_WIDTH_IN - 1.2) / len(columns)
    figure, axes = plt.subplots(
        len(composites),
        len(columns),
        figsize=(PAGE_WIDTH_IN, panel * len(composites) + 0.6),
        squeeze=False,
        gridspec_kw={"wspace": 0.05, "hspace": 0.08},
    )
    for row, composite in enumerate(composites):
        for col, (model, mode) in enumerate(columns):
            ax = axes[row, col]
            _show_relevance(ax, maps[model][(composite, mode)].detach().cpu().numpy())
            if row == 0:
                ax.set_title(f"{model}\n{mode}", fontsize="small")
            if col == 0:
                ax.set_ylabel(_wrap(composite), rotation=0, ha="right", va="center", fontsize="small")
    return figure


@book_figure
def plot_shift_maps(
    images: Tensor,
    maps: Mapping[str, Tensor],
    n: int,
    cells: Sequence[int],
) -> Figure:
    """Grids (rows) with their maps before and after the A.8 construction (columns), the explained cell outlined.

    Parameters
    ----------
    images : Tensor
        (G, H, W) grid images.
    maps : mapping
        {column title: (G, H, W) relevance}, in column order.
    n : int
        The grid's side in cells.
    cells : sequence of int
        The explained cell of each grid (row by row numbering).

    Returns
    -------
    Figure
    """
    count = images.shape[0]
    if len(cells) != count or any(m.shape[0] != count for m in maps.values()):
        raise ValueError("images, maps and cells must describe the same grids")
    columns = 1 + len(maps)
    side = PAGE_WIDTH_IN / columns
    figure, axes = plt.subplots(
        count, columns, figsize=(PAGE_WIDTH_IN, side * count + 0.5), squeeze=False, gridspec_kw={"wspace": 0.06}
    )
    height, width = images.shape[-2:]
    cell_h, cell_w = height / n, width / n
    for row in range(count):
        axes[row, 0].imshow(images[row].detach().cpu().numpy(), cmap="gray_r")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        for col, relevance in enumerate(maps.values(), start=1):
            _show_relevance(axes[row, col], relevance[row].detach().cpu().numpy())
        top, left = divmod(int(cells[row]), n)
        for ax in axes[row]:
            ax.add_patch(
                Rectangle(
                    (left * cell_w - 0.5, top * cell_h - 0.5),
                    cell_w,
                    cell_h,
                    fill=False,
                    edgecolor="black",
                    linewidth=1.2,
                    linestyle="--",
                )
            )
    axes[0, 0].set_title("grid", fontsize="small")
    for col, title in enumerate(maps, start=1):
        axes[0, col].set_title(title, fontsize="small")
    return figure


__all__ = ["RELEVANCE_CMAP", "plot_composite_maps", "plot_shift_maps"]
