"""The alignment demonstration of Böhle (2024, Fig. 5.4): one rank-r DAU, trained to maximise its mean output on noisy
copies of r digits, encodes the clean digits as the eigenvectors of ``A B``.

A DAU with the L2 rescaling and no bias computes ``‖x‖ cos(x, A B x)`` (eq. 5.3); its output is largest, ``‖x‖``,
when x is an eigenvector of ``A B`` with a positive eigenvalue. Maximising the mean output over a data set therefore
turns the r eigenvectors of ``A B`` (rank r) towards the data's most frequent patterns, like an r-dimensional PCA.
The unit is :class:`attrlab.interpretable.coda.DAUConv2d` with a kernel as large as the image (one output per image)
and its bias held at zero. Its eigenvectors come from the small r x r matrix ``B A``: ``B A v = λ v`` gives
``A B (A v) = λ A v``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .coda import DAUConv2d


class AlignmentResult(NamedTuple):
    """What :func:`train_alignment` returns."""

    unit: DAUConv2d  #: the trained unit
    eigenvectors: torch.Tensor  #: (r, C, H, W): unit-norm eigenvectors of A B, by decreasing eigenvalue, sign-aligned
    eigenvalues: torch.Tensor  #: (r,) real parts of the eigenvalues
    similarity: torch.Tensor  #: (r, k): cosine similarity of each eigenvector with each clean pattern
    outputs: torch.Tensor  #: (steps,) mean DAU output after each step (what training maximises)


def noisy_copies(patterns: torch.Tensor, count: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` samples, each one of ``patterns`` (k, C, H, W) drawn uniformly plus Gaussian noise of std ``noise``.

    Returns the samples (count, C, H, W) and which pattern each one copies (count,).
    """
    if patterns.dim() != 4 or patterns.shape[0] < 1:
        raise ValueError(f"patterns must be (k, C, H, W) with k >= 1, got shape {tuple(patterns.shape)}")
    if count < 1 or noise < 0:
        raise ValueError(f"count must be positive and noise non-negative, got count={count!r}, noise={noise!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    which = torch.randint(patterns.shape[0], (count,), generator=generator).to(patterns.device)
    disturbance = torch.randn((count, *patterns.shape[1:]), generator=generator).to(patterns.device, patterns.dtype)
    return patterns[which] + noise * disturbance, which


def eigenvectors(unit: DAUConv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The r eigenvectors of ``A B`` with non-zero eigenvalues (unit norm, real parts), by decreasing eigenvalue.

    Parameters
    ----------
    unit : DAUConv2d
        A single DAU (one output channel) with a kernel covering its whole input.

    Returns
    -------
    tuple of torch.Tensor
        Eigenvectors (r, C, k, k) and eigenvalues (r,).
    """
    if unit.out_channels != 1 or unit.rescaling == "wb":
        raise ValueError(
            f"eigenvectors needs one DAU with a shared B (rescaling l2 or sq), got {unit.out_channels} units, "
            f"rescaling {unit.rescaling!r}"
        )
    with torch.no_grad():
        a = unit.a_weight.flatten(1).T.double()  # (d, r): A
        b = unit.b_weight.flatten(1).double()  # (r, d): B
        values, vectors = torch.linalg.eig(b @ a)  # B A (r x r)
        order = values.real.argsort(descending=True)
        values, vectors = values[order].real, vectors[:, order]
        directions = (a.to(vectors.dtype) @ vectors).real.T  # (r, d): A v
        directions = directions / directions.norm(dim=1, keepdim=True)
    return directions.to(unit.a_weight.dtype).view(-1, *unit.a_weight.shape[1:]), values.to(unit.a_weight.dtype)


def train_alignment(
    samples: torch.Tensor,
    rank: int,
    steps: int = 300,
    lr: float = 0.01,
    seed: int = 0,
    patterns: torch.Tensor | None = None,
) -> AlignmentResult:
    """Train one rank-``rank`` DAU (L2 rescaling, bias 0) to maximise its mean output on ``samples`` (full batch, Adam).

    Parameters
    ----------
    samples : torch.Tensor
        (n, C, H, W) training inputs.
    rank : int
        The rank r of ``A B``.
    steps : int
        Adam steps on the whole batch.
    lr : float
        Adam learning rate.
    seed : int
        Seeds the unit's initial weights.
    patterns : torch.Tensor, optional
        (k, C, H, W) clean patterns to compare the eigenvectors with (default: none; ``similarity`` is then empty).

    Returns
    -------
    AlignmentResult
        The unit, its eigenvectors (each sign-flipped to agree with its most similar pattern), eigenvalues, the
        similarity matrix and the mean output per step.
    """
    if samples.dim() != 4 or samples.shape[-1] != samples.shape[-2]:
        raise ValueError(f"samples must be (n, C, H, W) with square images, got shape {tuple(samples.shape)}")
    channels, side = samples.shape[1], samples.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unit = DAUConv2d(channels, 1, rank, kernel_size=side, rescaling="l2").to(samples.device)
    assert unit.bias is not None  # the l2 rescaling has a bias; the demonstration holds it at zero (b = 0)
    unit.bias.requires_grad_(False)
    optimizer = torch.optim.Adam([unit.a_weight, unit.b_weight], lr=lr)
    outputs = []
    for _ in range(steps):
        mean_output = unit(samples).mean()
        optimizer.zero_grad(set_to_none=True)
        (-mean_output).backward()
        optimizer.step()
        outputs.append(mean_output.detach())
    vectors, values = eigenvectors(unit)
    similarity = torch.empty(rank, 0, device=samples.device)
    if patterns is not None:
        flat = patterns.flatten(1)
        similarity = vectors.flatten(1) @ (flat / flat.norm(dim=1, keepdim=True)).T  # (r, k)
        signs = similarity.gather(1, similarity.abs().argmax(1, keepdim=True)).sign()
        signs[signs == 0] = 1
        vectors = vectors * signs.view(-1, *([1] * (vectors.dim() - 1)))
        similarity = similarity * signs
    return AlignmentResult(unit, vectors, values, similarity, torch.stack(outputs))


def matched_similarity(similarity: torch.Tensor) -> torch.Tensor:
    """For each clean pattern (column), the cosine similarity of the eigenvector that matches it best, the matching
    one-to-one (each eigenvector at most once, chosen greedily by the largest similarity)."""
    remaining = similarity.clone()
    best = torch.full((similarity.shape[1],), float("nan"), dtype=similarity.dtype)
    for _ in range(min(similarity.shape)):
        index = int(remaining.argmax())
        row, column = divmod(index, remaining.shape[1])
        best[column] = similarity[row, column]
        remaining[row, :] = -torch.inf
        remaining[:, column] = -torch.inf
    return best


__all__ = ["AlignmentResult", "eigenvectors", "matched_similarity", "noisy_copies", "train_alignment"]
