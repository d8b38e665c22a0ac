"""A teacher guided on the spurious-correlation set, distilled with and without the explanation loss (thesis §8.2.2).

Böhle (2024), §8.2.2 and appendix E.2.2: a teacher trained on Waterbirds-100 with model guidance (Rao et al. 2023)
classifies birds by the bird, not the background that is perfectly correlated with the label during training; it is
distilled into a student on the same biased training images by KD and by e²KD, and the students are scored on the
unseen (class, background) groups. The thesis finds that e²KD students follow the teacher there (higher accuracy and
agreement on the unseen groups, explanations on the bird), KD students much less.

Here the data are :func:`attrlab.canvas.spurious_dataset` (digits 0-4 against 5-9; horizontal stripes with the
first group, vertical with the second during training, independent stripes at test time), the teacher is guided by
:class:`attrlab.guidance.objective.GuidanceObjective` from its first step (a localisation loss on its explanation of
the true class against the digit's mask), and the students are trained by
:func:`attrlab.distill.study.distill_student` on the biased training split. Every model is scored with
:func:`attrlab.canvas.group_accuracy` (worst group, overall), by its agreement with the guided teacher on the unseen
groups G2 and G3, and by the EPG (:func:`attrlab.guidance.metrics.energy_pointing_game`) of its explanation of the
true class inside the digit's box. :func:`spurious_study` runs one seed (resumably: every model is a run directory),
:func:`main` several seeds into the small table the chapter reads, and :func:`check_spurious_claims` computes the
claims.

Stripes lie behind the digit inside its box too, and a conventional network can read them while its positive
attribution stays on the digit: the default guidance is therefore RRR* (Ross et al. 2017, every signed attribution
outside the mask penalised) against the digit's pixels, with the Energy and L1 losses of the brief as settings
(:class:`Guidance`).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from ..attribution.differentiable import TRAINING_METHODS
from ..attribution.model_state import eval_semantics
from ..canvas import SpuriousSplit, group_accuracy, spurious_dataset
from ..data import ImageDataset
from ..device import resolve_device
from ..guidance.losses import LOSSES
from ..guidance.metrics import energy_pointing_game
from ..guidance.objective import MASK_KINDS, GuidanceObjective
from ..models import build_model
from ..runstore import RunStore, atomic_write_text
from ..train import TrainConfig, require_positive_ints, train
from .evaluate import predictions
from .explain import TrainingExplanation
from .study import distill_student, epochs_for

#: the models of one seed's table, in its order: two teachers, then the students of the guided one
ROLES = ("teacher", "guided teacher", "baseline", "kd", "e2kd")
#: how the table names them
ROLE_LABELS = {
    "teacher": "Teacher (unguided)",
    "guided teacher": "Teacher (guided)",
    "baseline": "Student, labels only",
    "kd": "Student, KD",
    "e2kd": "Student, + e²KD",
}
#: the columns of a result table (one row per model and seed; scores in %)
SPURIOUS_COLUMNS = (
    "seed",
    "role",
    "G1",
    "G2",
    "G3",
    "G4",
    "worst",
    "overall",
    "unseen",
    "unseen_agreement",
    "epg",
)
#: the scores of :data:`SPURIOUS_COLUMNS`
SPURIOUS_SCORES = SPURIOUS_COLUMNS[2:]
#: the folder names of the roles' runs under a seed's root
RUN_NAMES = {role: role.replace(" ", "-") for role in ROLES}


@dataclass(frozen=True)
class Guidance:
    """How the guided teacher is guided: ``lam * loss(method@layer map of the true class, mask)`` at every step.

    Parameters
    ----------
    loss : str
        One of :data:`~attrlab.guidance.losses.LOSSES`.
    method : str
        One of :data:`~attrlab.attribution.differentiable.TRAINING_METHODS`.
    layer : str
        ``"input"`` or a layer of the teacher.
    lam : float
        The weight of the localisation loss (> 0).
    mask : str
        ``"box"`` (the digit's box) or ``"pixels"`` (its ink); see :data:`~attrlab.guidance.objective.MASK_KINDS`.
    """

    loss: str = "rrr"
    method: str = "ig_xdnn"
    layer: str = "input"
    lam: float = 100.0
    mask: str = "pixels"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown localisation loss {self.loss!r}; valid choices: {', '.join(LOSSES)}")
        if self.method not in TRAINING_METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid choices: {', '.join(TRAINING_METHODS)}")
        if self.mask not in ("box", "pixels"):
            raise ValueError(f"unknown mask {self.mask!r}; valid choices: box, pixels")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not self.lam > 0:
            raise ValueError(f"the guidance weight lam must be a positive number, got {self.lam!r}")


@dataclass(frozen=True)
class SpuriousSetup:
    """Everything one seed of the study depends on (its run directories are keyed by it).

    Parameters
    ----------
    teacher, student : str
        Registered model names.
    train_count, test_count : int
        Canvases of the biased training split and of the unbiased test split.
    teacher_epochs : int
        Training passes of both teachers (from scratch; the guided one is guided from its first step).
    teacher_lr : float
        Adam learning rate of the teachers.
    guidance : Guidance
        The guided teacher's localisation loss.
    steps : int
        Optimiser steps of every student (whole epochs, at least this many).
    student_lr : float
        Adam learning rate of the students.
    batch_size : int
        Images per step (teachers and students).
    tau : float
        KD temperature.
    lam : float
        Weight of the explanation loss of e²KD.
    explanation : str
        The explanation e²KD matches and the EPG scores, as ``method@layer``, for teacher and student alike.
    seed : int
        Seeds the canvases, the weights and the batches.
    """

    teacher: str = "vgg_small_xdnn"
    student: str = "shallow"
    train_count: int = 2000
    test_count: int = 1000
    teacher_epochs: int = 15
    teacher_lr: float = 3e-3
    guidance: Guidance = Guidance()
    steps: int = 400
    student_lr: float = 3e-3
    batch_size: int = 50
    tau: float = 4.0
    lam: float = 5.0
    explanation: str = "ixg@input"
    seed: int = 0

    def __post_init__(self) -> None:
        require_positive_ints(self, ("train_count", "test_count", "teacher_epochs", "steps", "batch_size"))
        if not self.tau > 0 or not self.lam > 0:
            raise ValueError(f"tau and lam must be positive, got tau={self.tau!r}, lam={self.lam!r}")
        self.training_explanation  # noqa: B018  (checks the method and the layer's form)

    @property
    def training_explanation(self) -> TrainingExplanation:
        """:attr:`explanation` as a :class:`~attrlab.distill.explain.TrainingExplanation`."""
        method, sep, layer = self.explanation.partition("@")
        if not sep:
            raise ValueError(f"explanation must be 'method@layer', e.g. 'ixg@input', got {self.explanation!r}")
        return TrainingExplanation(method, layer)


def spurious_data(setup: SpuriousSetup) -> ImageDataset:
    """The study's data: :func:`~attrlab.canvas.spurious_dataset` of 32 x 32 canvases seeded by ``setup.seed``."""
    return spurious_dataset(size=32, train_count=setup.train_count, test_count=setup.test_count, seed=setup.seed)


def load_trained(
    run_dir: str | Path, config: TrainConfig, dataset: ImageDataset, device: str | torch.device
) -> nn.Module:
    """The final weights of the finished run ``run_dir`` of ``config`` on ``dataset``, built for the dataset's shape.

    (:meth:`attrlab.train.Run.load_model` builds from the registered datasets' shapes, which the spurious set,
    made in memory, is not among.)
    """
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    model.load_state_dict(RunStore(run_dir).load_checkpoint(None, map_location="cpu")["model"])
    return model.to(device).eval()


def teacher_config(setup: SpuriousSetup, guided: bool, device: str) -> TrainConfig:
    """The training of the unguided or the guided teacher (cross-entropy, no augmentation: boxes do not move)."""
    name = None
    if guided:
        g = setup.guidance
        name = f"guidance-{g.loss}-{g.method}-{g.layer}"
    return TrainConfig(
        dataset="spurious",
        model=setup.teacher,
        epochs=setup.teacher_epochs,
        batch_size=setup.batch_size,
        lr=setup.teacher_lr,
        seed=setup.seed,
        eval_every=10**6,
        attr_per_class=1,
        device=device,
        objective=name,
        extra={"guidance": dataclasses.asdict(setup.guidance)} if guided else {},
    )


def train_teacher(
    run_dir: str | Path, setup: SpuriousSetup, data: ImageDataset, guided: bool, device: str = "cpu"
) -> nn.Module:
    """Train (or resume, or reopen) the unguided or the guided teacher and return it in eval mode on ``device``.

    Parameters
    ----------
    run_dir : str or Path
        The teacher's run directory.
    setup : SpuriousSetup
        The study's settings.
    data : ImageDataset
        :func:`spurious_data` of ``setup``.
    guided : bool
        Train with ``setup.guidance`` (a :class:`~attrlab.guidance.objective.GuidanceObjective` on the digit's mask).
    device : str
        Where to train.

    Returns
    -------
    nn.Module
        The trained teacher.
    """
    config = teacher_config(setup, guided, device)
    objective = None
    if guided:
        g = setup.guidance
        assert isinstance(data.train, SpuriousSplit)
        objective = GuidanceObjective(data.train, g.loss, g.method, g.layer, g.lam, mask=g.mask, seed=setup.seed)
    train(run_dir, config, dataset=data, objective=objective)
    return load_trained(run_dir, config, data, resolve_device(device))


def spurious_scores(
    model: nn.Module,
    split: SpuriousSplit,
    explanation: TrainingExplanation,
    teacher: nn.Module | None = None,
    batch_size: int = 250,
) -> dict[str, float]:
    """Group accuracies, accuracy and agreement on the unseen groups, and EPG of ``model`` on ``split`` (in %).

    Parameters
    ----------
    model : nn.Module
        A trained classifier.
    split : SpuriousSplit
        The test canvases (all four groups).
    explanation : TrainingExplanation
        The explanation whose EPG (of the true class, in the digit's box) is reported.
    teacher : nn.Module, optional
        The teacher the agreement is measured against; without one the agreement is NaN.
    batch_size : int
        Images per explanation call.

    Returns
    -------
    dict
        ``G1``..``G4``, ``worst``, ``overall`` (:func:`~attrlab.canvas.group_accuracy`), ``unseen`` (accuracy on
        G2 and G3), ``unseen_agreement`` and ``epg``.
    """
    device = next(model.parameters()).device
    split = split.to(device)
    predicted = predictions(model, split.x)
    scores = group_accuracy(predicted, split)
    unseen = (split.group == 1) | (split.group == 2)
    scores["unseen"] = 100 * float((predicted == split.y)[unseen].float().mean())
    if teacher is not None:
        agree = predicted == predictions(teacher, split.x)
        scores["unseen_agreement"] = 100 * float(agree[unseen].float().mean())
    else:
        scores["unseen_agreement"] = float("nan")
    masks = split.class_masks(split.y, "box")
    epg = []
    with eval_semantics(model):
        for i in range(0, len(split), batch_size):
            maps = explanation(model, split.x[i : i + batch_size], split.y[i : i + batch_size]).detach()
            epg.append(energy_pointing_game(maps, masks[i : i + batch_size]))
    scores["epg"] = 100 * float(torch.cat(epg).nanmean())
    return scores


def spurious_study(root: str | Path, setup: SpuriousSetup, device: str = "cpu", progress: bool = False) -> pd.DataFrame:
    """One seed: both teachers, the guided teacher's students (labels only, KD, e²KD), all scored on the test split.

    Every model is a run directory under ``root`` (:data:`RUN_NAMES`), so an interrupted call resumes and a finished
    one only re-scores. The students train on the biased training split with ``setup.steps`` steps each.

    Parameters
    ----------
    root : str or Path
        The seed's folder; ``setup.json`` there records the setup, and a different setup is refused.
    setup : SpuriousSetup
        The settings.
    device : str
        Where to train and score (``"cpu"``, ``"cuda"``, ``"auto"``).
    progress : bool
        Progress bars of the students' training.

    Returns
    -------
    pandas.DataFrame
        One row per :data:`ROLES` entry with :data:`SPURIOUS_COLUMNS`.
    """
    root = Path(root)
    record = _setup_json(setup)
    stored = root / "setup.json"
    if stored.is_file() and stored.read_text() != record:
        raise ValueError(f"{root} holds runs of another setup ({stored}); use a new folder for {setup}")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stored, record)
    target = resolve_device(device)
    data = spurious_data(setup)
    assert isinstance(data.test, SpuriousSplit)
    explanation = setup.training_explanation
    models = {
        "teacher": train_teacher(root / RUN_NAMES["teacher"], setup, data, False, str(target)),
        "guided teacher": train_teacher(root / RUN_NAMES["guided teacher"], setup, data, True, str(target)),
    }
    guided = models["guided teacher"]
    student_config = TrainConfig(
        dataset="spurious",
        model=setup.student,
        epochs=epochs_for(len(data.train), setup.batch_size, setup.steps),
        batch_size=setup.batch_size,
        lr=setup.student_lr,
        seed=setup.seed,
        eval_every=10**6,
        attr_per_class=1,
        device=str(target),
    )
    for method in ("baseline", "kd", "e2kd"):
        run = distill_student(
            root / RUN_NAMES[method],
            guided,
            data,
            student_config,
            method,
            tau=setup.tau,
            lam=setup.lam,
            progress=progress,
            explanations=(explanation, explanation),
        )
        config = student_config if method != "baseline" else dataclasses.replace(student_config, loss="cross_entropy")
        models[method] = load_trained(run.root, config, data, target)
    rows = []
    for role in ROLES:
        scores = spurious_scores(models[role], data.test, explanation, teacher=guided)
        rows.append({"seed": setup.seed, "role": role, **scores})
    return pd.DataFrame(rows, columns=list(SPURIOUS_COLUMNS))


def _setup_json(setup: SpuriousSetup) -> str:
    return json.dumps(dataclasses.asdict(setup), sort_keys=True, indent=1) + "\n"


def spurious_layout(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of one or several seeds as the chapter's table: models down, scores across as ``mean ± std``.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`spurious_study` rows (a ``seed`` column; with one seed the spread is left out).

    Returns
    -------
    pandas.DataFrame
        Index: :data:`ROLE_LABELS`; columns: worst group, overall, unseen groups, agreement on unseen groups, EPG.
    """
    columns = {
        "worst": "worst group",
        "overall": "overall",
        "unseen": "unseen groups",
        "unseen_agreement": "agreement (unseen)",
        "epg": "EPG",
    }
    grouped = table.groupby("role", sort=False)
    means, spreads = grouped[list(columns)].mean(), grouped[list(columns)].std(ddof=1)
    several = table["seed"].nunique() > 1
    cells = {
        label: [
            "–"
            if pd.isna(means.loc[role, key])
            else (
                f"{means.loc[role, key]:.1f} ± {spreads.loc[role, key]:.1f}"
                if several
                else f"{means.loc[role, key]:.1f}"
            )
            for role in means.index
        ]
        for key, label in columns.items()
    }
    roles = [role for role in ROLES if role in means.index]
    frame = pd.DataFrame(cells, index=list(means.index)).reindex(roles)
    frame.index = [ROLE_LABELS[role] for role in roles]
    return frame


def _mean(table: pd.DataFrame, role: str, score: str) -> float:
    rows = table[table["role"] == role]
    return float(rows[score].mean()) if len(rows) else float("nan")


def check_spurious_claims(table: pd.DataFrame) -> pd.DataFrame:
    """The thesis' claims on guided teachers and their students (Table 7.1, §8.2.2), on the seeds' means.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`spurious_study` rows of one or several seeds.

    Returns
    -------
    pandas.DataFrame
        ``claim``, ``thesis``, ``ours`` (the difference of means the claim says is positive, points), ``holds`` and
        ``seeds holding`` (``"k of n"``: in how many seeds the difference is positive on its own).
    """

    def gain(rows: pd.DataFrame, better: str, worse: str, score: str) -> float:
        return _mean(rows, better, score) - _mean(rows, worse, score)

    def both(rows: pd.DataFrame) -> float:
        # e²KD above KD in worst-group accuracy AND in EPG: the smaller of the two margins
        return min(gain(rows, "e2kd", "kd", "worst"), gain(rows, "e2kd", "kd", "epg"))

    claims = [
        (
            "model guidance raises the teacher's worst-group accuracy",
            "Table 7.1: worst group (waterbird on land) up with Energy and L1 guidance",
            lambda rows: gain(rows, "guided teacher", "teacher", "worst"),
        ),
        (
            "model guidance raises the teacher's EPG (its explanation lies on the digit)",
            "Table D.1 / Fig. 7.13: explanations move to the bird",
            lambda rows: gain(rows, "guided teacher", "teacher", "epg"),
        ),
        (
            "e²KD students are more accurate than KD students on the worst group",
            "Fig. 8.4: higher accuracy on the unseen groups",
            lambda rows: gain(rows, "e2kd", "kd", "worst"),
        ),
        (
            "e²KD students agree more with the teacher on the unseen groups than KD students",
            "Fig. 8.4: higher agreement on the unseen groups",
            lambda rows: gain(rows, "e2kd", "kd", "unseen_agreement"),
        ),
        (
            "e²KD students explain inside the digit's box more than KD students (EPG)",
            "Figs. 8.2, E.1, E.2: the teacher's focus on the bird is kept",
            lambda rows: gain(rows, "e2kd", "kd", "epg"),
        ),
        (
            "the student inherits the right reasons only with the explanation loss (e²KD above KD in worst group and EPG)",
            "§8.2.2: KD students rely on the background, e²KD students on the bird",
            both,
        ),
    ]
    per_seed = [rows for _, rows in table.groupby("seed")]
    out = []
    for claim, thesis, value in claims:
        ours = value(table)
        held = sum(value(rows) > 0 for rows in per_seed)
        out.append(
            {
                "claim": claim,
                "thesis": thesis,
                "ours": round(ours, 2),
                "holds": bool(ours > 0),
                "seeds holding": f"{held} of {len(per_seed)}",
            }
        )
    return pd.DataFrame(out)


def write_spurious(frame: pd.DataFrame, path: str | Path, setup: SpuriousSetup | None = None) -> None:
    """Write :func:`spurious_study` rows as CSV, atomically (a temporary file, then a rename), and ``setup`` (its
    seed left out) next to it as ``<path>.json`` (:func:`read_setup`) when given."""
    missing = [column for column in SPURIOUS_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"rows lack the columns {missing}; a spurious table has {list(SPURIOUS_COLUMNS)}")
    buffer = io.StringIO()
    frame[list(SPURIOUS_COLUMNS)].to_csv(buffer, index=False, float_format="%.6g")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if setup is not None:
        settings = {key: value for key, value in dataclasses.asdict(setup).items() if key != "seed"}
        atomic_write_text(_setup_path(path), json.dumps(settings, sort_keys=True, indent=1) + "\n")
    atomic_write_text(path, buffer.getvalue())


def _setup_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_setup(path: str | Path) -> SpuriousSetup:
    """The setup :func:`write_spurious` stored next to the table ``path`` (seed 0; the table holds the seeds)."""
    settings = json.loads(_setup_path(Path(path)).read_text())
    settings["guidance"] = Guidance(**settings["guidance"])
    return SpuriousSetup(**settings)


def read_spurious(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_spurious` (checked for its columns and roles)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no spurious-set table at {path}; run `python -m {__name__}` to make it")
    frame = pd.read_csv(path)
    missing = [column for column in SPURIOUS_COLUMNS if column not in frame.columns]
    unknown = sorted(set(frame["role"]) - set(ROLES)) if "role" in frame else []
    if missing or unknown:
        raise ValueError(f"{path} is not a spurious-set table: missing columns {missing}, unknown roles {unknown}")
    return frame


def _setup_from(args: argparse.Namespace, seed: int) -> SpuriousSetup:
    guidance = Guidance(args.guidance_loss, args.guidance_method, args.guidance_layer, args.guidance_lam, args.mask)
    return SpuriousSetup(
        teacher_epochs=args.teacher_epochs,
        guidance=guidance,
        steps=args.steps,
        lam=args.lam,
        explanation=args.explanation,
        train_count=args.train_count,
        seed=seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m attrlab.distill.spurious ROOT TABLE [--seeds 0,1,2] ...``: run the study (resumably), write TABLE."""
    defaults = SpuriousSetup()
    parser = argparse.ArgumentParser(description="A guided teacher on the spurious set, distilled by KD and e²KD.")
    parser.add_argument("root", help="folder of the runs (one subfolder per seed), e.g. runs/distillation-spurious")
    parser.add_argument("table", help="the CSV to write, e.g. book/results/distillation/spurious.csv")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--teacher-epochs", type=int, default=defaults.teacher_epochs)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps per student")
    parser.add_argument("--lam", type=float, default=defaults.lam, help="weight of e²KD's explanation loss")
    parser.add_argument("--explanation", default=defaults.explanation, help="method@layer matched by e²KD")
    parser.add_argument("--train-count", type=int, default=defaults.train_count)
    parser.add_argument("--guidance-loss", default=defaults.guidance.loss, choices=LOSSES)
    parser.add_argument("--guidance-method", default=defaults.guidance.method, choices=TRAINING_METHODS)
    parser.add_argument("--guidance-layer", default=defaults.guidance.layer)
    parser.add_argument("--guidance-lam", type=float, default=defaults.guidance.lam)
    parser.add_argument("--mask", default=defaults.guidance.mask, choices=[m for m in MASK_KINDS if m != "outside"])
    args = parser.parse_args(argv)
    try:
        seeds = [int(part) for part in args.seeds.split(",")]
        setups = [_setup_from(args, seed) for seed in seeds]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    frames: list[pd.DataFrame] = []
    for setup in setups:
        frames.append(spurious_study(Path(args.root) / f"seed{setup.seed}", setup, device=args.device))
        write_spurious(pd.concat(frames, ignore_index=True), args.table, setup)  # after every seed: a partial table
        print(f"seed {setup.seed} done: {args.table}", flush=True)
    return 0


__all__ = [
    "ROLES",
    "ROLE_LABELS",
    "RUN_NAMES",
    "SPURIOUS_COLUMNS",
    "SPURIOUS_SCORES",
    "Guidance",
    "SpuriousSetup",
    "check_spurious_claims",
    "load_trained",
    "main",
    "read_setup",
    "read_spurious",
    "spurious_data",
    "spurious_layout",
    "spurious_scores",
    "spurious_study",
    "teacher_config",
    "train_teacher",
    "write_spurious",
]


if __name__ == "__main__":
    raise SystemExit(main())
