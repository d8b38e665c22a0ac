"""The thesis' appendix A.8 construction: two extra neurons that keep a DiFull model's function but move z+ relevance.

Böhle (2024, appendix A.8, after Rao et al. 2022) shows that LRP's z+ rule is not implementation invariant: in the
DiFull setting (every cell processed alone, each cell's head connected to its own cell only) one can insert a linear
layer l_c' between the final features f and the first classification layer l_c so that the logits do not change but
z+ sends nearly all relevance to the *disconnected* cells, which cannot influence the explained logit at all.
l_c' copies the connected features with an identity and adds two neurons that aggregate all activations of the
disconnected cells, one with positive and one with negative sign; both feed every neuron of l_c with weight 1, so
they cancel in l_c's output. z+ only follows positive contributions: at l_c it hands the positive aggregator a share
p / (p + connected positive contributions) of each neuron's relevance (p: the aggregated activations), and that share
flows on to the disconnected cells.

Our grid models (:mod:`attrlab.models.grid`) classify with 1x1 convolutions *before* the per-cell average pool, so a
cell's head is ``head1`` (l_c) -> ``head_relu`` -> ``head2`` at every position of the cell, then the cell's mean.
The construction as built here (:class:`ShiftedDiFull`), with the choices the thesis' text leaves open:

* **DiFull as a stack of cells.** The thesis notes DiFull equals stacking the n^2 cells along the batch dimension;
  this model does exactly that (reshape and permute, then the single-image layers, which share the grid model's
  parameters), so it is an ordinary graph the traced LRP engine can run (the grid model's own per-cell layers are not
  traceable). Without the extra neurons it is the same function as the grid model, and its LRP maps equal those of
  the grid model under the Sequential engine (tested).
* **l_c' per position** (``lift``, a 1x1 convolution with k + 2 output channels, k the feature channels): the
  identity on the k channels of f at that position, and the two aggregators with weights +1 and -1. The thesis'
  "k neurons" are l_c's inputs (the identity maps f to l_c' one to one).
* **The aggregation** of "all activations from all the disconnected regions" is their plain sum (weight 1 each), done
  by its own bias-free linear layer ``gather`` (one copy per position of each cell) before ``lift``; in the thesis it
  lies inside l_c'. Under z+ and LRP-0/epsilon the relevance the two layers pass back equals that of the single layer
  (both split in proportion to the non-negative activations, the weights being 1); under alpha-beta the extra layer
  multiplies the aggregators' positive part by alpha once more.
* **Weight 1 to l_c**: every output channel of ``head1`` gets weight 1 from each aggregator (``head1`` itself keeps
  its weights and bias), at every position, since every position of a cell is a neuron of that cell's l_c.

Nothing is trained: the function is the grid model's for every input (tested to float tolerance); only the graph
differs. :func:`outside_share` measures where relevance went: the share of the positive relevance outside the explained
cell, 1 minus the grid localisation score of :mod:`attrlab.grids.localisation`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from ..attribution.spec import MethodSpec
from ..cells import Cellwise
from .data import cell_masks
from .localisation import EMPTY_TOTAL, attribution_map, positive_mass
from .settings import GridModel


def _plain(module: nn.Module) -> nn.Module:
    """The single-image layer behind a per-cell layer (sharing its parameters); other layers as they are."""
    if isinstance(module, Cellwise) and isinstance(module, nn.Conv2d):
        plain = nn.Conv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        plain.weight = module.weight
        plain.bias = module.bias
        return plain
    if isinstance(module, Cellwise) and isinstance(module, nn.MaxPool2d):
        return nn.MaxPool2d(
            module.kernel_size, module.stride, module.padding, module.dilation, ceil_mode=module.ceil_mode
        )
    return module


class ShiftedDiFull(nn.Module):
    """A DiFull grid model as a stack of cells, with (or without) the two extra neurons of the thesis' appendix A.8.

    Parameters
    ----------
    grid : GridModel
        A grid model in the ``"difull"`` setting (:func:`attrlab.grids.grid_model`), ending in ``head1``,
        ``head_relu``, ``head2`` (the 1x1-convolution head of :mod:`attrlab.models.grid`).
    cell_size : int
        The side of one cell in pixels (the single-image size the model was trained on).
    extra_neurons : bool
        True: insert ``gather`` and ``lift`` (l_c') and widen ``head1`` by the two aggregator inputs (weight 1).
        False: the plain stack of cells (the same function and graph shape, for before/after comparisons).

    Notes
    -----
    Input: grids (N, C, n*cell_size, n*cell_size); output: (N, classes*n*n) logits in the grid model's order
    (logit ``c * n*n + cell``). Layer names: ``body.<grid layer>`` for the feature layers (``body.relu6``: f),
    ``gather``, ``lift``, ``head1``, ``head_relu``, ``head2``, ``cell_pool``. The first node reorders the input, so
    composites whose first-layer rule replaces the input (flat, w^2, z^B) do not apply; z+, epsilon, LRP-z and
    alpha-beta everywhere do.
    """

    def __init__(self, grid: GridModel, cell_size: int, extra_neurons: bool = True):
        super().__init__()
        if not isinstance(grid, GridModel) or grid.setting != "difull":
            setting = grid.setting if isinstance(grid, GridModel) else type(grid).__name__
            raise ValueError(
                f"the A.8 construction needs a DiFull grid model (grid_model(..., 'difull', n)), got {setting!r}"
            )
        names = [name for name, _ in grid.named_children()]
        if names[-5:] != ["head1", "head_relu", "head2", "cell_pool", "flatten"]:
            raise ValueError(
                "the A.8 construction needs a grid model whose head is head1, head_relu, head2 (1x1 convolutions), "
                f"cell_pool, flatten, like vgg_small's; got layers ending in {names[-5:]}"
            )
        if not isinstance(cell_size, int) or cell_size < 1:
            raise ValueError(f"cell_size must be a positive integer, got {cell_size!r}")
        children = dict(grid.named_children())
        body = [(name, _plain(module)) for name, module in grid.named_children() if name not in names[-5:]]
        self.body = nn.Sequential(OrderedDict(body))
        self.n, self.cell_size, self.num_classes = grid.n, cell_size, grid.num_classes
        first = next(m for m in self.body.modules() if isinstance(m, nn.Conv2d))
        self.in_channels = first.in_channels
        parameter = first.weight
        with torch.no_grad():
            _, channels, height, width = self.body(
                torch.zeros(1, self.in_channels, cell_size, cell_size, dtype=parameter.dtype, device=parameter.device)
            ).shape
        self.feature_shape = (channels, height, width)
        self.extra_neurons = extra_neurons
        head1 = children["head1"]
        assert isinstance(head1, nn.Conv2d)
        if extra_neurons:
            cells, positions = self.n * self.n, height * width
            # gather: per cell and position, the sum of every activation of every other cell (weight 1 each)
            gather = torch.ones(cells, positions, cells, channels * positions)
            gather[torch.arange(cells), :, torch.arange(cells)] = 0.0  # no weight from the cell's own region
            self.gather = nn.Linear(cells * channels * positions, cells * positions, bias=False)
            self.gather.weight = nn.Parameter(
                gather.reshape(cells * positions, cells * channels * positions).to(parameter),
                requires_grad=False,
            )
            # l_c': the identity on the k feature channels, +1 and -1 from the gathered sum
            lift = torch.zeros(channels + 2, channels + 1, 1, 1)
            lift[torch.arange(channels), torch.arange(channels)] = 1.0
            lift[channels, channels] = 1.0
            lift[channels + 1, channels] = -1.0
            self.lift = nn.Conv2d(channels + 1, channels + 2, kernel_size=1, bias=False)
            self.lift.weight = nn.Parameter(lift.to(parameter), requires_grad=False)
            # l_c with two more inputs, each connected with weight 1 to every neuron
            wide = nn.Conv2d(channels + 2, head1.out_channels, kernel_size=1, bias=head1.bias is not None)
            extra = torch.ones(head1.out_channels, 2, 1, 1).to(parameter)
            wide.weight = nn.Parameter(torch.cat([head1.weight.detach(), extra], 1), requires_grad=False)
            if head1.bias is not None:
                wide.bias = nn.Parameter(head1.bias.detach().clone(), requires_grad=False)
            self.head1 = wide.to(parameter)
        else:
            self.head1 = head1
        self.head_relu = children["head_relu"]
        self.head2 = children["head2"]
        self.cell_pool = nn.AdaptiveAvgPool2d(1)
        self.train(grid.training)

    def forward(self, x: Tensor) -> Tensor:
        n, side, channels = self.n, self.cell_size, self.in_channels
        # the cells of each grid as a batch, grid-major, row by row (attrlab.cells.to_cells with fixed sizes)
        cells = x.reshape(-1, channels, n, side, n, side).permute(0, 2, 4, 1, 3, 5).reshape(-1, channels, side, side)
        f = self.body(cells)
        if self.extra_neurons:
            k, height, width = self.feature_shape
            total = self.gather(f.reshape(-1, n * n * k * height * width))  # (N, cells * positions)
            f = self.lift(torch.cat([f, total.reshape(-1, 1, height, width)], 1))
        evidence = self.cell_pool(self.head2(self.head_relu(self.head1(f))))  # (N * cells, classes, 1, 1)
        # logit c * n*n + cell, as the grid model's flatten of its (N, classes, n, n) cell pool
        return evidence.reshape(-1, n * n, self.num_classes).permute(0, 2, 1).reshape(-1, self.num_classes * n * n)

    def extra_repr(self) -> str:
        return f"cells={self.n}x{self.n}, extra_neurons={self.extra_neurons}"


def shifted_difull(grid: GridModel, cell_size: int, extra_neurons: bool = True) -> ShiftedDiFull:
    """The thesis' appendix A.8 construction on a DiFull grid model; see :class:`ShiftedDiFull`.

    Parameters
    ----------
    grid : GridModel
        A DiFull grid model of ``vgg_small`` / ``vgg_small_bn`` (:func:`attrlab.grids.grid_model`).
    cell_size : int
        The side of one cell in pixels.
    extra_neurons : bool
        Insert the two extra neurons (True) or only restate the grid model as a stack of cells (False).

    Returns
    -------
    ShiftedDiFull
        A model with the grid model's outputs for every input; it shares the grid model's feature layers.
    """
    return ShiftedDiFull(grid, cell_size, extra_neurons)


def outside_share(attribution: Tensor, n: int, cells: Tensor | int) -> Tensor:
    """The share of each map's positive relevance that lies outside its explained cell.

    ``1 - L`` with ``L`` the grid localisation score (thesis eq. A.1, :mod:`attrlab.grids.localisation`), except that
    a map without positive relevance gives NaN (it has no share anywhere) instead of 1.

    Parameters
    ----------
    attribution : Tensor
        (N, C, n*h, n*w) input attributions of grids.
    n : int
        The grid's side in cells.
    cells : Tensor or int
        The explained cell of each map ((N,) long) or one cell for all.

    Returns
    -------
    Tensor
        (N,) shares in [0, 1], NaN for maps without positive relevance.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    maps = attribution_map(attribution, (attribution.shape[-2], attribution.shape[-1]))
    height, width = maps.shape[-2:]
    if height % n or width % n:
        raise ValueError(f"a {height}x{width} map does not split into {n}x{n} equal cells")
    per_cell, total = positive_mass(maps, cell_masks(n, (height // n, width // n), maps.device))
    cells = torch.as_tensor(cells, device=maps.device).long().expand(maps.shape[0])
    inside = per_cell.gather(1, cells[:, None])[:, 0]
    share = 1.0 - inside / total.clamp(min=EMPTY_TOTAL)
    return torch.where(total > EMPTY_TOTAL, share, torch.full_like(share, float("nan")))


def shift_methods() -> list[MethodSpec]:
    """The methods the A.8 comparison runs: LRP with z+ everywhere (the thesis' rule), epsilon and alpha2-beta1
    everywhere, the gradient and input x gradient (implementation invariant: they only see the function)."""
    return [
        MethodSpec("LRP z+", "lrp", {"composite": "alpha1_beta0"}),
        MethodSpec("LRP epsilon", "lrp", {"composite": "epsilon"}),
        MethodSpec("LRP alpha2-beta1", "lrp", {"composite": "alpha2_beta1"}),
        MethodSpec("Gradient", "gradient"),
        MethodSpec("IxG", "input_x_gradient"),
    ]


@dataclass
class ShiftResult:
    """The A.8 comparison on a set of grids (see :func:`compare_shift`)."""

    table: pd.DataFrame  #: one row per method: outside shares before and after, how much the maps changed
    maps: dict[tuple[str, str], Tensor]  #: (method label, "before" / "after") -> (G, C, H, W) input relevance
    logit_change: float  #: the largest absolute logit change over the grids, relative to the largest absolute logit
    logit_change_float64: float  #: the same in float64 (float32 rounds the two large aggregators' sums)


def compare_shift(
    grid: GridModel,
    cell_size: int,
    x: Tensor,
    cells: Tensor,
    targets: Tensor,
    methods: Sequence[MethodSpec] | None = None,
) -> ShiftResult:
    """Every method on the DiFull grid model before and after the A.8 construction, on the same grids and logits.

    Parameters
    ----------
    grid : GridModel
        A DiFull grid model (see :class:`ShiftedDiFull`); it is explained as it is ("before").
    cell_size : int
        The side of one cell in pixels.
    x : Tensor
        (G, C, n*cell_size, n*cell_size) grids.
    cells : Tensor
        (G,) the explained cell of each grid.
    targets : Tensor
        (G,) the explained logit of each grid (:meth:`GridModel.head_targets` of the cell and its class).
    methods : sequence of MethodSpec, optional
        Default :func:`shift_methods`.

    Returns
    -------
    ShiftResult
        ``table`` columns: ``method``, ``outside before`` and ``outside after`` (medians over the grids of
        :func:`outside_share`), ``outside after (mean)``, ``map change`` (the median over the grids of
        ``|after - before| / |before|`` in L2 norm).
    """
    if x.shape[0] != cells.shape[0] or x.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{x.shape[0]} grids need as many cells and targets, got {cells.shape[0]} and {targets.shape[0]}"
        )
    shifted = shifted_difull(grid, cell_size)
    with torch.no_grad():
        logit_change = _relative_change(grid(x), shifted(x))
        grid64 = copy.deepcopy(grid).double()
        logit_change64 = _relative_change(grid64(x.double()), shifted_difull(grid64, cell_size)(x.double()))
    rows, maps = [], {}
    for spec in methods if methods is not None else shift_methods():
        before = spec.make(grid).attribute(x, target=targets)
        after = spec.make(shifted).attribute(x, target=targets)
        maps[(spec.label, "before")], maps[(spec.label, "after")] = before, after
        outside_before, outside_after = outside_share(before, grid.n, cells), outside_share(after, grid.n, cells)
        change = (after - before).flatten(1).norm(dim=1) / before.flatten(1).norm(dim=1).clamp(min=1e-12)
        rows.append(
            {
                "method": spec.label,
                "outside before": float(outside_before.nanmedian()),
                "outside after": float(outside_after.nanmedian()),
                "outside after (mean)": float(outside_after.nanmean()),
                "map change": float(change.median()),
            }
        )
    return ShiftResult(pd.DataFrame(rows), maps, logit_change, logit_change64)


def _relative_change(before: Tensor, after: Tensor) -> float:
    return float((after - before).abs().max() / before.abs().max().clamp(min=1e-300))


def shift_claims(
    result: ShiftResult,
    nearly_all: float = 0.9,
    z_plus: str = "LRP z+",
    unchanged: Sequence[str] = ("LRP epsilon", "Gradient", "IxG"),
) -> pd.DataFrame:
    """The appendix A.8 claims, and that the methods in ``unchanged`` keep their maps, tested on ``result``.

    Parameters
    ----------
    result : ShiftResult
        :func:`compare_shift`'s result.
    nearly_all : float
        The median share of z+ relevance outside the explained cell that counts as "nearly all" (our reading).
    z_plus : str
        The label of the z+ method in ``result``.
    unchanged : sequence of str
        Labels of methods expected to keep their maps: the gradient methods only see the function (implementation
        invariance, Sundararajan et al. 2017); under LRP-0/epsilon the two aggregators hand back equal and opposite
        relevance (our derivation, see the module docstring).

    Returns
    -------
    pandas.DataFrame
        Columns "claim", "test", "measured", "holds".
    """
    table = result.table.set_index("method")
    missing = [label for label in (z_plus, *unchanged) if label not in table.index]
    if missing:
        raise ValueError(f"no method {missing[0]!r} in the result; methods: {', '.join(table.index)}")
    rows = [
        (
            "The transformed model is functionally equivalent (thesis A.8)",
            "largest |logit change| / largest |logit| <= 1e-10 in float64",
            f"float64 {result.logit_change_float64:.1e}, float32 {result.logit_change:.1e}",
            result.logit_change_float64 <= 1e-10,
        ),
        (
            "z+ shifts nearly all relevance to the disconnected cells (thesis A.8)",
            f"median share of positive z+ relevance outside the explained cell >= {nearly_all:g}",
            f"before {table.loc[z_plus, 'outside before']:.3f}, after {table.loc[z_plus, 'outside after']:.3f}",
            bool(table.loc[z_plus, "outside after"] >= nearly_all),
        ),
    ]
    for method in unchanged:
        change = float(table.loc[method, "map change"])
        rows.append(
            (
                f"{method} keeps its maps",
                "median relative L2 change of the map <= 1e-3",
                f"{change:.1e} (outside share after {table.loc[method, 'outside after']:.3f})",
                change <= 1e-3,
            )
        )
    return pd.DataFrame(rows, columns=["claim", "test", "measured", "holds"])


__all__ = [
    "ShiftResult",
    "ShiftedDiFull",
    "compare_shift",
    "outside_share",
    "shift_claims",
    "shift_methods",
    "shifted_difull",
]
