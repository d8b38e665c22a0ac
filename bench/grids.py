"""Benchmark: grids evaluated per second by every registered attribution method, batched versus a per-image loop.

Both paths are :func:`attrlab.grids.evaluate_setting` (attribution, upsampling, scoring) on the same grids of digits
in one run; the loop passes ``batch_size=1`` (one grid per ``explain`` call, the way per-image evaluation scripts
work), the batched path ``--batch-sizes`` grids per call (each size timed; the table shows every size). Timing needs no trained model, so the model is a freshly initialised
``vgg_small`` and the grids use the test labels directly (no confidence filter). Prints a table and the ratios.

    .venv/bin/python bench/grids.py [--grids 64] [--loop-grids 16] [--batch-sizes 8,64] [--setting gridpg]
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
    parser.add_argument("--loop-grids", type=int, default=16, help="grids in the per-image loop (rate is per grid)")
    parser.add_argument("--batch-sizes", default="8,64", help="comma-separated grids per call of the batched path")
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

    sizes = [int(size) for size in args.batch_sizes.split(",")]
    rows = []
    for name in [m for m in available_methods() if m not in SKIP]:
        spec = MethodSpec(name, name, SETTINGS.get(name, {}))
        row = {"method": name}
        row["loop grids/s"] = args.loop_grids / time_evaluation(
            model, loop_grids, args.setting, spec, batch_size=1, repeats=args.repeats
        )
        for size in sizes:
            seconds = time_evaluation(model, grids, args.setting, spec, batch_size=size, repeats=args.repeats)
            row[f"batch {size} grids/s"] = args.grids / seconds
            row[f"ratio {size}"] = row[f"batch {size} grids/s"] / row["loop grids/s"]
        rows.append(row)
    table = pd.DataFrame(rows)
    print(f"{args.setting}, 2x2 grids of 56x56, vgg_small, {args.threads} threads; {args.grids} grids per batched "
          f"evaluation, loop: one grid per call over {args.loop_grids} grids")
    print(table.to_string(index=False, float_format=lambda v: f"{v:8.1f}"))
    for size in sizes:
        ratios = table[f"ratio {size}"]
        print(f"ratio batch {size} / loop: median {ratios.median():.1f}x, min {ratios.min():.1f}x "
              f"({table.loc[ratios.idxmin(), 'method']}), max {ratios.max():.1f}x ({table.loc[ratios.idxmax(), 'method']})")


if __name__ == "__main__":
    main()
