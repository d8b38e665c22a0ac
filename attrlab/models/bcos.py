"""Small B-cos CNNs for digits (thesis ch. 6, the simple CIFAR10 net of App. C.3.1.1 scaled down), and that CIFAR net.

Flat ``nn.Sequential`` models in the layout of :mod:`attrlab.models.grid` (so the grid settings wrap them unchanged)::

    encode                               [-1, 1] images -> [u, 1 - u] with u in [0, 1] (2C channels)
    conv1 conv2(stride 2)                B-cos 3x3, 16 channels
    conv3 conv4(stride 2)                B-cos 3x3, 32 channels
    conv5 conv6                          B-cos 3x3, 64 channels   (conv6: the final spatial layer)
    head                                 B-cos 1x1 -> classes, times the output scale 1/T
    gap flatten                          global average pooling -> (N, classes)

Strided convolutions instead of max-pools (as the thesis' net): 28 -> 14 -> 7 per cell keeps every cell of a grid
aligned with whole cells of every feature map. No biases, no ReLUs: B > 1 is the non-linearity. Every layer's
output is multiplied by the fixed :func:`layer_scale` ``d^((B-1)/2)`` for patches of d entries, which keeps the
signal of an untrained net at about the same size through the layers for every B (the thesis' fixed γ and output
T serve the same purpose for its deeper net, App. C.3.1.1; with this scale no output T is needed, and the
temperature of the training loss, ``TrainConfig(loss="bce", temperature=T)``, sets the logits' scale). The scales are
constants, so the contributions sum to the logits exactly.

With ``norm`` every 3x3 B-cos convolution is followed by a normalisation layer (``norm1`` ... ``norm6``, one of
:data:`~attrlab.interpretable.bcos.NORMS`): bias-free (eq. 6.27) by default, or the conventional one with β and
centring (``norm_bias=True``, eq. 6.19) whose biases the thesis measures (Fig. 6.13).

Registered names: ``bcos`` (B = 2, no MaxOut), ``bcos_{kind}norm`` and ``bcos_{kind}norm_bias`` for every
normalisation kind (B = 2), ``bcos_b{B}`` and ``bcos_b{B}_maxout`` for the thesis' B in
:data:`THESIS_B` (MaxOut with two units), ``bcos_cifar`` (App. C.3.1.1's nine-layer net, B = 2, for 3x32x32), and ``bcos_relu_twin``, the conventional
ReLU CNN of the same shape (:func:`relu_twin`) the B-cos nets are compared with.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from ..interpretable.bcos import NORMS, BcosConv2d, BiasedNorm, BiasFreeNorm
from ..interpretable.dynamic import PairEncoding

#: the exponents of the thesis' B sweep (Table 6.1)
THESIS_B = (1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5)
#: channels of the three blocks of the digits net
WIDTHS = (16, 32, 64)
#: ML-Att layers of the digits net (the grid evaluations' "middle" and "final")
MIDDLE_LAYER = "conv4"
FINAL_LAYER = "conv6"
#: the side of an image must be a multiple of this (two stride-2 convolutions)
SIDE_MULTIPLE = 4


def layer_scale(b: float, patch_size: int) -> float:
    """``d^((B-1)/2)`` for patches of d entries: for random unit weights the cosine is about ``1/sqrt(d)``, so a
    B-cos unit shrinks a signal by about ``d^(-(B-1)/2)``; this fixed factor undoes that at initialisation."""
    return float(patch_size) ** ((b - 1.0) / 2.0)


def _layer(in_channels: int, out_channels: int, kernel: int, stride: int, b: float, max_out: int) -> BcosConv2d:
    scale = layer_scale(b, kernel * kernel * in_channels)
    return BcosConv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, b=b, max_out=max_out, scale=scale)


def bcos_digits(
    in_channels: int,
    image_size: int,
    num_classes: int,
    b: float = 2.0,
    max_out: int = 1,
    norm: str | None = None,
    norm_bias: bool = False,
) -> nn.Sequential:
    """The digits B-cos CNN (see the module docstring) with exponent ``b`` and ``max_out`` units per channel, and a
    normalisation layer of kind ``norm`` (None: none) after every 3x3 convolution, with biases if ``norm_bias``."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"unknown normalisation {norm!r}; valid choices: None, {', '.join(NORMS)}")
    if image_size % SIDE_MULTIPLE:
        raise ValueError(f"B-cos digits nets need an image side divisible by {SIDE_MULTIPLE}, got {image_size}")
    layers: list[tuple[str, nn.Module]] = [("encode", PairEncoding())]
    previous = 2 * in_channels
    index = 0
    for block, width in enumerate(WIDTHS, start=1):
        for second in (False, True):
            index += 1
            stride = 2 if second and block < len(WIDTHS) else 1
            layers.append((f"conv{index}", _layer(previous, width, 3, stride, b, max_out)))
            if norm is not None:
                layers.append((f"norm{index}", (BiasedNorm if norm_bias else BiasFreeNorm)(norm, width)))
            previous = width
    head = _layer(previous, num_classes, 1, 1, b, max_out)
    layers += [("head", head), ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(layers))


def bcos_cifar(in_channels: int, image_size: int, num_classes: int, b: float = 2.0, max_out: int = 1) -> nn.Sequential:
    """App. C.3.1.1's simple B-cos net: nine layers, kernels 3 (last 1), strides 1,1,2,1,1,2,1,1,1, channels
    64,64,128,128,128,256,256,256,classes, global pooling; for 3x32x32 images (CIFAR10)."""
    if image_size % SIDE_MULTIPLE:
        raise ValueError(f"B-cos nets need an image side divisible by {SIDE_MULTIPLE}, got {image_size}")
    channels = (64, 64, 128, 128, 128, 256, 256, 256)
    strides = (1, 1, 2, 1, 1, 2, 1, 1)
    layers: list[tuple[str, nn.Module]] = [("encode", PairEncoding())]
    previous = 2 * in_channels
    for index, (width, stride) in enumerate(zip(channels, strides), start=1):
        layers.append((f"conv{index}", _layer(previous, width, 3, stride, b, max_out)))
        previous = width
    head = _layer(previous, num_classes, 1, 1, b, max_out)
    layers += [("head", head), ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    return nn.Sequential(OrderedDict(layers))


def relu_twin(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
    """The conventional CNN shaped like :func:`bcos_digits`: the same encoding, convolutions (with biases), strides
    and widths, a ReLU after each 3x3 convolution (``relu1`` ... ``relu6``), a 1x1 head and global average pooling.
    The benchmark and the chapter compare the B-cos nets with it."""
    if image_size % SIDE_MULTIPLE:
        raise ValueError(f"the twin needs an image side divisible by {SIDE_MULTIPLE}, got {image_size}")
    layers: list[tuple[str, nn.Module]] = [("encode", PairEncoding())]
    previous, index = 2 * in_channels, 0
    for block, width in enumerate(WIDTHS, start=1):
        for second in (False, True):
            index += 1
            stride = 2 if second and block < len(WIDTHS) else 1
            layers.append((f"conv{index}", nn.Conv2d(previous, width, 3, stride, padding=1)))
            layers.append((f"relu{index}", nn.ReLU()))
            previous = width
    layers += [
        ("head", nn.Conv2d(previous, num_classes, 1)),
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
    ]
    model = nn.Sequential(OrderedDict(layers))
    for module in model.modules():
        if isinstance(module, nn.Conv2d):  # He initialisation, as vgg_small (PyTorch's default shrinks the signal)
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            assert module.bias is not None  # every convolution above is built with a bias
            nn.init.zeros_(module.bias)
    return model


def _builder(b: float, max_out: int):
    def build(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
        return bcos_digits(in_channels, image_size, num_classes, b=b, max_out=max_out)

    build.__doc__ = f"The digits B-cos CNN with B = {b:g}" + (", MaxOut" if max_out > 1 else "") + "."
    return build


def _norm_builder(kind: str, norm_bias: bool):
    def build(in_channels: int, image_size: int, num_classes: int) -> nn.Sequential:
        return bcos_digits(in_channels, image_size, num_classes, norm=kind, norm_bias=norm_bias)

    build.__doc__ = f"The digits B-cos CNN (B = 2) with {kind} normalisation" + (" with biases." if norm_bias else ".")
    return build


def norm_model_name(kind: str, norm_bias: bool) -> str:
    """The registry name of the digits B-cos net (B = 2) with normalisation ``kind``, with or without biases."""
    return f"bcos_{kind}norm" + ("_bias" if norm_bias else "")


def registry() -> dict[str, tuple[Callable[[int, int, int], nn.Module], int]]:
    """name -> (builder, smallest image side) for :data:`attrlab.models.MODELS`."""
    models: dict[str, tuple[Callable[[int, int, int], nn.Module], int]] = {"bcos": (_builder(2.0, 1), SIDE_MULTIPLE)}
    for b in THESIS_B:
        models[f"bcos_b{b:g}"] = (_builder(b, 1), SIDE_MULTIPLE)
        models[f"bcos_b{b:g}_maxout"] = (_builder(b, 2), SIDE_MULTIPLE)
    for kind in NORMS:
        for norm_bias in (False, True):
            models[norm_model_name(kind, norm_bias)] = (_norm_builder(kind, norm_bias), SIDE_MULTIPLE)
    models["bcos_cifar"] = (bcos_cifar, SIDE_MULTIPLE)
    models["bcos_relu_twin"] = (relu_twin, SIDE_MULTIPLE)
    return models
