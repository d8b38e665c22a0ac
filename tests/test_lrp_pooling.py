"""LRP's own max pooling (:func:`attrlab.lrp.layers.max_pool2d`): PyTorch's maxima, bit for bit, in every layout case."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attrlab.lrp.layers import max_pool2d

CASES = [  # kernel, stride, padding, dilation, ceil_mode
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),  # overlapping windows, padded (the ResNet stem)
    (3, 3, 1, 2, True),
    ((2, 3), (1, 2), (1, 0), 1, True),
]


def _tied(device: str) -> torch.Tensor:
    """Activations with exactly tied maxima (a constant background after a ReLU, like the digits') and a NaN."""
    x = torch.rand(3, 5, 9, 11, device=device)
    x[:, :, :4] = 0.25
    x[0, 1, 6, 6] = float("nan")
    return x


@pytest.mark.parametrize("kernel, stride, padding, dilation, ceil_mode", CASES)
def test_max_pool2d_gives_pytorchs_maxima_and_gradient(device, kernel, stride, padding, dilation, ceil_mode):
    x = _tied(device)
    expected = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    with torch.no_grad():  # the channels-last path on the CPU
        ours = max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    assert ours.is_contiguous()
    torch.testing.assert_close(ours, expected, rtol=0, atol=0, equal_nan=True)
    leaf = x.clone().requires_grad_(True)
    grad = torch.rand_like(expected)
    (ours_grad,) = torch.autograd.grad(max_pool2d(leaf, kernel, stride, padding, dilation, ceil_mode), leaf, grad)
    (reference,) = torch.autograd.grad(
        F.max_pool2d(leaf, kernel, stride, padding, dilation, ceil_mode=ceil_mode), leaf, grad
    )
    assert torch.equal(ours_grad, reference)
