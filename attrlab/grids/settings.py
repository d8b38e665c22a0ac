"""The three grid settings (GridPG, DiFull, DiPart) as flat ``nn.Sequential`` wrappers around a trained grid model.

The wrapped model must be fully convolutional and end in global average pooling (``nn.AdaptiveAvgPool2d(1)``) and an
optional ``nn.Flatten``, like ``vgg_small``. The wrappers share the model's modules (no copies of the weights) and
keep the layer names (the input is ``layer="input"``, the sentinel every method accepts), so ``layer="relu6"`` means
the same activation in every setting, and every named layer's output keeps the grid layout (N, C, n*h, n*w) with one
batch row per grid:

* **GridPG**: the model itself over the whole grid; its 1x1-conv head slides over the grid and the global average
  pool gives one logit per class: output (N, classes), target = the class of the scored cell.
* **DiPart**: the backbone and head over the whole grid; the global pool is replaced by ``nn.AdaptiveAvgPool2d(n)``,
  which averages each cell's own region of the class-evidence map (the map splits evenly into n x n cells for the
  grid models), then flattened: output (N, classes*n*n), one head per cell.
* **DiFull**: as DiPart, but every spatial layer (3x3 convolutions, max-pools) runs on each cell separately
  (:class:`CellwiseConv2d`, :class:`CellwiseMaxPool2d`: the cells go through the layer as a batch and are tiled back,
  which equals zeroing every kernel weight that reaches into another cell), so no cell can influence another cell's
  head at all.

For DiFull and DiPart, logit ``c * n*n + cell`` is head ``cell``'s score for class ``c`` (the order
``nn.Flatten`` gives; :meth:`GridModel.head_targets` builds these indices). Attribution engines that evaluate layers
functionally instead of calling them (attrlab's LRP) recognise the per-cell layers (:class:`attrlab.cells.Cellwise`)
and apply their rules cell by cell, so every method runs on the same wrapper in every setting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from ..cells import CellwiseConv2d, CellwiseMaxPool2d, from_cells, to_cells  # noqa: F401 (re-exported)

SETTINGS = ("gridpg", "difull", "dipart")
#: modules that act on each position alone (they never mix cells)
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.BatchNorm2d, nn.Identity, nn.Dropout, nn.Dropout2d)


class GridModel(nn.Sequential):
    """A grid model in one setting; see the module docstring for its outputs."""

    def __init__(self, layers: OrderedDict[str, nn.Module], setting: str, n: int, num_classes: int):
        super().__init__(layers)
        self.setting = setting
        self.n = n
        self.num_classes = num_classes

    def head_targets(self, cells: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The logit index that scores class ``classes`` for the head of ``cells`` (elementwise, long tensors)."""
        if self.setting == "gridpg":
            return classes
        return classes * (self.n * self.n) + cells

    def extra_repr(self) -> str:
        return f"setting={self.setting}, cells={self.n}x{self.n}"


def _split_at_global_pool(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], int]:
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"grid settings need a flat nn.Sequential model, got {type(model).__name__}")
    children = list(model.named_children())
    pools = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.AdaptiveAvgPool2d)]
    tail = children[pools[-1] + 1 :] if pools else []
    if (
        not pools
        or model[pools[-1]].output_size not in (1, (1, 1))
        or any(not isinstance(m, nn.Flatten) for _, m in tail)
    ):
        raise ValueError(
            "grid settings need a fully convolutional model ending in nn.AdaptiveAvgPool2d(1) (+ nn.Flatten), "
            "like build_model('vgg_small')"
        )
    # convolutions, and layers that say how many channels they give (B-cos convolutions)
    heads = [m for _, m in children[: pools[-1]] if isinstance(m, nn.Conv2d) or hasattr(m, "out_channels")]
    return children[: pools[-1]], cast(int, heads[-1].out_channels)


def _cellwise(name: str, module: nn.Module, n: int) -> nn.Module:
    if hasattr(module, "cellwise"):  # layers that know their per-cell form (B-cos convolutions, input encodings)
        return cast("Callable[[int], nn.Module]", module.cellwise)(n)
    if isinstance(module, nn.Conv2d):
        kernel = module.kernel_size
        if kernel == (1, 1) and module.stride == (1, 1) and module.padding in ((0, 0), "valid"):
            return module  # a pointwise convolution never mixes cells
        return CellwiseConv2d(module, n)
    if isinstance(module, nn.MaxPool2d):
        return CellwiseMaxPool2d(module, n)
    if isinstance(module, POINTWISE):
        return module
    raise ValueError(f"DiFull cannot disconnect the cells through layer {name!r} ({type(module).__name__})")


def grid_model(model: nn.Module, setting: str, n: int) -> GridModel:
    """Wrap the trained single-image ``model`` for n x n grids in ``setting`` ("gridpg", "difull" or "dipart")."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown grid setting {setting!r}; valid settings: {', '.join(SETTINGS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    body, num_classes = _split_at_global_pool(model)
    if setting == "gridpg":
        layers = OrderedDict(model.named_children())
    else:
        if setting == "difull":
            body = [(name, _cellwise(name, module, n)) for name, module in body]
        layers = OrderedDict(body + [("cell_pool", nn.AdaptiveAvgPool2d(n)), ("flatten", nn.Flatten())])
    wrapped = GridModel(layers, setting, n, num_classes)
    wrapped.train(model.training)
    return wrapped
