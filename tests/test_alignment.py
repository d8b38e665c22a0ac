"""Fig. 5.4 of Böhle (2024): a rank-3 DAU trained on noisy copies of three digits recovers them as eigenvectors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attrlab.data import load_dataset
from attrlab.interpretable.alignment import eigenvectors, matched_similarity, noisy_copies, train_alignment
from attrlab.interpretable.coda import DAUConv2d


def _digits(side: int = 14) -> torch.Tensor:
    data = load_dataset("digits", device="cpu")
    index = [int((data.train.y == c).nonzero()[0]) for c in (0, 1, 7)]
    return F.avg_pool2d((data.train.x[index] + 1) / 2, 28 // side)  # (3, 1, side, side) in [0, 1]


def test_eigenvectors_are_eigenvectors_of_ab():
    torch.manual_seed(0)
    unit = DAUConv2d(1, 1, rank=3, kernel_size=5, rescaling="l2")
    vectors, values = eigenvectors(unit)
    a = unit.a_weight.detach().flatten(1).T  # (d, r)
    b = unit.b_weight.detach().flatten(1)  # (r, d)
    flat = vectors.flatten(1)
    residual = flat @ (a @ b).T - values[:, None] * flat  # A B v = λ v, row by row
    assert vectors.shape == (3, 1, 5, 5)
    # real eigenvalues of a random 3x3 B A may come as a complex pair; the check holds for the real ones
    assert torch.allclose(flat.norm(dim=1), torch.ones(3), atol=1e-5)
    real = [i for i in range(3) if residual[i].abs().max() < 1e-3 * max(1.0, float(values.abs().max()))]
    assert real, "at least one real eigenvector of a rank-3 map"
    with pytest.raises(ValueError, match="one DAU"):
        eigenvectors(DAUConv2d(1, 2, rank=3, kernel_size=5, rescaling="l2"))


def test_a_rank_3_dau_recovers_the_clean_digits():
    clean = _digits()
    samples, which = noisy_copies(clean, 512, noise=0.5, seed=0)
    assert samples.shape == (512, 1, 14, 14) and set(which.tolist()) == {0, 1, 2}
    result = train_alignment(samples, rank=3, steps=300, lr=0.02, seed=0, patterns=clean)
    assert result.outputs[-1] > 2 * result.outputs[0]  # the mean output is what training maximises
    matched = matched_similarity(result.similarity)
    # each clean digit is (almost exactly) one of the eigenvectors; the digits themselves are far less alike
    flat = clean.flatten(1) / clean.flatten(1).norm(dim=1, keepdim=True)
    between = (flat @ flat.T).fill_diagonal_(0).max()
    assert matched.min() > 0.97 > between
    assert (result.eigenvalues > 0).all()


def test_untrained_unit_does_not_recover_the_digits():
    clean = _digits()
    samples, _ = noisy_copies(clean, 256, noise=0.5, seed=1)
    result = train_alignment(samples, rank=3, steps=1, lr=0.01, seed=0, patterns=clean)
    assert matched_similarity(result.similarity).min() < 0.8


def test_noisy_copies_checks_its_arguments():
    with pytest.raises(ValueError, match="patterns must be"):
        noisy_copies(torch.zeros(3, 5), 4, 0.1)
    with pytest.raises(ValueError, match="count must be positive"):
        noisy_copies(torch.zeros(3, 1, 5, 5), 0, 0.1)
