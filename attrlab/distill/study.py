"""The thesis' e²KD protocol at digits scale: teachers, few-shot subsets, KD against e²KD, and the claims checked.

Böhle (2024), §8.2.1 and §8.2.4 (Tables 8.1-8.3): a teacher is distilled into a smaller student on few images per
class (50 and 200 shots of ImageNet there; 5 and 20 of digits here) or on the full training split, by KD
(``lam = 0``) and by e²KD (``lam > 0``), both also with frozen teacher outputs; a student trained on the labels
alone is the baseline. Students are scored on the test split (:func:`~attrlab.distill.evaluate.student_scores`).
Every regime gets about the same number of optimiser steps, so few shots means more epochs, not less training.

Run by the sweep ``book/regimes/distillation/seeds.yml`` with a ``run_dir`` per point, the chapter writes its rows
into the point's folder (:data:`RESULT_FILE`); :func:`collect_sweep` gathers the points into the small committed
table ``book/results/distillation/seeds.csv``, which the chapter summarises as means and spreads over the seeds
(:func:`seed_summary`)::

    attrlab run book/regimes/distillation/seeds.yml
    python -m attrlab.distill.study runs/regimes/distillation-seeds book/results/distillation/seeds.csv

The explanation pairs follow the thesis: Grad-CAM for conventional models, the B-cos map for B-cos models. A B-cos
teacher distilled into the conventional shallow model is compared with the student's Input x Gradient at the
input: for a piecewise-linear ReLU network ``W(x) = ∂f/∂x`` (up to biases), so ``W(x)^T ⊙ x`` is exactly the
analogue of the B-cos map (the thesis distils B-cos teachers into B-cos students instead).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..data import ImageDataset, Split
from ..models import build_model
from ..runstore import collect_command, point_tables, write_csv
from ..train import Run, TrainConfig, train
from .evaluate import student_scores
from .explain import TrainingExplanation, default_explanation, is_bcos
from .objective import Distillation
from .teacher import FrozenTeacher

#: the distillation methods of the tables: labels only, KD, e²KD, and both with frozen teacher outputs
DISTILLATION_METHODS = ("baseline", "kd", "e2kd", "kd_frozen", "e2kd_frozen")
#: how the tables name them (❄: frozen, as in the thesis' Table 8.3)
METHOD_LABELS = {
    "baseline": "Baseline (labels)",
    "kd": "KD",
    "e2kd": "+ e²KD",
    "kd_frozen": "❄ KD",
    "e2kd_frozen": "❄ + e²KD",
}

#: Tables 8.1-8.3 of the thesis (ImageNet; accuracy / agreement in %, 50 shots, 200 shots, full data)
THESIS_TABLES = pd.DataFrame(
    [
        ("8.1", "ResNet-34 → ResNet-18", "KD", 49.8, 55.5, 63.1, 71.9, 71.8, 81.2),
        ("8.1", "ResNet-34 → ResNet-18", "+ e²KD", 54.9, 61.7, 64.1, 73.2, 71.8, 81.6),
        ("8.2", "B-cos ResNet-34 → ResNet-18", "KD", 35.3, 38.4, 56.5, 62.9, 70.3, 79.9),
        ("8.2", "B-cos ResNet-34 → ResNet-18", "+ e²KD", 43.9, 48.4, 58.8, 66.0, 70.6, 80.3),
        ("8.3", "B-cos DenseNet-169 → ResNet-18", "KD", 37.3, 40.2, 51.3, 55.6, 71.2, 78.8),
        ("8.3", "B-cos DenseNet-169 → ResNet-18", "+ e²KD", 45.4, 49.0, 55.7, 60.7, 71.9, 79.8),
        ("8.3", "B-cos DenseNet-169 → ResNet-18", "❄ KD", 33.4, 35.7, 50.4, 54.5, 68.7, 75.2),
        ("8.3", "B-cos DenseNet-169 → ResNet-18", "❄ + e²KD", 38.7, 41.7, 53.6, 58.3, 69.5, 76.4),
    ],
    columns=[
        "table",
        "teacher → student",
        "method",
        "few acc",
        "few agree",
        "more acc",
        "more agree",
        "full acc",
        "full agree",
    ],
)


def few_shot(dataset: ImageDataset, shots: int | None, seed: int = 0) -> ImageDataset:
    """``dataset`` with a training split of ``shots`` seeded random images per class (``None``: unchanged).

    Parameters
    ----------
    dataset : ImageDataset
        The full dataset; its test split is kept.
    shots : int or None
        Training images per class.
    seed : int
        Selects the images.

    Returns
    -------
    ImageDataset
        The reduced dataset (training images in increasing index order).
    """
    if shots is None:
        return dataset
    if not isinstance(shots, int) or isinstance(shots, bool) or shots <= 0:
        raise ValueError(f"shots must be a positive integer or None (full data), got {shots!r}")
    generator = torch.Generator().manual_seed(seed)
    labels = dataset.train.y.cpu()
    chosen = []
    for label in range(dataset.num_classes):
        candidates = torch.nonzero(labels == label).flatten()
        if len(candidates) < shots:
            raise ValueError(f"class {label} has only {len(candidates)} training images, fewer than shots={shots}")
        chosen.append(candidates[torch.randperm(len(candidates), generator=generator)[:shots]])
    index = torch.cat(chosen).sort().values.to(dataset.train.y.device)
    train_split = Split(dataset.train.x[index], dataset.train.y[index])
    return ImageDataset(dataset.name, train_split, dataset.test, dataset.classes)


def epochs_for(train_size: int, batch_size: int, steps: int) -> int:
    """Epochs that give at least ``steps`` optimiser steps on ``train_size`` images in batches of ``batch_size``."""
    return max(1, math.ceil(steps / math.ceil(train_size / batch_size)))


def explanations_for(teacher: nn.Module, student: nn.Module) -> tuple[TrainingExplanation, TrainingExplanation]:
    """The thesis' explanation of each model (:func:`default_explanation`); a conventional student of a B-cos
    teacher gets Input x Gradient at the input, the analogue of the B-cos map (see the module docstring)."""
    teacher_explanation = default_explanation(teacher)
    student_explanation = default_explanation(student)
    if is_bcos(teacher) and not is_bcos(student):
        student_explanation = TrainingExplanation("ixg", "input")
    return teacher_explanation, student_explanation


def common_size(
    teacher: nn.Module,
    student: nn.Module,
    teacher_explanation: TrainingExplanation,
    student_explanation: TrainingExplanation,
    input_shape: tuple[int, int, int],
) -> int:
    """The smaller side of the two models' maps (one image is explained to find them): the coarser map sets it."""
    x = torch.zeros(1, *input_shape, device=next(teacher.parameters()).device)
    target = torch.zeros(1, dtype=torch.long, device=x.device)
    sides = [
        explanation(model, x, target, create_graph=False).shape[-1]
        for model, explanation in ((teacher, teacher_explanation), (student, student_explanation))
    ]
    return int(min(sides))


def distill_student(
    run_dir: str | Path,
    teacher: nn.Module | None,
    dataset: ImageDataset,
    config: TrainConfig,
    method: str,
    tau: float = 4.0,
    lam: float = 5.0,
    progress: bool = False,
    explanations: tuple[TrainingExplanation, TrainingExplanation] | None = None,
) -> Run:
    """Train (or resume, or reopen) one student by ``method`` (:data:`DISTILLATION_METHODS`) on ``dataset``.

    Parameters
    ----------
    run_dir : str or Path
        The student's run directory.
    teacher : nn.Module or None
        The trained teacher on ``config.device`` (``None`` only for the baseline).
    dataset : ImageDataset
        The data (a :func:`few_shot` subset or the full split).
    config : TrainConfig
        The student's training: model, epochs, augmentation, seed, ...; the loss is set here.
    method : str
        One of :data:`DISTILLATION_METHODS`.
    tau, lam : float
        KD temperature and explanation loss weight (``lam`` is ignored by KD).
    progress : bool
        Show a progress bar.
    explanations : tuple of TrainingExplanation, optional
        The teacher's and the student's explanation; default :func:`explanations_for`.

    Returns
    -------
    Run
        The finished student run.
    """
    if method not in DISTILLATION_METHODS:
        raise ValueError(f"unknown distillation method {method!r}; valid choices: {', '.join(DISTILLATION_METHODS)}")
    if method == "baseline":
        return train(run_dir, dataclasses.replace(config, loss="cross_entropy"), dataset=dataset, progress=progress)
    if teacher is None:
        raise ValueError(f"method {method!r} needs a teacher")
    device = next(teacher.parameters()).device
    probe = build_model(config.model, dataset.input_shape, dataset.num_classes).to(device)
    teacher_explanation, student_explanation = explanations or explanations_for(teacher, probe)
    size = common_size(teacher, probe, teacher_explanation, student_explanation, dataset.input_shape)
    frozen = None
    if method.endswith("_frozen"):
        frozen = FrozenTeacher.compute(teacher, dataset.train.x.to(device), teacher_explanation)
    weight = 0.0 if method.startswith("kd") else lam
    objective = Distillation(teacher, tau, weight, teacher_explanation, student_explanation, size, frozen=frozen)
    return train(
        run_dir, dataclasses.replace(config, loss="none"), dataset=dataset, objective=objective, progress=progress
    )


def data_label(shots: int | None) -> str:
    """How tables name a regime: ``"5 shots"`` or ``"full"``."""
    return "full" if shots is None else f"{shots} shots"


def compare_students(
    root: str | Path,
    teacher: nn.Module,
    dataset: ImageDataset,
    config: TrainConfig,
    shots: list[int | None],
    methods: list[str],
    steps: int,
    tau: float = 4.0,
    lam: float = 5.0,
    progress: bool = False,
) -> pd.DataFrame:
    """Distil ``teacher`` by every method on every regime and score the students on the test split.

    Parameters
    ----------
    root : str or Path
        Student runs go to ``root/<regime>-<method>``.
    teacher : nn.Module
        The trained teacher, on ``config.device``.
    dataset : ImageDataset
        The full dataset (few-shot subsets are drawn with ``config.seed``).
    config : TrainConfig
        The students' training (model, lr, augmentation, seed, device); epochs follow from ``steps``.
    shots : list of int or None
        The regimes: images per class, ``None`` for the full training split.
    methods : list of str
        Of :data:`DISTILLATION_METHODS`.
    steps : int
        Optimiser steps per student (at least; whole epochs).
    tau, lam : float
        KD temperature and explanation loss weight.
    progress : bool
        Progress bars per run.

    Returns
    -------
    pandas.DataFrame
        One row per (regime, method): ``data``, ``shots``, ``method``, ``accuracy``, ``agreement``, ``similarity``
        (in %), ``teacher_accuracy`` and ``run`` (the student's run directory).
    """
    for method in methods:
        if method not in DISTILLATION_METHODS:
            raise ValueError(
                f"unknown distillation method {method!r}; valid choices: {', '.join(DISTILLATION_METHODS)}"
            )
    device = next(teacher.parameters()).device
    probe = build_model(config.model, dataset.input_shape, dataset.num_classes).to(device)
    teacher_explanation, student_explanation = explanations_for(teacher, probe)
    size = common_size(teacher, probe, teacher_explanation, student_explanation, dataset.input_shape)
    rows: list[dict[str, Any]] = []
    for regime in shots:
        data = few_shot(dataset, regime, seed=config.seed)
        epochs = epochs_for(len(data.train), config.batch_size, steps)
        per_class = min(config.attr_per_class, regime or config.attr_per_class)
        student_config = dataclasses.replace(
            config, epochs=epochs, attr_per_class=per_class, extra={**config.extra, "shots": regime}
        )
        for method in methods:
            run = distill_student(
                Path(root) / f"{data_label(regime).replace(' ', '')}-{method}",
                teacher,
                data,
                student_config,
                method,
                tau=tau,
                lam=lam,
                progress=progress,
            )
            student = run.load_model(device=device)
            scores = student_scores(
                teacher, student, dataset.test.x, dataset.test.y, teacher_explanation, student_explanation, size
            )
            rows.append(
                {
                    "data": data_label(regime),
                    "shots": regime,
                    "method": method,
                    **{name: 100.0 * value for name, value in scores.items()},
                    "run": str(run.root),
                }
            )
    return pd.DataFrame(rows)


def thesis_layout(table: pd.DataFrame, metrics: tuple[str, ...] = ("accuracy", "agreement")) -> pd.DataFrame:
    """:func:`compare_students`' rows in the layout of Tables 8.1-8.3: methods down, (regime, metric) across."""
    wide = table.pivot_table(index="method", columns="data", values=list(metrics), sort=False)
    return _thesis_order(wide, table, metrics)


def _thesis_order(wide: pd.DataFrame, rows: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """A (metric, data) pivot of ``rows`` laid out as the thesis' tables: (regime, metric) columns with the regimes in
    the order they first appear, the methods down in :data:`DISTILLATION_METHODS` order, named by
    :data:`METHOD_LABELS`."""
    wide = wide.swaplevel(0, 1, axis=1)
    regimes = list(dict.fromkeys(rows["data"]))
    wide = wide.reindex(columns=[(regime, metric) for regime in regimes for metric in metrics])
    methods = [method for method in DISTILLATION_METHODS if method in set(rows["method"])]
    wide = wide.reindex(methods)
    wide.index = [METHOD_LABELS[method] for method in methods]
    return wide


def _value(table: pd.DataFrame, regime: str, method: str, metric: str) -> float:
    rows = table[(table["data"] == regime) & (table["method"] == method)]
    return float(rows[metric].mean()) if len(rows) else float("nan")


def check_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The thesis' claims on KD against e²KD (§8.2.1, §8.2.4), computed on :func:`compare_students`' rows.

    Each claim compares two methods on one regime (few = the fewest shots present, full = the full split); a claim
    whose methods or regimes are missing from ``table`` is left out.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`compare_students` (several seeds are averaged).

    Returns
    -------
    pandas.DataFrame
        ``claim``, ``thesis`` (what the thesis reports), ``ours`` (the difference here, in percentage points),
        ``holds``.
    """
    few_shots = sorted(value for value in set(table["shots"].dropna()))
    few = data_label(int(few_shots[0])) if few_shots else None
    full = "full" if (table["data"] == "full").any() else None
    claims: list[dict[str, Any]] = []

    def gain(regime: str | None, better: str, worse: str, metric: str) -> float:
        if regime is None:
            return float("nan")
        return _value(table, regime, better, metric) - _value(table, regime, worse, metric)

    def add(text: str, thesis: str, value: float) -> None:
        if not math.isnan(value):
            claims.append({"claim": text, "thesis": thesis, "ours": round(value, 2), "holds": bool(value > 0)})

    add(
        f"e²KD raises the student's accuracy over KD with few data ({few})",
        "+5.1 (8.1), +8.6 (8.2), +8.1 (8.3) pp at 50 shots",
        gain(few, "e2kd", "kd", "accuracy"),
    )
    add(
        f"e²KD raises the agreement with the teacher over KD with few data ({few})",
        "+6.2 (8.1), +10.0 (8.2), +8.8 (8.3) pp at 50 shots",
        gain(few, "e2kd", "kd", "agreement"),
    )
    few_gain, full_gain = gain(few, "e2kd", "kd", "accuracy"), gain(full, "e2kd", "kd", "accuracy")
    add(
        "the accuracy gain of e²KD is larger with few data than with the full data",
        "+5.1 vs +0.0 (8.1), +8.6 vs +0.3 (8.2), +8.1 vs +0.7 (8.3) pp",
        few_gain - full_gain,
    )
    for regime in dict.fromkeys(table["data"]):
        add(
            f"e²KD students explain more like the teacher than KD students ({regime})",
            "explanations closer to the teacher's (§8.2.3, qualitative and EPG)",
            gain(regime, "e2kd", "kd", "similarity"),
        )
    add(
        f"with frozen teacher outputs, e²KD beats KD in accuracy ({few})",
        "❄: 38.7 vs 33.4 % at 50 shots (8.3)",
        gain(few, "e2kd_frozen", "kd_frozen", "accuracy"),
    )
    add(
        f"frozen e²KD beats live KD in accuracy with few data ({few})",
        "38.7 vs 37.3 % at 50 shots (8.3)",
        gain(few, "e2kd_frozen", "kd", "accuracy"),
    )
    return pd.DataFrame(claims, columns=["claim", "thesis", "ours", "holds"])


#: a sweep point's rows of :func:`compare_students` (all teachers), in its ``run_dir``
RESULT_FILE = "distillation_results.csv"
#: the columns of a result table (one row per teacher, regime and method of one seed)
RESULT_COLUMNS = (
    "teacher",
    "seed",
    "steps",
    "data",
    "shots",
    "method",
    "accuracy",
    "agreement",
    "similarity",
    "teacher_accuracy",
)
#: the scores :func:`seed_summary` averages
SCORES = ("accuracy", "agreement", "similarity", "teacher_accuracy")


def write_results(frame: pd.DataFrame, path: str | Path) -> None:
    """Write result rows (:data:`RESULT_COLUMNS`, others dropped) as CSV, atomically (a temporary file, a rename)."""
    missing = [column for column in RESULT_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"result rows lack the columns {missing}; a result table has {list(RESULT_COLUMNS)}")
    write_csv(frame[list(RESULT_COLUMNS)], path)


def read_results(path: str | Path) -> pd.DataFrame:
    """A result table written by :func:`write_results` (checked for its columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no result table at {path}; run the sweep and collect it (see {__name__})")
    frame = pd.read_csv(path)
    missing = [column for column in RESULT_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a distillation result table: it lacks the columns {missing}")
    frame["shots"] = frame["shots"].astype(object).where(frame["shots"].notna(), None)
    return frame


def collect_sweep(output: str | Path) -> pd.DataFrame:
    """The result tables of every finished point of a sweep's ``output`` folder (``*/`` :data:`RESULT_FILE`), joined.

    Parameters
    ----------
    output : str or Path
        The sweep's output folder (its YAML's ``output``).

    Returns
    -------
    pandas.DataFrame
        All rows, ordered by seed (points with the same seed and regime: the last one read wins).
    """
    frame = point_tables(output, RESULT_FILE, read_results)
    frame = frame.drop_duplicates(["teacher", "seed", "data", "method"], keep="last")
    return frame.sort_values("seed", kind="stable").reset_index(drop=True)


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (over seeds, ``ddof = 1``) and seed count of every score, per teacher/regime/method.

    Parameters
    ----------
    table : pandas.DataFrame
        Result rows of several seeds (:func:`collect_sweep`).

    Returns
    -------
    pandas.DataFrame
        One row per (teacher, data, method), in the order first seen, with ``seeds`` and ``<score>_mean``,
        ``<score>_std`` for each of :data:`SCORES` (std NaN for one seed).
    """
    keys = ["teacher", "data", "method"]
    grouped = table.groupby(keys, sort=False)
    summary = grouped.size().rename("seeds").reset_index()
    for score in SCORES:
        summary[f"{score}_mean"] = grouped[score].mean().to_numpy()
        summary[f"{score}_std"] = grouped[score].std(ddof=1).to_numpy()
    return summary


def spread_layout(summary: pd.DataFrame, metrics: tuple[str, ...] = ("accuracy", "agreement")) -> pd.DataFrame:
    """:func:`seed_summary` of one teacher in the layout of :func:`thesis_layout`, cells as ``"mean ± std"``."""
    cells = summary.assign(
        **{
            metric: [f"{m:.1f} ± {s:.1f}" for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
            for metric in metrics
        }
    )
    return _thesis_order(cells.pivot(index="method", columns="data", values=list(metrics)), summary, metrics)


def claims_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`check_claims` on the seeds' means, with how many seeds each claim holds in on its own.

    Parameters
    ----------
    table : pandas.DataFrame
        Result rows of one teacher and several seeds (a ``seed`` column).

    Returns
    -------
    pandas.DataFrame
        :func:`check_claims`' columns (``ours`` the difference of the means) and ``seeds holding`` as ``"k of n"``.
    """
    claims = check_claims(table)
    per_seed = [check_claims(rows).set_index("claim")["holds"] for _, rows in table.groupby("seed")]
    counts = [sum(bool(held.get(claim, False)) for held in per_seed) for claim in claims["claim"]]
    claims["seeds holding"] = [f"{count} of {len(per_seed)}" for count in counts]
    return claims


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attrlab.distill.study OUTPUT TABLE``: collect the seed sweep's points into one result table."""
    return collect_command(
        argv,
        "Collect the distillation sweep's result tables into one CSV.",
        "book/results/distillation/seeds.csv",
        collect_sweep,
        write_results,
        "seed",
    )


__all__ = [
    "DISTILLATION_METHODS",
    "RESULT_COLUMNS",
    "RESULT_FILE",
    "SCORES",
    "METHOD_LABELS",
    "THESIS_TABLES",
    "check_claims",
    "claims_over_seeds",
    "collect_sweep",
    "common_size",
    "compare_students",
    "data_label",
    "distill_student",
    "epochs_for",
    "explanations_for",
    "few_shot",
    "main",
    "read_results",
    "seed_summary",
    "spread_layout",
    "thesis_layout",
    "write_results",
]


if __name__ == "__main__":
    raise SystemExit(main())
