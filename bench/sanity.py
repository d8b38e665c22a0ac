"""Benchmark: the full sanity-check suite of one method on 200 digits, batched versus a per-image loop.

The suite is what the chapter runs per method: random logit, cascading randomisation at every parametrised layer of
the deep seed model, and CSC (5 vectors per image, injection at fc2, fc1, conv6, conv4, conv2, recorded at the input
and every Conv2d / Linear below). Both paths run in one process, side by side:

* **loop**: one ``attribute`` call per image (and per target), scikit-image's ``structural_similarity`` per map pair
  on numpy-normalised maps, one injection call per image and vector - the way per-image scripts work;
* **batched**: :mod:`attrlab.sanity` (one attribution call per check and checkpoint for all images, the batched
  torch SSIM, one injection pass per injection layer for all vectors of all images).

The two must agree (SSIM scores to 1e-5, CSC medians to 1e-6; a mismatch aborts). The model is a freshly initialised
``deep`` model (timing needs no training). Both paths run on ``--device`` (the loop's SSIM on the host, as per-image
scripts do); on a GPU in full float32 (TF32 off), so that the two agree as on the CPU. Prints the times and the ratio
and writes ``bench/results/sanity.csv`` (``--out`` for another file).

    .venv/bin/python bench/sanity.py [--method LRP-a1b0] [--images 200] [--loop-images 200] [--device cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.metrics import structural_similarity

# bench/timing.py (the script's folder is on sys.path)
from timing import add_device_argument, add_malloc_argument, host_memory

from attrlab.data import load_dataset
from attrlab.device import device_name, full_float32, resolve_device, synchronize
from attrlab.lrp.inject import relevance_from
from attrlab.models import build_model
from attrlab.sanity import (
    cascade,
    cascading_randomisation,
    csc,
    gradient_from,
    random_classes,
    random_logit,
    reduce_channels,
    sanity_methods,
)

RESULTS = Path(__file__).parent / "results" / "sanity.csv"
INJECTIONS = ["fc2", "fc1", "conv6", "conv4", "conv2"]
RECORD = [None, "conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc1"]
VECTORS = 5


def _normalise(x: np.ndarray, percentile: float) -> np.ndarray:
    low, high = np.percentile(x, percentile), np.percentile(x, 100 - percentile)
    return np.clip((x - low) / (high - low), 0, 1)


def _ssim_flipped(a: np.ndarray, b: np.ndarray, percentile: float) -> float:
    na = _normalise(a, percentile)
    return max(
        structural_similarity(na, _normalise(b, percentile), win_size=5, data_range=2.0),
        structural_similarity(na, _normalise(-b, percentile), win_size=5, data_range=2.0),
    )


def _map(method, model, image, target) -> np.ndarray:
    attribution = method.build(model).attribute(image[None], target=[int(target)])
    return reduce_channels(attribution.detach(), method.reduce)[0].double().cpu().numpy()


def loop_suite(model, method, x, y, seed: int = 0) -> dict:
    """Per image: the same numbers as the batched suite."""
    other = random_classes(y, 10, seed)
    logit = [
        _ssim_flipped(_map(method, model, xi, yi), _map(method, model, xi, oi), method.percentile)
        for xi, yi, oi in zip(x, y, other)
    ]
    originals = [_map(method, model, xi, yi) for xi, yi in zip(x, y)]
    cascading = []
    for _, _, randomised in cascade(model, None, seed):
        cascading += [
            _ssim_flipped(o, _map(method, randomised, xi, yi), method.percentile) for o, xi, yi in zip(originals, x, y)
        ]
    medians = []
    attribution = method.build(model)
    for k_index, layer in enumerate(INJECTIONS):
        below = [n for n in RECORD if n is None or RECORD.index(n) < _position(layer)]
        shape = _shape(model, layer)
        generator = torch.Generator().manual_seed(seed + k_index)
        start = torch.randn((VECTORS * len(x), *shape), generator=generator).to(x)  # drawn as attrlab.sanity.csc does
        cosines: dict = {name: [] for name in below}
        for i in range(len(x)):
            per_vector = []
            for j in range(VECTORS):
                v = start[j * len(x) + i][None]
                if method.family == "lrp":
                    per_vector.append(relevance_from(attribution, x[i : i + 1], layer, v, below))
                else:
                    per_vector.append(
                        gradient_from(model, x[i : i + 1], layer, v, below, getattr(attribution, "substitutes", {}))
                    )
            for name in below:
                for a, b in itertools.combinations(range(VECTORS), 2):
                    ra = per_vector[a][name][0].double().reshape(per_vector[a][name].shape[1], -1)
                    rb = per_vector[b][name][0].double().reshape(per_vector[b][name].shape[1], -1)
                    cos = ((ra * rb).sum(0) / (ra.norm(dim=0) * rb.norm(dim=0))).abs()
                    cosines[name].append(cos[~cos.isnan()])
        medians += [float(torch.cat(cosines[name]).median()) for name in below]
    return {"logit": np.array(logit), "cascading": np.array(cascading), "csc": np.array(medians)}


def _position(layer: str) -> int:
    order = [n for n in RECORD if n is not None] + ["fc2"]
    return order.index(layer) + 1


def _shape(model, layer: str) -> tuple:
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _a, o: captured.setdefault("o", o))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
    finally:
        handle.remove()
    return tuple(captured["o"].shape[1:])


def batched_suite(model, method, x, y, seed: int = 0) -> dict:
    logit = random_logit(model, method, x, y, seed=seed)["ssim"].to_numpy()
    cascading = cascading_randomisation(model, method, x, y, seed=seed).scores["ssim"].to_numpy()
    frame = csc(model, method, x, INJECTIONS, RECORD, VECTORS, seed)
    return {"logit": logit, "cascading": cascading, "csc": frame["median"].to_numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="LRP-a1b0", help="a label of attrlab.sanity.SIXT_METHODS (with CSC)")
    parser.add_argument("--images", type=int, default=200, help="images in the suite")
    parser.add_argument("--loop-images", type=int, default=200, help="images of the loop (fewer: time extrapolated)")
    parser.add_argument("--out", default=str(RESULTS), help="CSV file (default bench/results/sanity.csv)")
    add_device_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    device = resolve_device(args.device)
    (method,) = sanity_methods([args.method])
    data = load_dataset("digits", device=device)
    x, y = data.test.x[: args.images], data.test.y[: args.images]
    model = build_model("deep", (1, 28, 28), seed=0).to(device).eval()
    torch.manual_seed(0)
    print(f"device {device_name(device)}; {method.label}, {args.images} digits")

    with full_float32() if device.type == "cuda" else contextlib.nullcontext():
        synchronize(device)
        started = time.perf_counter()
        batched = batched_suite(model, method, x, y)
        synchronize(device)
        batched_seconds = time.perf_counter() - started

        n = min(args.loop_images, args.images)
        started = time.perf_counter()
        loop = loop_suite(model, method, x[:n], y[:n])
        synchronize(device)
        loop_seconds = (time.perf_counter() - started) * args.images / n

    if n == args.images:
        for key in ("logit", "cascading"):
            if not np.allclose(batched[key], loop[key], atol=1e-5, equal_nan=True):
                raise SystemExit(f"{key} scores differ between the batched suite and the loop")
        if not np.allclose(batched["csc"], loop["csc"], atol=1e-6, equal_nan=True):
            raise SystemExit("CSC medians differ between the batched suite and the loop")
    ratio = loop_seconds / batched_seconds
    row = {
        "method": method.label,
        "images": args.images,
        "loop_images": n,
        "batched_s": round(batched_seconds, 2),
        "loop_s": round(loop_seconds, 2),
        "ratio": round(ratio, 1),
        "checked_equal": n == args.images,
    }
    print(pd.DataFrame([row]).to_string(index=False))
    print(f"batched is {ratio:.1f}x faster than the per-image loop (target >= 10x)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{"device": device_name(device), **row}]).to_csv(out, index=False)


if __name__ == "__main__":
    main()
