"""Attribution speed benchmark: LRP and Grad-CAM (attrlab, zennit, captum) as multiples of an input-gradient pass.

Runs on the seed's "deep" FashionMNIST-shaped model (1x28x28) with random weights, a batch of ``--batch`` images and
the predicted classes as targets. Every method is timed in the same process, interleaved round by round (so load
from other processes hits all of them alike), after a warm-up; the table shows medians and their ratio to the
input-gradient pass (forward + backward of the target logits w.r.t. the input), next to the targets.

    python bench/attribution.py [--batch 200] [--repeats 7] [--quick] [--threads N] [--device cuda]
    python bench/attribution.py --resnet18 [--batch 64] [--repeats 3]

``--resnet18`` times the traced engine instead (issue 11): torchvision's ResNet-18 with random weights at 3x64x64,
attrlab's EpsilonPlusFlat with canonization against one input-gradient pass and zennit's EpsilonPlusFlat with its
``ResNetCanonizer``.

``--device`` defaults to CUDA when present; the clock is read after ``torch.cuda.synchronize()``. zennit and captum
rows are skipped (with the reason) where those packages are not installed.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
import time
from collections.abc import Callable

import torch
from timing import (
    add_device_argument,
    add_malloc_argument,
    host_memory,
)  # bench/timing.py (the script's folder is on sys.path)
from torch import nn

from attrlab.device import device_name, resolve_device, synchronize
from attrlab.lrp import LRP
from attrlab.models import build_model

TARGETS = {  # method -> (largest ratio to the input-gradient pass, note)
    "attrlab LRP EpsilonPlusFlat": 1.5,
    "attrlab LRP EpsilonGammaBox": 2.0,
    "attrlab Grad-CAM": 0.6,
    "attrlab Deconvolution": 1.3,
    "attrlab DeepLIFT": 1.3,
}


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = inputs.detach().requires_grad_(True)
    logits = model(x)
    (gradient,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    return gradient


class _CaptumCopy(nn.Module):
    """The model without nn.Flatten (captum's LRP rejects it), on its own copy (captum edits weights in place)."""

    def __init__(self, model: nn.Sequential):
        super().__init__()
        layers = list(copy.deepcopy(model).children())
        cut = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Flatten))
        self.features, self.head = nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut + 1 :])

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def methods(model: nn.Module, target: torch.Tensor) -> dict[str, Callable[[torch.Tensor], object] | str]:
    """name -> callable(inputs), or a string saying why the method is skipped."""
    onehot = torch.eye(10, device=target.device)[target]
    ours_flat, ours_box = LRP(model, "epsilon_plus_flat"), LRP(model, "epsilon_gamma_box")
    table: dict[str, Callable | str] = {
        "input gradient": lambda x: input_gradient(model, x, target),
        "attrlab LRP EpsilonPlusFlat": lambda x: ours_flat.attribute(x, target),
        "attrlab LRP EpsilonGammaBox": lambda x: ours_box.attribute(x, target),
    }
    try:
        from zennit.attribution import Gradient as ZennitGradient
        from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    except ImportError as err:
        table["zennit EpsilonPlusFlat"] = table["zennit EpsilonGammaBox"] = f"skipped: {err}"
    else:

        def zennit(composite):
            def run(inputs):
                with ZennitGradient(model, composite) as attributor:
                    return attributor(inputs, lambda out: out * onehot)[1]

            return run

        table["zennit EpsilonPlusFlat"] = zennit(EpsilonPlusFlat())
        table["zennit EpsilonGammaBox"] = zennit(EpsilonGammaBox(low=-1.0, high=1.0))
    try:
        from captum.attr import LRP as CaptumLRP
        from captum.attr import LayerGradCam
    except ImportError as err:
        table["captum LRP (epsilon)"] = table["captum LayerGradCam"] = f"skipped: {err}"
    else:
        captum_lrp = CaptumLRP(_CaptumCopy(model))
        captum_cam = LayerGradCam(model, model.conv6)
        table["captum LRP (epsilon)"] = lambda x: captum_lrp.attribute(x, target=target)
        table["captum LayerGradCam"] = lambda x: captum_cam.attribute(x, target=target)
    try:
        from attrlab.attribution.gradcam import GradCAM
    except ImportError as err:
        table["attrlab Grad-CAM"] = f"skipped: {err}"
    else:
        ours_cam = GradCAM(model)
        table["attrlab Grad-CAM"] = lambda x: ours_cam.attribute(x, target, layer="conv6")
    return table


def issue12_methods(model: nn.Module, target: torch.Tensor) -> dict[str, Callable[[torch.Tensor], object] | str]:
    """Rows of issue 12's methods (attrlab next to captum / pytorch-grad-cam where they have the method).

    Score-CAM and Ablation-CAM at ``relu6`` (128 channels), LIME with 100 samples on fixed 4x4-block superpixels (so
    the row times the method, not scikit-image's quickshift). captum's Lime and the grad-cam package loop over
    images; they are timed on ``PER_IMAGE_SAMPLE`` images and scaled to the batch (marked "x N/k").
    """
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr import Deconvolution as CaptumDeconvolution
    from captum.attr import DeepLift as CaptumDeepLift
    from captum.attr import Lime as CaptumLime
    from pytorch_grad_cam import AblationCAM as PackageAblationCAM
    from pytorch_grad_cam import ScoreCAM as PackageScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from attrlab.attribution import make_method
    from attrlab.attribution.pattern import fit_patterns

    blocks = (torch.arange(28) // 4)[:, None] * 7 + (torch.arange(28) // 4)[None, :]
    patterns = fit_patterns(
        model, torch.rand((256, 1, 28, 28), generator=torch.Generator().manual_seed(1)) * 2 - 1, progress=False
    )
    ours = {
        "attrlab Deconvolution": make_method("deconvolution", model),
        "attrlab DeepLIFT": make_method("deeplift", model),
        "attrlab RectGrad": make_method("rectgrad", model),
        "attrlab PatternNet": make_method("pattern_net", model, patterns=patterns),
        "attrlab PatternAttribution": make_method("pattern_attribution", model, patterns=patterns),
    }
    table: dict[str, Callable | str] = {name: (lambda x, m=m: m.attribute(x, target)) for name, m in ours.items()}
    score_cam = make_method("score_cam", model, output="logit")
    ablation_cam = make_method("ablation_cam", model)
    lime = make_method("lime", model, n_samples=100)
    table["attrlab Score-CAM"] = lambda x: score_cam.attribute(x, target, layer="relu6")
    table["attrlab Ablation-CAM"] = lambda x: ablation_cam.attribute(x, target, layer="relu6")
    table["attrlab LIME"] = lambda x: lime.attribute(x, target, segments=blocks)
    table["captum Deconvolution"] = lambda x: CaptumDeconvolution(model).attribute(x, target=target)
    table["captum DeepLift"] = lambda x: CaptumDeepLift(model).attribute(x, target=target)

    def per_image(run):
        def timed(x):
            k = min(PER_IMAGE_SAMPLE, x.shape[0])
            for i in range(k):
                run(x[i : i + 1], int(target[i]))

        return timed

    def captum_lime(x, t):
        CaptumLime(model, interpretable_model=SkLearnLinearRegression()).attribute(
            x, target=t, feature_mask=blocks[None, None], n_samples=100, perturbations_per_eval=100
        )

    def package(cls):
        cam = cls(model, target_layers=[model.relu6])
        return lambda x, t: cam(input_tensor=x, targets=[ClassifierOutputTarget(t)])

    table["captum Lime (x N/k)"] = per_image(captum_lime)
    table["grad-cam ScoreCAM (x N/k)"] = per_image(package(PackageScoreCAM))
    table["grad-cam AblationCAM (x N/k)"] = per_image(package(PackageAblationCAM))
    return table


#: images the per-image reference loops (captum Lime, pytorch-grad-cam) are timed on; their times are scaled to the batch
PER_IMAGE_SAMPLE = 4
#: our row -> the reference row it is compared with (target: no slower)
ISSUE12_PAIRS = {
    "attrlab Deconvolution": "captum Deconvolution",
    "attrlab DeepLIFT": "captum DeepLift",
    "attrlab LIME": "captum Lime (x N/k)",
    "attrlab Score-CAM": "grad-cam ScoreCAM (x N/k)",
    "attrlab Ablation-CAM": "grad-cam AblationCAM (x N/k)",
}


#: the traced engine's targets on resnet18 (issue 11): ratio to the input-gradient pass, speed-up over zennit
RESNET18_TARGETS = {"ratio": 1.6, "speedup": 3.0}


def resnet18_rows(batch: int, repeats: int, device: torch.device) -> None:
    """Time the traced LRP engine on torchvision's resnet18 (random weights, 3x64x64), interleaved with its rivals."""
    import torchvision
    from zennit.attribution import Gradient as ZennitGradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=1000).eval().to(device)
    inputs = (torch.rand((batch, 3, 64, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    onehot = torch.eye(1000, device=device)[target]
    ours = LRP(model, "epsilon_plus_flat")

    def zennit(x):
        with ZennitGradient(model, EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
            return attributor(x, lambda out: out * onehot)[1]

    table = {
        "input gradient": lambda x: input_gradient(model, x, target),
        "attrlab LRP EpsilonPlusFlat": lambda x: ours.attribute(x, target),
        "zennit EpsilonPlusFlat+ResNet": zennit,
    }
    times: dict[str, list[float]] = {name: [] for name in table}
    for fn in table.values():  # warm-up (and the one trace of the model)
        fn(inputs)
    for _ in range(repeats):
        for name, fn in table.items():
            synchronize(device)
            start = time.perf_counter()
            fn(inputs)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    floor = medians["input gradient"]
    print(
        f"device {device_name(device)}; resnet18 (random weights), 3x64x64, batch {batch}, median of {repeats} rounds"
    )
    print(f"{'method':32s} {'ms':>8s} {'x input-grad':>13s}  target")
    for name, median in medians.items():
        goal = ""
        if name == "attrlab LRP EpsilonPlusFlat":
            goal = f"<= {RESNET18_TARGETS['ratio']:.1f}x" + (
                "  ok" if median / floor <= RESNET18_TARGETS["ratio"] else "  MISSED"
            )
        print(f"{name:32s} {median * 1e3:8.1f} {median / floor:13.2f}  {goal}")
    speedup = medians["zennit EpsilonPlusFlat+ResNet"] / medians["attrlab LRP EpsilonPlusFlat"]
    target = RESNET18_TARGETS["speedup"]
    print(
        f"attrlab vs zennit on resnet18: {speedup:.2f}x faster (target >= {target:.0f}x){'' if speedup >= target else '  MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--repeats", type=int, help="timed rounds, median reported (default 7, 3 with --quick)")
    parser.add_argument("--quick", action="store_true", help="3 rounds (and batch 50 on a CPU unless --batch is given)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: what torch picks)")
    parser.add_argument("--no-issue12", action="store_true", help="skip the rows of issue 12's methods")
    parser.add_argument("--only", default=None, help="time only the rows whose name matches this regular expression")
    add_device_argument(parser)
    parser.add_argument("--resnet18", action="store_true", help="time the traced engine on resnet18 (batch 64 default)")
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch_given = any(arg == "--batch" or arg.startswith("--batch=") for arg in sys.argv[1:])
    batch, repeats = args.batch, args.repeats or (3 if args.quick else 7)
    if args.quick and not batch_given and device.type == "cpu":
        batch = 50
    if args.resnet18:
        resnet18_rows(batch if batch_given else 64, args.repeats or 3, device)
        return

    model = build_model("deep", (1, 28, 28), seed=0).eval().to(device)
    inputs = (torch.rand((batch, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1).to(device)
    with torch.no_grad():
        target = model(inputs).argmax(1)
    table = methods(model, target)
    if not args.no_issue12:
        table.update(issue12_methods(model, target))
    if args.only:
        table = {name: fn for name, fn in table.items() if name == "input gradient" or re.search(args.only, name)}
    runnable = {name: fn for name, fn in table.items() if callable(fn)}
    for fn in runnable.values():  # warm-up
        fn(inputs)
    times: dict[str, list[float]] = {name: [] for name in runnable}
    for _ in range(repeats):
        for name, fn in runnable.items():
            synchronize(device)
            start = time.perf_counter()
            fn(inputs)
            synchronize(device)
            times[name].append(time.perf_counter() - start)

    floor = statistics.median(times["input gradient"])
    print(f"device {device_name(device)}; deep model, 1x28x28, batch {batch}, median of {repeats} rounds")
    print(f"{'method':32s} {'ms':>8s} {'x input-grad':>13s}  target")
    scale = {name: batch / min(PER_IMAGE_SAMPLE, batch) for name in table if name.endswith("(x N/k)")}
    for name, entry in table.items():
        if not callable(entry):
            print(f"{name:32s} {entry}")
            continue
        median = statistics.median(times[name]) * scale.get(name, 1.0)
        goal = f"<= {TARGETS[name]:.1f}x" if name in TARGETS else ""
        if name in TARGETS:
            goal += "  ok" if median / floor <= TARGETS[name] else "  MISSED"
        print(f"{name:32s} {median * 1e3:8.1f} {median / floor:13.2f}  {goal}")
    for ours, theirs in (("EpsilonPlusFlat", "EpsilonPlusFlat"), ("EpsilonGammaBox", "EpsilonGammaBox")):
        if f"zennit {theirs}" not in times or f"attrlab LRP {ours}" not in times:
            continue
        speedup = statistics.median(times[f"zennit {theirs}"]) / statistics.median(times[f"attrlab LRP {ours}"])
        print(f"attrlab vs zennit {ours}: {speedup:.2f}x faster (target >= 2x){'' if speedup >= 2 else '  MISSED'}")
    for ours, theirs in ISSUE12_PAIRS.items():
        if ours in times and theirs in times:
            speedup = statistics.median(times[theirs]) * scale.get(theirs, 1.0) / statistics.median(times[ours])
            print(f"{ours} vs {theirs}: {speedup:.2f}x faster (target >= 1x){'' if speedup >= 1 else '  MISSED'}")


if __name__ == "__main__":
    main()
