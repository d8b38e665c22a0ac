"""The matrix-chain simulation of Sixt et al. (2020, Fig. 4): do products of random matrices converge to rank 1?

A chain starts with ``rows`` (32) N(0, 1) vectors of the output dimension and multiplies them, layer by layer from the
top, with a matrix of each layer's shape (``d_out`` x ``d_in``, as the backward pass maps output relevance to
inputs). After each product the metric is the mean ``|cos|`` between the rows; ``1 - cos`` on a log axis shows the
convergence. Settings (Fig. 4a): ``vanilla`` N(0, 1); ``relu`` the same with negative entries of the product clipped
after every product but the first; ``non_negative`` max(0, N); ``positive`` ``|N|``; ``stochastic`` ``|N|`` with each output
unit's row normalised to sum 1 (relevance conserved). Fig. 4b: ``alpha_beta`` chains ``alpha W+ + beta W-`` with
``W- = min(0, W)`` (the negative part keeps its sign) and ``beta = alpha - 1``. ``learned`` uses a trained model's own
weights with the ReLU clipping.

Shapes come from the model under study: a Linear layer is its weight; a convolution is its centre tap (a 1x1
convolution, ``c_out x c_in``, the per-location view under which the paper's theory applies); a Linear layer after a
flatten of ``c`` channels is reduced to the inputs of one spatial position (the centre), as the authors reduced
VGG-16's fc1 to 512 inputs. Layers with a single input (the first convolution of a grey-scale model) are left out:
every cosine there is +-1.

Differences from the authors' notebook: the rows are renormalised after each product (cosines are scale-free; this
only avoids overflow), and the mean ``|cos|`` is over pairs of *different* rows (the notebook's mask included the
diagonal, a constant upward bias of its metric).
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn

SETTINGS = ("vanilla", "relu", "non_negative", "positive", "stochastic")
ALPHAS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0)


def vgg16_shapes(width_divisor: int = 4, classes: int = 1000) -> list[tuple[int, int]]:
    """VGG-16's (d_out, d_in) chain, top first, with every width divided by ``width_divisor`` (the authors' shapes
    at 1: fc3, fc2, fc1 reduced to one spatial position, then the 13 convolutions as centre taps; the first
    convolution's 3 inputs are kept)."""
    if width_divisor < 1:
        raise ValueError(f"width_divisor must be >= 1, got {width_divisor}")
    convs = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    convs = [max(1, c // width_divisor) for c in convs]
    fc = 4096 // width_divisor
    shapes = [(classes, fc), (fc, fc), (fc, convs[-1])]
    ins = [3, *convs[:-1]]
    shapes += [(out, inp) for out, inp in zip(convs[::-1], ins[::-1])]
    return shapes


def model_matrices(model: nn.Module) -> list[np.ndarray]:
    """The (d_out, d_in) matrix of every Conv2d / Linear layer of ``model``, top layer first (see the module docs)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    matrices: list[np.ndarray] = []
    previous_channels = None
    for module in layers:
        weight = module.weight.detach().to("cpu", torch.float64)
        if isinstance(module, nn.Conv2d):
            h, w = weight.shape[2] // 2, weight.shape[3] // 2
            matrix = weight[:, :, h, w]
            previous_channels = weight.shape[0]
        elif (
            previous_channels is not None
            and weight.shape[1] % previous_channels == 0
            and weight.shape[1] != previous_channels
        ):
            positions = weight.shape[1] // previous_channels
            side = int(round(positions**0.5))
            matrix = weight.view(weight.shape[0], previous_channels, positions)[:, :, (side // 2) * side + side // 2]
            previous_channels = weight.shape[0]
        else:
            matrix = weight
            previous_channels = weight.shape[0]
        matrices.append(matrix.numpy())
    return [m for m in matrices[::-1] if m.shape[1] > 1]


def _mean_abs_cosine(rows: np.ndarray) -> np.ndarray:
    """(chains, r, d) -> (chains,) mean ``|cos|`` over pairs of different rows."""
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero row (ReLU chains) has no direction: NaN
        unit = rows / np.linalg.norm(rows, axis=2, keepdims=True)
    gram = np.abs(unit @ unit.transpose(0, 2, 1))
    r = rows.shape[1]
    upper = np.triu_indices(r, k=1)
    pairs = gram[:, upper[0], upper[1]]
    counts = (~np.isnan(pairs)).sum(1)
    return np.where(counts > 0, np.nansum(pairs, 1) / np.maximum(counts, 1), np.nan)


def _random_matrix(
    setting: str, shape: tuple[int, int], chains: int, rng: np.random.Generator, alpha: float
) -> np.ndarray:
    w = rng.standard_normal((chains, *shape))
    if setting in ("vanilla", "relu"):
        return w
    if setting == "non_negative":
        return np.maximum(w, 0)
    if setting == "positive":
        return np.abs(w)
    if setting == "stochastic":
        w = np.abs(w)
        return w / w.sum(2, keepdims=True)
    if setting == "alpha_beta":
        return alpha * np.maximum(w, 0) + (alpha - 1) * np.minimum(w, 0)
    raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}, alpha_beta, learned")


def simulate(
    shapes: list[tuple[int, int]],
    setting: str,
    chains: int = 20,
    rows: int = 32,
    alpha: float = 1.0,
    seed: int = 0,
    matrices: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Mean ``|cos|`` between the rows after each product, for every chain.

    Parameters
    ----------
    shapes : list of (int, int)
        (d_out, d_in) of each matrix, top first (:func:`model_matrices` gives a model's).
    setting : str
        One of :data:`SETTINGS`, ``"alpha_beta"`` (with ``alpha``) or ``"learned"`` (with ``matrices``).
    chains : int
        Independent chains (20 in the paper).
    rows : int
        Rows of the start matrix (32).
    alpha : float
        alpha of the ``alpha_beta`` setting (beta = alpha - 1).
    seed : int
        Seed of numpy's generator.
    matrices : list of numpy.ndarray, optional
        The fixed matrices of the ``learned`` setting (then ``shapes`` is ignored).

    Returns
    -------
    numpy.ndarray
        (chains, layers) mean ``|cos|`` after each product.
    """
    if chains < 1 or rows < 2:
        raise ValueError(f"need chains >= 1 and rows >= 2, got chains={chains}, rows={rows}")
    if setting == "learned":
        if not matrices:
            raise ValueError("the 'learned' setting needs the model's matrices (model_matrices(model))")
        shapes = [m.shape for m in matrices]
    elif setting not in (*SETTINGS, "alpha_beta"):
        raise ValueError(f"unknown setting {setting!r}; valid: {', '.join(SETTINGS)}, alpha_beta, learned")
    if not shapes:
        raise ValueError("the chain needs at least one matrix shape")
    rng = np.random.default_rng(seed)
    current = rng.standard_normal((chains, rows, shapes[0][0]))
    result = np.empty((chains, len(shapes)))
    for index, shape in enumerate(shapes):
        if setting == "learned":
            assert matrices is not None  # the 'learned' setting checked them above
            w = np.broadcast_to(matrices[index], (chains, *shape))
        else:
            w = _random_matrix(setting, cast("tuple[int, int]", tuple(shape)), chains, rng, alpha)
        current = current @ w
        if setting in ("relu", "learned") and index > 0:
            current = np.maximum(current, 0)
        norms = np.linalg.norm(current, axis=2, keepdims=True)
        current = current / np.where(norms > 0, norms, 1.0)
        result[:, index] = _mean_abs_cosine(current)
    return result


def simulation_frame(
    shapes: list[tuple[int, int]],
    chains: int = 20,
    rows: int = 32,
    seed: int = 0,
    alphas: tuple[float, ...] = ALPHAS,
    learned: list[np.ndarray] | None = None,
) -> pd.DataFrame:
    """All settings of Fig. 4a/4b (and ``learned`` when given) as one long frame.

    Returns
    -------
    pandas.DataFrame
        Columns ``setting``, ``alpha`` (NaN outside alpha-beta), ``step`` (1-based product count), ``chain``,
        ``cos`` and ``one_minus_cos``.
    """
    runs: list[tuple[str, float, np.ndarray]] = [
        (s, float("nan"), simulate(shapes, s, chains, rows, seed=seed)) for s in SETTINGS
    ]
    runs += [("alpha_beta", a, simulate(shapes, "alpha_beta", chains, rows, a, seed)) for a in alphas]
    if learned:
        runs.append(("learned", float("nan"), simulate([], "learned", chains, rows, seed=seed, matrices=learned)))
    frames = []
    for setting, alpha, values in runs:
        chain, step = np.meshgrid(np.arange(values.shape[0]), np.arange(1, values.shape[1] + 1), indexing="ij")
        frames.append(
            pd.DataFrame(
                {
                    "setting": setting,
                    "alpha": alpha,
                    "step": step.ravel(),
                    "chain": chain.ravel(),
                    "cos": values.ravel(),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    frame["one_minus_cos"] = 1.0 - frame["cos"]
    return frame


__all__ = ["ALPHAS", "SETTINGS", "model_matrices", "simulate", "simulation_frame", "vgg16_shapes"]
