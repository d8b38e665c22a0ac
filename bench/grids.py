"""Benchmark: grids evaluated per second by every registered attribution method, batched versus a per-image loop.

Both paths score the same grids of digits in one run, in the thesis' protocol (every cell of a GridPG grid; the two
corners of the repeated class on DiFull and DiPart):

* **loop**: one ``attribute`` call per grid and scored cell, each a batch of one image with one target, followed by
  the same upsampling and scoring - the way per-image evaluation scripts work;
* **batched**: :func:`attrlab.grids.evaluate_setting`, ``--batch-sizes`` grids per call, each grid with all its
  scored cells as an (N, T) target, so a method shares its forward passes across a grid's cells.

Every method is timed at each ML-Att layer (``--layers``, default the input, ``relu4`` and ``relu6`` as in the
chapter), one row per method and layer. The two must give the same scores (checked, except for SmoothGrad's
row-dependent noise; a mismatch aborts). Timing needs no trained model, so the model is a freshly initialised
``vgg_small`` and the grids use the test labels directly (no confidence filter). Prints a table, the ratios, and
writes them to ``bench/results/grids.csv``.

    .venv/bin/python bench/grids.py [--setting gridpg] [--n 2] [--grids 48] [--loop-grids 8] [--batch-sizes 4,16]
    .venv/bin/python bench/grids.py --device cuda --quick

``--device`` defaults to CUDA when present. Sizes follow the device unless given: on a CPU 48 grids in calls of 4 and
16, on a GPU 1024 grids in calls of 64, 256 and 1024 (hundreds of grids per call); ``--quick`` does one repeat on
fewer grids. The clock is read after ``torch.cuda.synchronize()``; the device and the results go to
``bench/results/grids.csv`` (one row per grid kind, device, method and layer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from timing import (
    add_device_argument,
    add_malloc_argument,
    host_memory,
)  # bench/timing.py (the script's folder is on sys.path)

from attrlab.attribution import available_methods
from attrlab.data import load_dataset
from attrlab.device import device_name, resolve_device, synchronize
from attrlab.grids import (
    LAYERS,
    ConfidentImages,
    MethodSpec,
    attribution_map,
    evaluate_setting,
    evaluation_copy,
    grid_model,
    localisation,
    make_grids,
    scored_cells,
)
from attrlab.models import build_model

#: settings per method that keep a grid evaluation affordable on a CPU (the book chapter uses the same)
SETTINGS = {
    "integrated_gradients": {"n_steps": 20},
    "smoothgrad": {"n_samples": 10},
    "occlusion": {"window": 4, "stride": 4},
    "rise": {"n_masks": 200},
}
#: occlusion windows at the layers, as in the chapter (a similar fraction of a cell as 4/4 at the input)
LAYER_SETTINGS = {"occlusion": {"middle": {"window": 2, "stride": 2}, "final": {"window": 2, "stride": 1}}}
#: the seed-code Grad-CAM is a reproduction of one script, not a method to benchmark again
SKIP = {"gradcam_seed_code", "lime", "pattern_net", "pattern_attribution"}  # LIME: input only; patterns: fitted first
#: SmoothGrad draws an image's noise by its row in the batch (captum's layout), so the two paths use different noise
#: and agree in distribution only; every other method must give the same scores both ways
RANDOM_BY_ROW = {"smoothgrad"}
RESULTS = Path(__file__).parent / "results" / "grids.csv"


#: (grids, loop grids, batch sizes, repeats) by device type and quick mode
SIZES = {
    ("cpu", False): (48, 8, "4,16", 2),
    ("cpu", True): (16, 4, "4,16", 1),
    ("cuda", False): (1024, 16, "64,256,1024", 2),
    ("cuda", True): (256, 8, "64,256", 1),
}


def per_image_loop(method, grids, targets, cells, layer: str) -> torch.Tensor:
    """Scores from one call per grid and scored cell (batch of one image, one target)."""
    size = tuple(grids.images.shape[-2:])
    scores = []
    for grid in range(len(grids)):
        image = grids.images[grid : grid + 1]
        for column, cell in enumerate(cells):
            attribution = method.attribute(image, target=targets[grid, column : column + 1], layer=layer)
            score, _ = localisation(attribution_map(attribution.detach(), size), grids.masks, cell)
            scores.append(score)
    return torch.cat(scores)


def best_time(function, repeats: int, device: torch.device):
    """(best-of-``repeats`` wall time in seconds, the result of the last call)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="gridpg", choices=["gridpg", "dipart", "difull"])
    parser.add_argument("--n", type=int, default=2, help="grid side (2: 2x2 grids of 56x56, 3: 3x3 of 84x84)")
    parser.add_argument("--grids", type=int, help="grids in the batched evaluation (default: by device)")
    parser.add_argument("--loop-grids", type=int, help="grids in the per-image loop (rate is per grid)")
    parser.add_argument("--batch-sizes", help="comma-separated grids per call of the batched path (default: by device)")
    parser.add_argument("--methods", default="", help="comma-separated registry names (default: all)")
    parser.add_argument("--layers", default="input,middle,final", help="comma-separated ML-Att layer keys")
    parser.add_argument("--repeats", type=int, help="timed repeats, best taken (default 2, 1 with --quick)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true", help="fewer grids, one repeat")
    parser.add_argument(
        "--out", default=str(RESULTS), help="the CSV the rows are merged into (bench/results/grids.csv)"
    )
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    grids_default, loop_default, sizes_default, repeats_default = SIZES[(device.type, args.quick)]
    args.grids = args.grids or grids_default
    args.loop_grids = args.loop_grids or loop_default
    args.batch_sizes = args.batch_sizes or sizes_default
    args.repeats = args.repeats or repeats_default

    data = load_dataset("digits", device=device)
    model = build_model("vgg_small", seed=0).eval().to(device)
    images = ConfidentImages(data.test.x, data.test.y, threshold=0.0)
    layout = "distinct" if args.setting == "gridpg" else "repeated"
    grids = make_grids(images, max(args.grids, args.loop_grids), n=args.n, layout=layout, seed=0)
    batched_grids = grids.subset(slice(0, args.grids))
    loop_grids = grids.subset(slice(0, args.loop_grids))
    cells = scored_cells(args.setting, args.n)
    # the loop runs on the same channels-last copy the batched path makes, so the ratio is batching and sharing alone
    wrapped = grid_model(evaluation_copy(model), args.setting, args.n)
    cell_index = torch.tensor(cells, device=device).expand(len(loop_grids), -1)
    loop_targets = wrapped.head_targets(cell_index, loop_grids.labels.gather(1, cell_index))

    names = args.methods.split(",") if args.methods else [m for m in available_methods() if m not in SKIP]
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    rows = []
    for name in names:
        for key in args.layers.split(","):
            if key not in LAYERS:
                raise SystemExit(f"unknown layer key {key!r}; valid keys: {', '.join(LAYERS)}")
            spec = MethodSpec(name, name, SETTINGS.get(name, {}), layer_settings=LAYER_SETTINGS.get(name, {}))
            row = {"method": name, "layer": key}
            seconds, looped = best_time(
                lambda: per_image_loop(spec.make(wrapped, key), loop_grids, loop_targets, cells, LAYERS[key]),
                args.repeats,
                device,
            )
            row["loop grids/s"] = len(loop_grids) / seconds
            for size in sizes:
                seconds, result = best_time(
                    lambda: evaluate_setting(
                        model,
                        batched_grids,
                        args.setting,
                        [spec],
                        layers={key: LAYERS[key]},
                        batch_size=size,
                        keep_maps=False,
                        progress=False,
                    ),
                    args.repeats,
                    device,
                )
                batched = torch.tensor(result.scores["score"].to_numpy()[: len(looped)])
                looped = looped.cpu()
                difference = float((batched - looped.float()).abs().max())
                # float rounding differs between batch sizes and flips near-zero values of signed maps (the raw
                # gradient), which moves a score by up to a few 1e-4; a real disagreement is orders of magnitude larger
                if name not in RANDOM_BY_ROW and difference > 2e-3:
                    raise SystemExit(f"{name} at {key}: batched scores differ from the loop's by {difference:.2g}")
                row[f"batch {size} grids/s"] = len(batched_grids) / seconds
                row[f"ratio {size}"] = row[f"batch {size} grids/s"] / row["loop grids/s"]
            rows.append(row)
            print(", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
    table = pd.DataFrame(rows)
    table.insert(0, "grid", f"{args.setting} {args.n}x{args.n}")
    table.insert(1, "device", device_name(device))
    print(
        f"\n{args.setting}, {args.n}x{args.n} grids of {28 * args.n}x{28 * args.n}, {len(cells)} scored cells per "
        f"grid, vgg_small, device {device_name(device)}; batched: {args.grids} grids, loop: one call per grid and "
        f"cell over {args.loop_grids} grids"
    )
    print(table.drop(columns=["grid", "device"]).to_string(index=False, float_format=lambda v: f"{v:8.1f}"))
    best = table[[f"ratio {size}" for size in sizes]].max(axis=1)
    label = table["method"] + " at " + table["layer"]
    print(
        f"best batched / loop: median {best.median():.1f}x, min {best.min():.1f}x ({label[best.idxmin()]}), "
        f"max {best.max():.1f}x ({label[best.idxmax()]}); {int((best >= 10).sum())} of {len(best)} method-layer "
        f"pairs at >= 10x"
    )
    for key, ratios in best.groupby(table["layer"], sort=False):
        print(f"  at {key}: median {ratios.median():.1f}x, {int((ratios >= 10).sum())} of {len(ratios)} methods >= 10x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = pd.read_csv(out) if out.exists() else pd.DataFrame()
    if not previous.empty:  # the same grid kind on the same device is replaced
        if "device" not in previous:
            previous.insert(1, "device", "cpu")
        same = (previous["grid"] == table["grid"].iloc[0]) & (previous["device"] == table["device"].iloc[0])
        previous = previous[~same]
    combined = pd.concat([previous, table], ignore_index=True)
    temporary = out.with_suffix(".tmp")
    combined.to_csv(temporary, index=False)
    temporary.replace(out)


if __name__ == "__main__":
    main()
