"""The one-command GPU check (``make gpu-check``): the CUDA-marked tests and every benchmark in quick mode on the GPU.

    PYTHONPATH=$PWD python bench/gpu_check.py          # what ``make gpu-check`` runs; needs no installed package

Steps, each a subprocess with its own time limit (about 5 minutes in all on one GPU):

1. ``pytest -m cuda``: every device-parametrised test on CUDA (tests needing zennit or captum skip where those are
   not installed), the no-sync check of a tracked step, the deterministic-run check;
2. ``bench/attribution.py --quick`` at batch 200 and 4096 (LRP and Grad-CAM against an input-gradient pass);
3. ``bench/tracking.py --quick`` on the GPU and on the CPU (a tracked step against an input-gradient pass, a tracked
   digits run's wall time on each);
4. ``bench/grids.py --quick`` on 2x2 and 3x3 GridPG (batched against a per-image loop, every method and layer);
5. ``bench/bcos.py --quick``, ``bench/guidance.py --quick``, ``bench/sanity.py`` on 64 digits and
   ``bench/quality.py --quick`` (this one only where Quantus is installed: it is its reference; otherwise the report
   says it was skipped).

Everything each step printed goes to ``bench/results/gpu-check-<device name>.md`` (written when the check ends, via a
temporary file), the grid rates also to ``bench/results/grids.csv``, the sanity and quality tables to
``sanity-gpu.csv`` and ``quality-gpu.csv`` there (the CPU tables stay). Without a GPU it stops at once with exit code 2
and says so; any failing step makes the exit code 1. ``--allow-cpu`` runs the same steps on the CPU with the smallest
sizes; it exists to test this script on machines without a GPU, not to measure anything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NO_GPU = 2
#: the whole check's time on a GPU, in seconds (each step also has its own limit)
BUDGET_S = 300


@dataclass
class Step:
    title: str
    command: list[str]
    limit_s: int
    ok_codes: tuple[int, ...] = (0,)
    requires: str | None = None  #: a module the step needs; without it the step is skipped and said so


def later_benchmarks(python: str, device: str, results: Path, tiny: bool) -> list[Step]:
    """The B-cos, guidance, sanity and quality benchmarks (tiny: the smallest sizes, to test this script)."""

    def limit(gpu_seconds: int) -> int:  # the CPU test run has no time target
        return 600 if tiny else gpu_seconds

    batch = ["--batch", "8"] if tiny else []
    images = ["--images", "4", "--loop-images", "4"] if tiny else ["--images", "64", "--loop-images", "16"]
    quality = ["--n", "4", "--repeats", "1", "--metrics", "Sparseness"] if tiny else []
    return [
        Step("B-cos benchmark", [python, "bench/bcos.py", "--quick", "--device", device, *batch], limit(25)),
        Step("guidance benchmark", [python, "bench/guidance.py", "--quick", "--device", device, *batch], limit(30)),
        Step(
            "sanity-check benchmark",
            [python, "bench/sanity.py", "--device", device, *images, "--out", str(results / "sanity-gpu.csv")],
            limit(45),
        ),
        Step(
            "quality benchmark (against Quantus)",
            [
                python,
                "bench/quality.py",
                "--quick",
                "--device",
                device,
                *quality,
                "--out",
                str(results / "quality-gpu.csv"),
            ],
            limit(45),
            requires="quantus",
        ),
    ]


def steps(device: str, quick_cpu: bool, results: Path) -> list[Step]:
    python = sys.executable
    if quick_cpu:  # --allow-cpu: the same commands at the smallest sizes, to test the script itself
        return [
            Step(
                "tests (device helpers)",
                [
                    python,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "tests/test_device.py",
                    "-k",
                    "device_helpers",
                ],
                600,
            ),
            Step(
                "attribution benchmark",
                [python, "bench/attribution.py", "--quick", "--device", device, "--batch", "8", "--repeats", "1"],
                600,
            ),
            Step(
                "grid benchmark, 2x2 GridPG",
                [
                    python,
                    "bench/grids.py",
                    "--quick",
                    "--device",
                    device,
                    "--methods",
                    "gradient",
                    "--layers",
                    "input",
                    "--grids",
                    "4",
                    "--loop-grids",
                    "2",
                    "--batch-sizes",
                    "4",
                    "--out",
                    str(results / "grids.csv"),
                ],
                600,
            ),
            *later_benchmarks(python, device, results, tiny=True),
        ]
    return [
        # exit code 5: no CUDA-marked test was collected, which cannot happen on a GPU machine but is not a failure
        Step("CUDA-marked tests", [python, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-x"], 120),
        Step(
            "attribution benchmark, batch 200",
            [python, "bench/attribution.py", "--quick", "--device", device, "--batch", "200"],
            30,
        ),
        Step(
            "attribution benchmark, batch 4096",
            [python, "bench/attribution.py", "--quick", "--device", device, "--batch", "4096"],
            45,
        ),
        Step("tracking benchmark, GPU", [python, "bench/tracking.py", "--quick", "--device", device], 30),
        Step(
            "tracking benchmark, CPU (the run's wall time to compare)",
            [python, "bench/tracking.py", "--quick", "--device", "cpu"],
            60,
        ),
        Step(
            "grid benchmark, 2x2 GridPG",
            [python, "bench/grids.py", "--quick", "--device", device, "--n", "2", "--out", str(results / "grids.csv")],
            60,
        ),
        Step(
            "grid benchmark, 3x3 GridPG",
            [python, "bench/grids.py", "--quick", "--device", device, "--n", "3", "--out", str(results / "grids.csv")],
            75,
        ),
        *later_benchmarks(python, device, results, tiny=False),
    ]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "device"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU at tiny sizes (tests this script)")
    parser.add_argument("--results", default=str(RESULTS), help="folder for the report (default bench/results)")
    args = parser.parse_args(argv)

    import torch

    if torch.cuda.is_available():
        device, name = "cuda", torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device, name = "cpu", f"cpu-{platform.machine()}"
    else:
        print(
            f"gpu-check: no CUDA GPU is visible here (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}; torch.cuda.is_available() is False). Run it on a machine with an "
            "NVIDIA GPU and a CUDA build of PyTorch; nothing was run.",
            file=sys.stderr,
        )
        return NO_GPU

    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    report = [
        f"# gpu-check on {name}",
        "",
        f"{stamp}; torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); python "
        f"{platform.python_version()}; {'TEST RUN ON THE CPU (--allow-cpu), no figures' if device == 'cpu' else ''}",
        "",
    ]
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    failed, started = [], time.perf_counter()
    for step in steps(device, device == "cpu", results):
        if step.requires and importlib.util.find_spec(step.requires) is None:
            print(f"== {step.title}: skipped ({step.requires} is not installed)", flush=True)
            report += [f"## {step.title}: SKIPPED ({step.requires} is not installed; carry its wheel to run it)", ""]
            continue
        left = BUDGET_S - (time.perf_counter() - started)
        if device != "cpu" and left < 5:
            failed.append(step.title)
            report += [f"## {step.title}: NOT RUN (the {BUDGET_S} s budget was spent)", ""]
            continue
        limit = step.limit_s if device == "cpu" else int(min(step.limit_s, left))
        print(f"== {step.title}: {' '.join(step.command[1:])}", flush=True)
        begin = time.perf_counter()
        try:
            done = subprocess.run(
                step.command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=limit
            )
            code, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as err:
            code = "timeout"
            output = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            output += f"\n(stopped after its limit of {limit} s)"
        seconds = time.perf_counter() - begin
        ok = code in step.ok_codes or (code == 5 and "pytest" in step.command)
        if not ok:
            failed.append(step.title)
        status = "ok" if ok else f"FAILED (exit {code})"
        print(output.rstrip()[-4000:], flush=True)
        print(f"-- {step.title}: {status}, {seconds:.0f} s", flush=True)
        report += [
            f"## {step.title}: {status}, {seconds:.0f} s",
            "",
            f"`{' '.join(step.command[1:])}`",
            "",
            "```",
            output.rstrip(),
            "```",
            "",
        ]
    total = time.perf_counter() - started
    verdict = "all steps passed" if not failed else f"FAILED: {', '.join(failed)}"
    report.insert(3, f"{verdict}; {total:.0f} s in all")
    target = results / f"gpu-check-{safe_name(name)}.md"
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text("\n".join(report) + "\n", encoding="utf-8")
    temporary.replace(target)
    print(
        f"gpu-check: {verdict} in {total:.0f} s; report in {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}"
    )
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
