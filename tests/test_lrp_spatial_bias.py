"""A BatchNorm before a *padded* convolution (Pahde et al. 2023, appendix A): the fold's bias is a spatial map.

The canonized layers compute the original outputs (eval mode, negative BatchNorm scales, border included); the rules
use the map as the layer's bias (hand-written z+ reference); pre-activation blocks (BN -> ReLU -> padded conv, the
threshold ReLU) fold too; ``attrlab.canonize.canonize``, which builds modules, still refuses the fold by name.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from test_canonize import randomise_batchnorms
from test_lrp_graph import Wrapped
from torch import nn

from attrlab.canonize import SpatialBiasError, batchnorm_affine, canonize, spatial_bias
from attrlab.lrp import LRP, Epsilon, ZPlus


def _model() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(2, 4, 3),
                relu0=nn.ReLU(),
                bn1=nn.BatchNorm2d(4),
                conv1=nn.Conv2d(4, 6, 3, padding=1, stride=2),  # BN -> padded conv: a bias map
                bn2=nn.BatchNorm2d(6),  # and a BatchNorm after it, folded into that map
                relu1=nn.ReLU(),
                flatten=nn.Flatten(),
                fc=nn.Linear(6 * 4 * 4, 5),
            )
        )
    return randomise_batchnorms(model).eval().double()


def _inputs() -> torch.Tensor:
    return torch.rand((3, 2, 10, 10), generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1


def test_spatial_bias_is_the_convolution_of_the_shift():
    """Appendix A's worked case: interior outputs get W t + b, border outputs only the taps inside the image."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.fill_(1.0)
    shift = torch.tensor([2.0], dtype=torch.float64)
    bias = spatial_bias(conv, conv.weight, None, shift, (1, 1, 4, 4))
    expected = 2.0 * torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64)
    torch.testing.assert_close(bias, expected[None])


def test_canonized_outputs_equal_the_model_and_sequential_models_use_the_traced_engine():
    model, inputs = _model(), _inputs()
    with pytest.raises(SpatialBiasError, match="padded convolution 'conv1'.*spatial bias map"):
        canonize(model)
    for engine in (model, Wrapped(model)):
        lrp = LRP(engine, "epsilon_plus_flat")
        assert lrp.traced
        explanation = lrp.explain(inputs, [0, 3, 4])
        with torch.no_grad():
            torch.testing.assert_close(explanation.logits, model(inputs))
        assert torch.isfinite(explanation.attribution).all()
    # the gradient / pass modes keep the Sequential engine
    assert not LRP(model, "epsilon_plus_flat", batchnorm="pass").traced


def test_rules_take_the_map_as_the_bias():
    """z+ on the merged conv1 (non-negative input after relu0): ``R = a W'+^T (R_z / (W'+ a + B+ + eps))`` with the
    folded weight ``W'`` and the bias map ``B`` built by hand; epsilon on the Linear."""
    model, inputs = _model(), _inputs()
    target = torch.tensor([0, 3, 4])
    eps = 1e-6
    with torch.no_grad():
        s1, t1 = batchnorm_affine(model.bn1)
        s2, t2 = batchnorm_affine(model.bn2)
        weight = model.conv1.weight * s1.view(1, -1, 1, 1) * s2.view(-1, 1, 1, 1)
        shift_image = t1.view(1, -1, 1, 1).expand(1, 4, 8, 8)
        bias = (F.conv2d(shift_image, model.conv1.weight, model.conv1.bias, 2, 1)[0]) * s2.view(-1, 1, 1) + t2.view(
            -1, 1, 1
        )
        a0 = F.relu(model.conv0(inputs))
        z1 = F.conv2d(a0, weight, None, 2, 1) + bias
        a1 = F.relu(z1).flatten(1)
        logits = model.fc(a1)
        torch.testing.assert_close(logits, model(inputs))
        r_out = torch.zeros_like(logits).scatter_(1, target[:, None], logits.gather(1, target[:, None]))
        z_fc = logits
        r_a1 = a1 * ((r_out / (z_fc + eps * torch.where(z_fc >= 0, 1.0, -1.0))) @ model.fc.weight)
        r_z1 = r_a1.view_as(z1) * (z1 > 0)
        positive = weight.clamp(min=0)
        denominator = F.conv2d(a0, positive, None, 2, 1) + bias.clamp(min=0) + eps
        back = torch.nn.grad.conv2d_input(a0.shape, positive, r_z1 / denominator, 2, 1)
        expected = a0 * back
    lrp = LRP(model, {nn.Conv2d: ZPlus(), nn.Linear: Epsilon(eps)})
    torch.testing.assert_close(lrp.attribute(inputs, target, layer="relu0"), expected)


def test_pre_activation_blocks_fold_through_the_threshold_relu():
    """BN -> ReLU -> padded (grouped) conv, as in pre-activation ResNets: threshold ReLU plus the bias map."""

    class PreActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv1 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
            self.bn2 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
            return self.head(x.mean((2, 3)))

    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = randomise_batchnorms(PreActivation()).eval().double()
    inputs = torch.rand((2, 3, 9, 9), generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    for composite in ("epsilon_plus_flat", "epsilon_gamma_box", "alpha2_beta1"):
        explanation = LRP(model, composite).explain(inputs, [1, 2])
        with torch.no_grad():
            torch.testing.assert_close(explanation.logits, model(inputs))
        assert torch.isfinite(explanation.attribution).all() and explanation.attribution.abs().sum() > 0
