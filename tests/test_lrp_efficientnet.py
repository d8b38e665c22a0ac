"""torchvision's EfficientNet-B0 (random weights, 64x64, float32: torch's float64 depthwise convolution on the CPU
is some 30x slower than float32) through the traced LRP engine: depthwise convolutions, SiLU,
squeeze-excitation gates, stochastic depth and residual additions; zennit has no canonizer for its gates, so the
invariants are tested: the canonized graph's outputs, conservation, and "signal takes it all" at every gate."""

from __future__ import annotations

import pytest
import torch
from test_canonize import randomise_batchnorms
from torch import nn

from attrlab.lrp import LRP

torchvision = pytest.importorskip("torchvision")
TARGET = [1, 7]


def _efficientnet() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.efficientnet_b0(num_classes=10)
    return randomise_batchnorms(model).eval()


def _inputs() -> torch.Tensor:
    return torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.slow
def test_efficientnet_b0_outputs_modes_and_gates():
    """Canonized outputs equal the model's (negative BatchNorm scales included); every BatchNorm mode gives a finite
    map; at each squeeze-excitation block the signal takes all the relevance: relevance at the gated product equals
    relevance at the signal entering it, element by element."""
    model, inputs = _efficientnet(), _inputs()[:1]
    lrp = LRP(model, "epsilon_plus_flat")
    explanation = lrp.explain(inputs, TARGET[:1])
    with torch.no_grad():
        expected = model(inputs)
    assert (model.features[1][0].block[0][1].weight < 0).any()  # negative BatchNorm scales are folded too
    torch.testing.assert_close(explanation.logits, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
    assert explanation.attribution.shape == inputs.shape and explanation.attribution.abs().sum() > 0
    # features.4.1: expand (1x1) -> depthwise (3x3) -> squeeze-excitation -> project; the SE module's input is the
    # depthwise block's output
    gated = lrp.attribute(inputs, TARGET[:1], layer="features.4.1.block.2")
    signal = lrp.attribute(inputs, TARGET[:1], layer="features.4.1.block.1")
    torch.testing.assert_close(gated, signal, rtol=1e-5, atol=1e-7 * float(signal.abs().max()))
    assert signal.abs().sum() > 0
    for mode in ("gradient", "pass"):
        relevance = LRP(model, "epsilon_plus_flat", batchnorm=mode).attribute(inputs, TARGET[:1])
        assert torch.isfinite(relevance).all() and relevance.abs().sum() > 0


def _calibrated_without_shifts() -> nn.Module:
    """EfficientNet-B0 whose signals stay of order 1 through its 16 blocks (BatchNorm statistics of random inputs,
    scales of both signs) and with no bias on the signal's path (BatchNorm shifts 0, classifier bias 0). With
    ``randomise_batchnorms``' statistics and zero shifts the logits fall to 1e-14 (SiLU and the gates about halve
    the signal per block) and any stabilizer would swallow the relevance."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.efficientnet_b0(num_classes=10)
    generator = torch.Generator().manual_seed(1)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None  # running statistics = the statistics of the batch below
            norm.reset_running_stats()
            sign = torch.where(torch.rand(norm.num_features, generator=generator) < 0.2, -1.0, 1.0)
            norm.weight.copy_(sign * (torch.rand(norm.num_features, generator=generator) + 0.5))
        model.train()(torch.rand((8, 3, 32, 32), generator=generator) * 2 - 1)
        model.eval()
        for norm in norms:
            norm.bias.copy_(norm.running_mean * norm.weight / torch.sqrt(norm.running_var + norm.eps))
        model.classifier[1].bias.zero_()
    return model


@pytest.mark.slow
def test_efficientnet_b0_conserves_relevance_without_biases():
    """With no biases on the signal's path LRP-0 conserves: the relevance at the input and after stages 3 and 8
    sums to the explained logit (the additions split it, the gates take none, SiLU passes it, average pooling
    shares it). z+ does not conserve here, as zennit's does not: a depthwise 3x3 convolution sees one channel, so
    on small maps some outputs have no positive contribution (denominator 0) and drop their relevance."""
    model = _calibrated_without_shifts()
    inputs = _inputs()[:1, :, :32, :32]
    lrp = LRP(model, "epsilon", epsilon=0.0, stabilizer=1e-20)
    explanation = lrp.explain(inputs, TARGET[:1])
    explained = explanation.logits.gather(1, explanation.target[:, None])[:, 0]
    assert explained.abs().min() > 1.0  # an order-1 signal, so the check is not about rounding
    torch.testing.assert_close(explanation.attribution.flatten(1).sum(1), explained, rtol=1e-4, atol=0.0)
    for layer in ("features.3", "features.8"):
        relevance = lrp.attribute(inputs, TARGET[:1], layer=layer)
        torch.testing.assert_close(relevance.flatten(1).sum(1), explained, rtol=1e-4, atol=0.0, msg=layer)
