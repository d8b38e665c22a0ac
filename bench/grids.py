"""Benchmark: grids evaluated per second by every registered attribution method, batched versus a per-image loop.

Both paths are :func:`attrlab.grids.evaluate_setting` (attribution, upsampling, scoring) on the same grids of digits
in one run; the loop passes ``batch_size=1`` (one grid per ``explain`` call, the way per-image evaluation scripts
work), the batched path all grids at once. Timing needs no trained model, so the model is a freshly initialised
``vgg_small`` and the grids use the test labels directly (no confidence filter). Prints a table and the ratios.

    .venv/bin/python bench/grids.py [--grids 64] [--loop-grids 8] [--setting gridpg] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from attrlab.attribution import available_methods
from attrlab.data import load_dataset
from attrlab.grids import ConfidentImages, MethodSpec, evaluate_setting, make_grids
from attrlab.models import build_model

#: settings per method that keep a grid evaluation affordable on a CPU (the book chapter uses the same)
SETTINGS = {
    "integrated_gradients": {"n_steps": 20},
    "smoothgrad": {"n_samples": 10},
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"n_masks": 200},
}
#: the seed-code Grad-CAM is a reproduction of one script, not a method to benchmark again
SKIP = {"gradcam_seed_code"}


def time_evaluation(model, grids, setting: str, spec: MethodSpec, batch_size: int, repeats: int) -> float:
    """Best-of-``repeats`` wall time of one evaluation, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate_setting(model, grids, setting, [spec], layers={"input": "input"}, cells=[0],
                         batch_size=batch_size, keep_maps=False, progress=False)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=64, help="grids in the batched evaluation")
    parser.add_argument("--loop-grids", type=int, default=8, help="grids in the per-image loop (rate is per grid)")
    parser.add_argument("--setting", default="gridpg", choices=["gridpg", "dipart", "difull"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("digits", device="cpu")
    model = build_model("vgg_small", seed=0).eval()
    images = ConfidentImages(data.test.x, data.test.y, threshold=0.0)
    layout = "distinct" if args.setting == "gridpg" else "repeated"
    grids = make_grids(images, args.grids, n=2, layout=layout, seed=0)
    loop_grids = grids.subset(slice(0, args.loop_grids))

    rows = []
    for name in [m for m in available_methods() if m not in SKIP]:
        spec = MethodSpec(name, name, SETTINGS.get(name, {}))
        batched = time_evaluation(model, grids, args.setting, spec, batch_size=args.grids, repeats=args.repeats)
        looped = time_evaluation(model, loop_grids, args.setting, spec, batch_size=1, repeats=args.repeats)
        rows.append({
            "method": name,
            "batched grids/s": args.grids / batched,
            "loop grids/s": args.loop_grids / looped,
        })
    table = pd.DataFrame(rows)
    table["ratio"] = table["batched grids/s"] / table["loop grids/s"]
    print(f"{args.setting}, 2x2 grids of 56x56, vgg_small, {args.threads} threads; batched: {args.grids} grids per "
          f"call, loop: one grid per call over {args.loop_grids} grids")
    print(table.to_string(index=False, float_format=lambda v: f"{v:9.1f}"))
    print(f"ratio batched / loop: median {table['ratio'].median():.1f}x, min {table['ratio'].min():.1f}x "
          f"({table.loc[table['ratio'].idxmin(), 'method']})")


if __name__ == "__main__":
    main()
