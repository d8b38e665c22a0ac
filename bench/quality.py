"""Benchmark: every attrlab.quality metric against Quantus 0.6 on the same batch, maps and random draws, in one run.

The batch is ``--n`` test digits (200 by default) and the seed ``deep`` model (freshly initialised: timing needs no
trained model; the scores are compared, not interpreted). The maps are LRP (``epsilon_plus_flat``) computed once;
the metrics that explain again (Average/Max Sensitivity, Random Logit) call the same LRP. Localisation uses the
digits' ink (pixels above the mid grey) as the ground-truth mask. Settings follow Pahde et al. (2023) scaled from
224 x 224 to 28 x 28 (see ``SETTINGS``). Quantus receives the same maps, the per-map second-moment normalisation
and, for Faithfulness Correlation, Average/Max Sensitivity and Random Logit, the same random draws (numpy's global
RNG seeded before its call, replayed by :mod:`attrlab.quality.draws`), so the two must agree: the largest absolute
difference is printed per metric. Region Perturbation runs in Quantus 0.6's grid layout to compare (Quantus 0.6's
batched loop takes the blur only through a wrapper around its per-image ``baseline_replacement_by_blur``); attrlab's
greedy-window layout, the one Pahde et al. ran, is timed too, without a Quantus counterpart in this release.

attrlab's time is the best of ``--repeats`` runs after one warm-up, Quantus' a single run (it is the slow side);
the device is synchronised before each clock reading. Prints a table with the ratios and writes it to
``bench/results/quality.csv`` (``quality-quick.csv`` with ``--quick``, or ``--out``).

    .venv/bin/python bench/quality.py [--quick] [--device cuda] [--n 200] [--repeats 3] [--metrics Sparseness,...]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timing import (
    add_device_argument,
    add_malloc_argument,
    host_memory,
)  # bench/timing.py (the script's folder is on sys.path)

import attrlab.quality as q
from attrlab.attribution import make_method
from attrlab.data import load_dataset
from attrlab.device import resolve_device
from attrlab.models import build_model
from attrlab.quality.draws import quantus_off_classes, quantus_subsets, quantus_uniform_noise

RESULTS = Path(__file__).parent / "results"
#: Pahde et al. (2023)'s settings, scaled to 28 x 28 digits: patch 14 of 224 -> 4 of 28 (grid: 49 regions, all
#: evaluated), 1 % subsets (8 of 784), 448 of 50176 features per pixel-flipping step -> 16 of 784
SETTINGS = {
    "patch_size": 4,
    "regions_evaluation": 49,
    "subset_size": 8,
    "nr_runs": 100,
    "features_in_step": 16,
    "nr_samples": 10,
    "lower_bound": 0.2,
}
QUICK = {"nr_runs": 20, "nr_samples": 3}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int, warm: bool):
    """(best wall time over ``repeats``, last result); one untimed warm-up call first when ``warm``."""
    if warm:
        function()
    best, result = float("inf"), None
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        result = function()
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def as_numpy(result) -> np.ndarray:
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().double().numpy()
    return np.asarray(result, dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_argument(parser)
    parser.add_argument("--n", type=int, default=None, help="test digits in the batch (default 200, --quick 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of attrlab's side (best is kept)")
    parser.add_argument("--quick", action="store_true", help="32 digits and fewer random runs: a smoke run")
    parser.add_argument("--metrics", default="", help="comma-separated metric names (default: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default="", help="CSV file (default bench/results/quality.csv, -quick with --quick)")
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    import quantus

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (32 if args.quick else 200)
    settings = {**SETTINGS, **(QUICK if args.quick else {})}
    data = load_dataset("digits", device="cpu")
    if not 0 < n <= len(data.test):
        raise SystemExit(f"--n must be between 1 and {len(data.test)}, got {n}")
    x, y = data.test.x[:n].to(device), data.test.y[:n].to(device)
    masks = x > 0
    model = build_model("deep", seed=0).to(device).eval()
    lrp = make_method("lrp", model, composite="epsilon_plus_flat")

    def explain(inputs, target):
        return lrp.attribute(inputs, target=target).detach()

    a = explain(x, y)
    x_np, y_np, a_np, s_np = (t.detach().cpu().numpy() for t in (x, y, a, masks.float()))
    x_np, a_np, s_np = x_np.astype(np.float32), a_np.astype(np.float32), s_np.astype(np.float32)
    quantus_device = str(device)

    def quantus_explain(model, inputs, targets, **kwargs):
        maps = explain(
            torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(targets), dtype=torch.int64, device=device),
        )
        return maps.cpu().numpy().astype(np.float32)

    norm = {
        "normalise": True,
        "normalise_func": quantus.normalise_func.normalise_by_average_second_moment_estimate,
        "normalise_func_kwargs": {"normalise_axes": (1, 2, 3)},
        "disable_warnings": True,
    }

    def run_quantus(metric, explained: bool = False, seed: int | None = None):
        def call():
            if seed is not None:
                np.random.seed(seed)
            extra = {"explain_func": quantus_explain} if explained else {}
            return metric(
                model=model,
                x_batch=x_np.copy(),
                y_batch=y_np.copy(),
                a_batch=a_np.copy(),
                s_batch=s_np.copy(),
                device=quantus_device,
                **extra,
            )

        return call

    def blur_per_image(arr, indices, **kwargs):
        out = arr.copy()
        for i in range(len(arr)):
            _, rows, cols = np.unravel_index(indices[i], (1, 28, 28))  # one channel: rows and columns
            out[i] = quantus.baseline_replacement_by_blur(
                arr=arr[i].reshape(1, 28, 28), indices=(rows, cols), indexed_axes=(1, 2), blur_kernel_size=15
            ).reshape(-1)
        return out

    s = settings
    subsets = quantus_subsets(n, s["nr_runs"], 784, s["subset_size"], seed=1)
    noise = quantus_uniform_noise(n, s["nr_samples"], (1, 28, 28), s["lower_bound"], None, seed=2)
    off = quantus_off_classes(y, 10, seed=42)
    rp = {"patch_size": s["patch_size"], "regions_evaluation": s["regions_evaluation"]}
    cases = {
        "Sparseness": (lambda: q.sparseness(a), run_quantus(quantus.Sparseness(abs=True, **norm))),
        "Complexity": (lambda: q.complexity(a), run_quantus(quantus.Complexity(abs=True, **norm))),
        "RelevanceRankAccuracy": (
            lambda: q.relevance_rank_accuracy(a, masks),
            run_quantus(quantus.RelevanceRankAccuracy(abs=True, **norm)),
        ),
        "RelevanceMassAccuracy": (
            lambda: q.relevance_mass_accuracy(a, masks),
            run_quantus(quantus.RelevanceMassAccuracy(abs=True, **norm)),
        ),
        "RegionPerturbation grid black": (
            lambda: q.region_perturbation(model, x, y, a, baseline="black", regions="grid", **rp),
            run_quantus(quantus.RegionPerturbation(perturb_baseline="black", abs=False, **rp, **norm)),
        ),
        "RegionPerturbation grid blur": (
            lambda: q.region_perturbation(model, x, y, a, baseline="blur", regions="grid", **rp),
            run_quantus(quantus.RegionPerturbation(perturb_func=blur_per_image, abs=False, **rp, **norm)),
        ),
        "RegionPerturbation windows blur": (
            lambda: q.region_perturbation(model, x, y, a, baseline="blur", regions="windows", **rp),
            None,
        ),
        "PixelFlipping": (
            lambda: q.pixel_flipping(model, x, y, a, features_in_step=s["features_in_step"], baseline=0.0),
            run_quantus(
                quantus.PixelFlipping(features_in_step=s["features_in_step"], perturb_baseline=0.0, abs=False, **norm)
            ),
        ),
        "FaithfulnessCorrelation": (
            lambda: q.faithfulness_correlation(
                model, x, y, a, nr_runs=s["nr_runs"], subset_size=s["subset_size"], subsets=subsets
            ),
            run_quantus(
                quantus.FaithfulnessCorrelation(
                    nr_runs=s["nr_runs"],
                    subset_size=s["subset_size"],
                    perturb_baseline="black",
                    abs=False,
                    return_aggregate=False,
                    **norm,
                ),
                seed=1,
            ),
        ),
        "AvgSensitivity": (
            lambda: q.avg_sensitivity(model, x, y, a, explain, nr_samples=s["nr_samples"], noise=noise),
            run_quantus(
                quantus.AvgSensitivity(nr_samples=s["nr_samples"], lower_bound=s["lower_bound"], abs=False, **norm),
                explained=True,
                seed=2,
            ),
        ),
        "MaxSensitivity": (
            lambda: q.max_sensitivity(model, x, y, a, explain, nr_samples=s["nr_samples"], noise=noise),
            run_quantus(
                quantus.MaxSensitivity(nr_samples=s["nr_samples"], lower_bound=s["lower_bound"], abs=False, **norm),
                explained=True,
                seed=2,
            ),
        ),
        "RandomLogit": (
            lambda: q.random_logit(x, y, a, explain, num_classes=10, off_classes=off),
            run_quantus(quantus.RandomLogit(num_classes=10, seed=42, abs=False, **norm), explained=True),
        ),
    }
    chosen = [name.strip() for name in args.metrics.split(",") if name.strip()] or list(cases)
    unknown = sorted(set(chosen) - set(cases))
    if unknown:
        raise SystemExit(f"unknown metrics {unknown}; valid names: {', '.join(cases)}")
    print(f"device {device}, {n} digits, deep model (random weights), LRP epsilon_plus_flat maps, settings {settings}")
    rows = []
    for name in chosen:
        ours, theirs = cases[name]
        ours_s, ours_result = timed(ours, device, args.repeats, warm=True)
        row = {
            "metric": name,
            "attrlab_s": ours_s,
            "quantus_s": float("nan"),
            "ratio": float("nan"),
            "max_abs_diff": float("nan"),
        }
        if theirs is not None:
            theirs_s, theirs_result = timed(theirs, device, 1, warm=False)
            expected, got = as_numpy(theirs_result), as_numpy(ours_result)
            both = ~(np.isnan(expected) | np.isnan(got))
            row.update(
                quantus_s=theirs_s,
                ratio=theirs_s / ours_s,
                max_abs_diff=float(np.abs(expected - got)[both].max()) if both.any() else float("nan"),
            )
            if not np.array_equal(np.isnan(expected), np.isnan(got)):
                row["max_abs_diff"] = float("inf")  # NaN in different places is a disagreement
        rows.append(row)
        print(
            f"{name:34s} attrlab {row['attrlab_s']:9.4f} s   quantus {row['quantus_s']:9.3f} s   "
            f"ratio {row['ratio']:8.1f}x   max |diff| {row['max_abs_diff']:.2e}",
            flush=True,
        )
    table = pd.DataFrame(rows)
    table.insert(0, "device", str(device))
    table.insert(1, "n", n)
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = Path(args.out) if args.out else RESULTS / ("quality-quick.csv" if args.quick else "quality.csv")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_suffix(".csv.tmp")
    table.to_csv(temporary, index=False)
    os.replace(temporary, target)
    compared = table.dropna(subset=["ratio"])
    print(
        f"\nslowest ratio {compared['ratio'].min():.1f}x ({compared.loc[compared['ratio'].idxmin(), 'metric']}), "
        f"target >= 10x; written to {target}"
    )


if __name__ == "__main__":
    main()
