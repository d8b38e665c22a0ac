"""The model-guidance study (thesis ch. 7) at digit scale: data, baselines, guided fine-tuning, Pareto selection, R1-R9.

One study *point* fine-tunes a trained baseline with ``lambda * L_loc`` (:class:`~attrlab.guidance.objective.
GuidanceObjective`) for one setup (model, attribution method, layer), loss and lambda, optionally with a fraction of
the images annotated or dilated boxes, and evaluates F1, EPG and IoU on a validation split after every
``eval_every`` steps (and before the first: the baseline), at the guided layer and at the input. ``attrlab run``
executes the chapter ``guided_training`` once per point (``book/regimes/guidance/*.yml``); :func:`collect` gathers
their tables, :func:`pareto_front` keeps the non-dominated checkpoints of a configuration over its lambdas and
evaluations (maximising F1, EPG and IoU), :func:`shown_model` picks the thesis' representative (the highest EPG
within 5 points of the baseline's F1) and :func:`check_findings` computes R1-R9 as holding or not.

Data: single-digit canvases (32 x 32, a digit of side 12-16 in one quadrant on a smooth texture) rather than the
thesis' multi-label VOC/COCO images, because the trainer's data loss is single-label; the guided class is drawn at
random among each canvas's digits all the same (one here). F1 is the macro F1 over the ten classes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from ..attribution.differentiable import explain_for_training
from ..canvas import (
    CanvasSplit,
    SpuriousSplit,
    annotated_subset,
    dilate_boxes,
    group_accuracy,
    make_canvases,
    make_spurious,
)
from ..data import ImageDataset, load_dataset
from ..models import build_model
from ..runstore import RunStore, atomic_write_text
from ..train import Callback, TrainConfig, Trainer
from .metrics import IOU_THRESHOLDS, energy_pointing_game, iou
from .objective import MASK_KINDS, GuidanceObjective

#: setup name -> (model, method, guided layer): the thesis' Vanilla (IxG, Grad-CAM), X-DNN (IntGrad) and B-cos models
SETUPS: dict[str, tuple[str, str, str]] = {
    "bcos@input": ("bcos", "bcos", "input"),
    "bcos@mid": ("bcos", "bcos", "conv4"),
    "bcos@final": ("bcos", "bcos", "conv6"),
    "vanilla-ixg@input": ("bcos_relu_twin", "ixg", "input"),
    "vanilla-gradcam@final": ("bcos_relu_twin", "gradcam", "relu6"),
    "xdnn-ig@input": ("bcos_relu_twin_xdnn", "ig_xdnn", "input"),
    "xdnn-ig@mid": ("bcos_relu_twin_xdnn", "ig_xdnn", "relu4"),
    "xdnn-ig@final": ("bcos_relu_twin_xdnn", "ig_xdnn", "relu6"),
}
#: lambda_loc per loss (index 0..2): the thesis' Table D.2 has one grid per loss too; these are larger because a
#: guided run here has a few steps where the thesis' has 50 epochs (at lambda 1 EPG moved by under a point)
LAMBDAS: dict[str, tuple[float, float, float]] = {
    "energy": (10.0, 50.0, 200.0),
    "l1": (10.0, 50.0, 200.0),
    "ppce": (1.0, 5.0, 20.0),
    "rrr": (0.1, 0.5, 2.0),
}
#: with a fraction of the images annotated the loss shrinks by about that fraction: lambda grows (Table D.3's idea)
LIMITED_SCALE = {0.01: 20.0, 0.1: 5.0, 1.0: 1.0}
DATASETS = ("canvas", "spurious")
#: training canvases of the study (the baselines train on all of them): with 1000 both nets overfit (B-cos: 84 %
#: validation accuracy after 24 epochs, train 100 %), with 3000 they reach about 95 % in 12 epochs
TRAIN_COUNT = 3000
#: training passes of each model's baseline on the study canvases (0 as ``baseline_epochs`` means these)
BASELINE_EPOCHS = {"bcos": 12, "bcos_relu_twin": 12, "bcos_relu_twin_xdnn": 12}
#: Adam learning rate of each model's baseline: the interpretable chapter's recipe (B-cos nets 1e-3, their
#: conventional twin 3e-3); at 3e-3 the B-cos net collapses to constant outputs (the BCE's prior, 10 % accuracy)
BASELINE_LR = {"bcos": 1e-3, "bcos_relu_twin": 3e-3, "bcos_relu_twin_xdnn": 3e-3}
#: Adam learning rate of the guided fine-tuning per model (0 as ``Point.lr`` means these): the thesis' 1e-4 for the
#: B-cos net (at 1e-3 its F1 drops by 12 points in 4 steps); the conventional nets move their maps by under a point
#: in the 16 steps of a point at 1e-4, so they fine-tune at 1e-3 (their baselines train at 3e-3)
FINETUNE_LR = {"bcos": 1e-4, "bcos_relu_twin": 1e-3, "bcos_relu_twin_xdnn": 1e-3}
#: guided fine-tuning runs on this many of the training canvases (the baseline trains on all of them)
FINETUNE_COUNT = 400
#: the F1 drop (points) the shown model may cost at most
F1_TOLERANCE = 5.0


@dataclass
class StudyData:
    """A study's dataset (train and test splits for the trainer) and its validation split."""

    dataset: ImageDataset
    val: CanvasSplit


def study_data(name: str = "canvas", train_count: int = TRAIN_COUNT, val_count: int = 200, seed: int = 0) -> StudyData:
    """The study's data: ``"canvas"`` (single digits on a texture, 32 x 32) or ``"spurious"`` (Waterbirds-style).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    train_count, val_count : int
        Training and validation canvases (the test split has ``val_count`` too).
    seed : int
        Seeds the canvases (validation ``seed + 2``, test ``seed + 1``).

    Returns
    -------
    StudyData
    """
    if name not in DATASETS:
        raise ValueError(f"unknown study dataset {name!r}; valid choices: {', '.join(DATASETS)}")
    digits = load_dataset("digits", device="cpu")
    if name == "spurious":
        size, scale = 32, (12, 16)
        train = make_spurious(digits.train.x, digits.train.y, train_count, True, size, scale, seed=seed)
        # validation as the thesis modifies it: the training distribution (G1, G4), so nothing leaks from the test
        val = make_spurious(digits.train.x, digits.train.y, val_count, True, size, scale, seed=seed + 2)
        test = make_spurious(digits.test.x, digits.test.y, val_count, False, size, scale, seed=seed + 1)
        return StudyData(ImageDataset("spurious", train, test, ["digits 0-4", "digits 5-9"]), val)
    settings: dict[str, Any] = dict(size=32, digits=(1, 1), scale=(12, 16), background="texture")
    train_c = make_canvases(digits.train.x, digits.train.y, train_count, seed=seed, **settings)
    val_c = make_canvases(digits.test.x, digits.test.y, val_count, seed=seed + 2, **settings)
    test_c = make_canvases(digits.test.x, digits.test.y, val_count, seed=seed + 1, **settings)
    return StudyData(ImageDataset("guidance-canvas", train_c, test_c, list(digits.classes)), val_c)


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """The macro F1 score (percent) of single-label predictions, over the classes present in ``labels``."""
    scores = []
    for c in range(num_classes):
        tp = float(((predictions == c) & (labels == c)).sum())
        fp = float(((predictions == c) & (labels != c)).sum())
        fn = float(((predictions != c) & (labels == c)).sum())
        if tp + fn > 0:
            scores.append(2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0)
    return 100 * sum(scores) / len(scores)


def evaluate_guidance(
    model: nn.Module, split: CanvasSplit, method: str, layer: str, batch_size: int = 100
) -> dict[str, float]:
    """F1, accuracy, and EPG / IoU (percent) of the true class's maps at ``layer`` and at the input, on ``split``.

    The IoU threshold is chosen on the first half of the split's maps (:data:`IOU_THRESHOLDS`) and the IoU reported
    on the second half. Grad-CAM is evaluated at its layer only (at the input it is not the method the thesis
    means). The model is evaluated in eval mode and left in the mode it was in.

    Returns
    -------
    dict
        ``f1``, ``acc``, ``epg``, ``iou`` (at the guided layer), ``epg_input``, ``iou_input``, and ``on_object``:
        the EPG against the digit's pixels over the EPG against its box (the in-box energy on the object, R3).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        layers = {"": layer, "_input": layer if method == "gradcam" else "input"}
        maps: dict[str, list[torch.Tensor]] = {key: [] for key in layers}
        predictions = []
        for start in range(0, len(split), batch_size):
            x = split.x[start : start + batch_size].to(device)
            y = split.y[start : start + batch_size].to(device)
            with torch.no_grad():
                predictions.append(model(x).argmax(1))
            for key, where in layers.items():
                maps[key].append(explain_for_training(model, x, y, method, where, create_graph=False))
        prediction = torch.cat(predictions)
        y = split.y.to(device)
        masks = split.class_masks(split.y, "box").to(device)
        result = {
            "f1": macro_f1(prediction, y, split.num_classes),
            "acc": 100 * float((prediction == y).float().mean()),
        }
        half = len(split) // 2
        # R3: the share of the in-box energy that lies on the digit's own pixels (its "segmentation")
        layer_maps = torch.cat(maps[""])
        on_pixels = energy_pointing_game(layer_maps, split.class_masks(split.y, "pixels").to(device)).nanmean()
        in_box = energy_pointing_game(layer_maps, masks).nanmean()
        result["on_object"] = 100 * float(on_pixels / in_box)
        for key in layers:
            a = torch.cat(maps[key])
            result[f"epg{key}"] = 100 * float(energy_pointing_game(a, masks).nanmean())
            scores = [float(iou(a[:half], masks[:half], t).nanmean()) for t in IOU_THRESHOLDS]
            best = IOU_THRESHOLDS[max(range(len(scores)), key=lambda i: -1 if math.isnan(scores[i]) else scores[i])]
            result[f"iou{key}"] = 100 * float(iou(a[half:], masks[half:], best).nanmean())
        if isinstance(split, SpuriousSplit):
            groups = group_accuracy(prediction, split)
            result["worst"], result["overall"] = groups["worst"], groups["overall"]
        return result
    finally:
        model.train(was_training)


class InitFrom(Callback):
    """Starts a fresh run from a baseline's weights (guided fine-tuning); a resumed run keeps its own."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self.state = state

    def on_start(self, trainer: Trainer, step: int) -> None:
        if step == 0:
            trainer.model.load_state_dict(self.state)


class GuidanceEvaluation(Callback):
    """Evaluates :func:`evaluate_guidance` before the first step and every ``every`` steps; rows go to ``evaluation.csv``.

    The rows are part of the callback's checkpointed state, so a resumed run keeps the earlier ones.
    """

    def __init__(self, split: CanvasSplit, method: str, layer: str, every: int, test: CanvasSplit | None = None):
        self.split, self.method, self.layer, self.every, self.test = split, method, layer, every, test
        self.rows: list[dict[str, float]] = []

    def _evaluate(self, trainer: Trainer, step: int) -> None:
        row: dict[str, float] = {"step": step, "epoch": step / trainer.sampler.steps_per_epoch}
        row.update(evaluate_guidance(trainer.model, self.split.to(trainer.device), self.method, self.layer))
        if self.test is not None:  # the spurious set: worst-group and overall accuracy on the shifted test split
            test = evaluate_guidance(trainer.model, self.test.to(trainer.device), self.method, self.layer)
            row["test_worst"], row["test_overall"] = test["worst"], test["overall"]
        self.rows.append(row)

    def on_start(self, trainer: Trainer, step: int) -> None:
        if step == 0:
            self._evaluate(trainer, 0)

    def on_step(self, trainer: Trainer, step: int) -> None:
        if step % self.every == 0 or step == trainer.total_steps:
            self._evaluate(trainer, step)

    def on_end(self, trainer: Trainer, step: int) -> None:
        atomic_write_text(trainer.store.root / "evaluation.csv", pd.DataFrame(self.rows).to_csv(index=False))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": list(self.rows)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = list(state["rows"])


def baseline(
    run_dir: str | Path,
    model: str,
    data: StudyData,
    epochs: int = 12,
    lr: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """Train (or reuse) the unguided baseline ``model`` on ``data`` and return its final weights.

    Parameters
    ----------
    run_dir : str or Path
        The baseline's run directory (shared by every point that fine-tunes it).
    model : str
        A registered model name.
    data : StudyData
        The study's data.
    epochs : int
        Training passes.
    lr : float
        Adam learning rate; 0: the model's :data:`BASELINE_LR`.
    seed : int
        Seeds the weights and the batches.
    device : str
        Where to train.

    Returns
    -------
    dict
        The model's state dict (on the CPU).
    """
    config = TrainConfig(
        dataset=data.dataset.name,
        model=model,
        epochs=epochs,
        batch_size=50,
        lr=lr or BASELINE_LR[model],
        seed=seed,
        eval_every=10**6,
        attr_per_class=1,
        device=device,
        **training_loss(model),
    )
    trainer = Trainer(config, run_dir, dataset=data.dataset, progress=False)
    store = trainer.fit()
    return store.load_checkpoint(None, map_location="cpu")["model"]


def training_loss(model: str) -> dict[str, Any]:
    """The data loss of ``model``: the B-cos nets' binary cross-entropy (thesis eq. 6.17), else cross-entropy."""
    return {"loss": "bce"} if model.startswith("bcos") and "relu" not in model else {"loss": "cross_entropy"}


@dataclass
class Point:
    """One point of the study (the chapter ``guided_training``'s parameters)."""

    setup: str = "bcos@input"
    loss: str = "energy"
    lam_index: int = 1
    annotated: float = 1.0
    dilation: float = 0.0
    mask: str = "box"
    dataset: str = "canvas"
    epochs: int = 2
    eval_every: int = 4
    lr: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.setup not in SETUPS:
            raise ValueError(f"unknown setup {self.setup!r}; valid choices: {', '.join(SETUPS)}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or self.lr < 0:
            raise ValueError(f"lr must be a number >= 0 (0: the model's FINETUNE_LR), got {self.lr!r}")
        if self.lr == 0:  # the model's fine-tuning rate, recorded as the number so the rows say what ran
            self.lr = FINETUNE_LR[SETUPS[self.setup][0]]
        if self.loss not in LAMBDAS:
            raise ValueError(f"unknown loss {self.loss!r}; valid choices: {', '.join(LAMBDAS)}")
        if self.lam_index not in (0, 1, 2):
            raise ValueError(f"lam_index must be 0, 1 or 2, got {self.lam_index!r}")
        if self.annotated not in LIMITED_SCALE:
            raise ValueError(f"annotated must be one of {sorted(LIMITED_SCALE)}, got {self.annotated!r}")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"unknown mask {self.mask!r}; valid choices: {', '.join(MASK_KINDS)}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown study dataset {self.dataset!r}; valid choices: {', '.join(DATASETS)}")

    @property
    def lam(self) -> float:
        """lambda_loc: the loss's value at ``lam_index``, scaled up for limited annotations."""
        return LAMBDAS[self.loss][self.lam_index] * LIMITED_SCALE[self.annotated]


def run_point(
    point: Point, run_dir: str | Path, baseline_dir: str | Path, baseline_epochs: int = 0, device: str = "cpu"
) -> pd.DataFrame:
    """Fine-tune the setup's baseline with guidance (resumable) and return its evaluation rows.

    Parameters
    ----------
    point : Point
        What to run.
    run_dir : str or Path
        The guided run's directory; ``point.json`` and ``evaluation.csv`` are written there.
    baseline_dir : str or Path
        The directory under which the baselines live (one per model, dataset and seed).
    baseline_epochs : int
        Training passes of the baseline; 0: the model's :data:`BASELINE_EPOCHS`.
    device : str
        Where to train (``"cpu"``, ``"cuda"``, ``"auto"``); not part of the runs' identity.

    Returns
    -------
    pandas.DataFrame
        One row per evaluation (step 0 is the baseline), with the point's fields as columns.
    """
    model_name, method, layer = SETUPS[point.setup]
    data = study_data(point.dataset, seed=point.seed)
    baseline_epochs = baseline_epochs or BASELINE_EPOCHS[model_name]
    base = baseline_path(point, baseline_dir, baseline_epochs)
    state = baseline(base, model_name, data, epochs=baseline_epochs, seed=point.seed, device=device)
    # the fine-tuning sees the first finetune_count training canvases (the baseline saw all of them)
    split = data.dataset.train.select(slice(0, FINETUNE_COUNT))  # type: ignore[attr-defined]
    assert isinstance(split, CanvasSplit)
    finetune = ImageDataset(data.dataset.name, split, data.dataset.test, data.dataset.classes)
    boxes = dilate_boxes(split, point.dilation) if point.dilation else split
    annotated = annotated_subset(len(split), point.annotated, seed=point.seed) if point.annotated < 1 else None
    objective = GuidanceObjective(boxes, point.loss, method, layer, point.lam, annotated, point.mask, point.seed)
    test = data.dataset.test if point.dataset == "spurious" else None
    evaluation = GuidanceEvaluation(data.val, method, layer, point.eval_every, test)  # type: ignore[arg-type]
    config = TrainConfig(
        dataset=data.dataset.name,
        model=model_name,
        epochs=point.epochs,
        batch_size=50,
        lr=point.lr,
        seed=point.seed,
        eval_every=10**6,
        attr_per_class=1,
        device=device,
        checkpoint_every=point.eval_every,
        extra={"guidance": asdict(point)},
        objective=objective.__name__,
        **training_loss(model_name),
    )
    trainer = Trainer(
        config,
        run_dir,
        callbacks=[InitFrom(state), objective, evaluation],
        dataset=finetune,
        progress=False,
        objective=objective,
    )
    trainer.fit()
    root = Path(run_dir)
    atomic_write_text(root / "point.json", json.dumps(asdict(point), sort_keys=True))
    return _rows(root)


def baseline_path(point: Point, baseline_dir: str | Path, baseline_epochs: int) -> Path:
    """The run directory of ``point``'s baseline under ``baseline_dir`` (one per model, dataset, seed, epochs)."""
    model_name = SETUPS[point.setup][0]
    baseline_epochs = baseline_epochs or BASELINE_EPOCHS[model_name]
    recipe = f"e{baseline_epochs}-lr{BASELINE_LR[model_name]:g}-n{TRAIN_COUNT}"
    return Path(baseline_dir) / f"{model_name}-{point.dataset}-seed{point.seed}-{recipe}"


def point_models(
    point: Point, run_dir: str | Path, baseline_dir: str | Path, baseline_epochs: int = 0
) -> tuple[nn.Module, nn.Module, StudyData]:
    """The baseline and the guided model of a finished point (eval mode, on the CPU), and the point's data."""
    data = study_data(point.dataset, seed=point.seed)
    model_name = SETUPS[point.setup][0]
    models = []
    for root in (baseline_path(point, baseline_dir, baseline_epochs), Path(run_dir)):
        model = build_model(model_name, data.dataset.input_shape, data.dataset.num_classes)
        model.load_state_dict(RunStore(root).load_checkpoint(None, map_location="cpu")["model"])
        models.append(model.eval())
    return models[0], models[1], data


def _rows(root: Path) -> pd.DataFrame:
    rows = pd.read_csv(root / "evaluation.csv")
    point = json.loads((root / "point.json").read_text())
    for name, value in point.items():
        rows[name] = value
    rows["lam"] = Point(**point).lam
    return rows


def collect(folders: Sequence[str | Path]) -> pd.DataFrame:
    """Every finished point's evaluation rows under ``folders`` (sweep outputs), as one table.

    Parameters
    ----------
    folders : sequence of str or Path
        Folders searched recursively for run directories holding ``point.json`` and ``evaluation.csv``.

    Returns
    -------
    pandas.DataFrame
        The rows of :func:`run_point`, sorted by setup, loss, lambda and step.
    """
    tables = [
        _rows(path.parent)
        for folder in folders
        for path in sorted(Path(folder).rglob("point.json"))
        if (path.parent / "evaluation.csv").is_file()
    ]
    if not tables:
        raise ValueError(f"no finished study points under {[str(f) for f in folders]}")
    return pd.concat(tables, ignore_index=True).sort_values(["setup", "loss", "lam", "step"], ignore_index=True)


# ----------------------------------------------------------------------------- selection
def pareto_front(rows: pd.DataFrame, metrics: Sequence[str] = ("f1", "epg", "iou")) -> pd.DataFrame:
    """The rows no other row dominates (at least as good in every metric, better in one), all metrics maximised.

    Parameters
    ----------
    rows : pandas.DataFrame
        One configuration's checkpoints (every lambda and evaluation step), the thesis' Fig. 7.4.
    metrics : sequence of str
        The columns maximised.

    Returns
    -------
    pandas.DataFrame
        The Pareto-dominant rows, sorted by the first metric.
    """
    values = torch.tensor(rows[list(metrics)].to_numpy(dtype=float))
    if len(values) == 0:
        return rows.iloc[:0]
    at_least = (values[None, :, :] >= values[:, None, :]).all(-1)  # [i, j]: j at least as good as i everywhere
    better = (values[None, :, :] > values[:, None, :]).any(-1)
    dominated = (at_least & better).any(1)
    return rows[~dominated.numpy()].sort_values(list(metrics)[0])


def shown_model(front: pd.DataFrame, baseline_f1: float, metric: str = "epg") -> pd.Series:
    """The thesis' representative model: the highest ``metric`` among rows within :data:`F1_TOLERANCE` of the
    baseline's F1 (the row of highest F1 when none is)."""
    allowed = front[front["f1"] >= baseline_f1 - F1_TOLERANCE]
    if allowed.empty:
        return front.loc[front["f1"].idxmax()]
    return allowed.loc[allowed[metric].idxmax()]


def configuration_fronts(rows: pd.DataFrame, metrics: Sequence[str] = ("f1", "epg", "iou")) -> pd.DataFrame:
    """The Pareto front of every configuration (setup, loss, annotation, dilation, mask, dataset) over lambdas and
    evaluation steps, the baselines' step-0 rows left out; a ``front`` column names the configuration."""
    keys = ["dataset", "setup", "loss", "annotated", "dilation", "mask"]
    guided = rows[rows["step"] > 0]
    fronts = []
    for values, group in guided.groupby(keys, sort=True):
        front = pareto_front(group, metrics).copy()
        front["front"] = " ".join(str(v) for v in values)
        fronts.append(front)
    return pd.concat(fronts, ignore_index=True) if fronts else guided.iloc[:0]


def baselines(rows: pd.DataFrame) -> pd.DataFrame:
    """The baseline metrics (step 0) per dataset and setup: every point of a setup starts from the same model."""
    start = rows[rows["step"] == 0]
    return start.groupby(["dataset", "setup"], sort=True)[["f1", "acc", "epg", "iou", "epg_input", "iou_input"]].mean()


def best_within_tolerance(
    rows: pd.DataFrame, metric: str, tolerance: float = F1_TOLERANCE, **where: Any
) -> pd.Series | None:
    """The guided row with the highest ``metric`` whose F1 is within ``tolerance`` of its baseline, among rows
    matching ``where`` (column = value); when every row costs more F1 than that, the row of highest F1 (as
    :func:`shown_model`), with ``within_tolerance`` False; ``None`` when no row matches."""
    base = baselines(rows)["f1"]
    selected = rows[rows["step"] > 0]
    for column, value in where.items():
        selected = selected[selected[column] == value]
    if selected.empty:
        return None
    reference = selected.apply(lambda r: base.loc[(r["dataset"], r["setup"])], axis=1)
    allowed = selected[selected["f1"] >= reference - tolerance]
    if allowed.empty:
        return _flagged(selected.loc[selected["f1"].idxmax()], False)
    return _flagged(allowed.loc[allowed[metric].idxmax()], True)


def _flagged(row: pd.Series, within: bool) -> pd.Series:
    row = row.copy()
    row["within_tolerance"] = within
    return row


# ----------------------------------------------------------------------------- results and findings
#: where the chapter reads the study rows (committed), relative to the repository root
RESULTS_FILE = "book/results/model_guidance.csv"
#: the regimes of the study (book/regimes/guidance/<name>.yml)
REGIMES = ("losses", "vanilla", "xdnn", "layers", "annotations", "dilated", "spurious")


def write_results(folders: Sequence[str | Path], path: str | Path) -> pd.DataFrame:
    """:func:`collect` the finished points under ``folders`` and write them to ``path`` (CSV, written atomically).

    Returns
    -------
    pandas.DataFrame
        The rows written.
    """
    rows = collect(folders)
    atomic_write_text(Path(path), rows.to_csv(index=False))
    return rows


def _best(rows: pd.DataFrame, metric: str, **where: Any) -> pd.Series | None:
    defaults = {"dataset": "canvas", "annotated": 1.0, "dilation": 0.0, "mask": "box"}
    return best_within_tolerance(rows, metric, **{**defaults, **where})


def _gain(rows: pd.DataFrame, metric: str, **where: Any) -> float:
    """The best ``metric`` within the F1 tolerance minus the baseline's, for the rows matching ``where``: NaN when
    none ran, 0 when no checkpoint stayed within the tolerance (no usable gain)."""
    best = _best(rows, metric, **where)
    if best is None:
        return float("nan")
    if not bool(best["within_tolerance"]):
        return 0.0
    return float(best[metric]) - float(baselines(rows).loc[(best["dataset"], best["setup"]), metric])


def _note(row: pd.Series) -> str:
    """A marker for a checkpoint picked outside the F1 tolerance (no guided checkpoint stayed within it)."""
    return "" if bool(row.get("within_tolerance", True)) else "*"


def _finding(code: str, claim: str, holds: bool | None, evidence: str) -> dict[str, Any]:
    verdict = "not run" if holds is None else ("holds" if holds else "does not hold")
    return {"finding": code, "claim": claim, "here": verdict, "evidence": evidence}


def _compare(rows: pd.DataFrame, metric: str, winner: str, setups: Sequence[str]) -> tuple[bool | None, str]:
    """Whether loss ``winner`` reaches the best ``metric`` (within the F1 tolerance) in each of ``setups``."""
    verdicts, parts = [], []
    for setup in setups:
        scores = {}
        for loss in LAMBDAS:
            best = _best(rows, metric, setup=setup, loss=loss)
            if best is not None:
                scores[f"{loss}{_note(best)}"] = float(best[metric])
        mine = [(key, value) for key, value in scores.items() if key.rstrip("*") == winner]
        if mine and len(scores) > 1:  # the winner must be a shown model: within the F1 tolerance
            verdicts.append(not mine[0][0].endswith("*") and mine[0][1] >= max(scores.values()))
            parts.append(f"{setup}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))
    if not verdicts:
        return None, "no setup ran this loss against another"
    return all(verdicts), "; ".join(parts)


def check_findings(rows: pd.DataFrame) -> pd.DataFrame:
    """The thesis' findings R1-R9 (sec. 7.3) computed on the study's rows, each as holding, not holding or not run.

    Every comparison uses the guided checkpoint with the best metric whose F1 is within :data:`F1_TOLERANCE` points
    of its baseline (the thesis' shown model), on the validation canvases; where no checkpoint of a configuration
    stayed within it, its highest-F1 checkpoint is shown, marked ``*`` in the evidence, and cannot make a finding
    hold (a gain at an unacceptable F1 counts as none).

    Parameters
    ----------
    rows : pandas.DataFrame
        :func:`collect`'s rows.

    Returns
    -------
    pandas.DataFrame
        Columns ``finding``, ``claim``, ``here``, ``evidence``.
    """
    found = []
    input_setups = [s for s in ("bcos@input", "vanilla-ixg@input", "xdnn-ig@input") if s in set(rows["setup"])]
    final_setups = [s for s in ("bcos@final", "vanilla-gradcam@final", "xdnn-ig@final") if s in set(rows["setup"])]
    holds, evidence = _compare(rows, "epg", "energy", input_setups + final_setups)
    found.append(_finding("R1", "the Energy loss gives the best EPG", holds, evidence))
    holds, evidence = _compare(rows, "iou", "l1", input_setups + final_setups)
    found.append(_finding("R2", "the L1 loss gives the best IoU", holds, evidence))
    energy, l1 = (
        _best(rows, "epg", setup="bcos@input", loss="energy"),
        _best(rows, "epg", setup="bcos@input", loss="l1"),
    )
    if energy is None or l1 is None or pd.isna(energy.get("on_object")) or pd.isna(l1.get("on_object")):
        found.append(_finding("R3", "Energy keeps the in-box energy on the object best", None, "needs bcos@input"))
    else:
        found.append(
            _finding(
                "R3",
                "Energy keeps the in-box energy on the object best",
                bool(energy["within_tolerance"]) and float(energy["on_object"]) > float(l1["on_object"]),
                f"share of in-box energy on the digit's pixels: Energy {energy['on_object']:.1f} %{_note(energy)}, "
                f"L1 {l1['on_object']:.1f} %{_note(l1)}",
            )
        )
    bcos = _best(rows, "epg", setup="bcos@input", loss="energy")
    others = {
        label: _best(rows, "epg", setup=setup, loss="energy")
        for label, setup in (("conventional IxG", "vanilla-ixg@input"), ("X-DNN IntGrad", "xdnn-ig@input"))
    }
    others_run = {label: row for label, row in others.items() if row is not None}
    if bcos is None or not others_run:
        found.append(_finding("R4", "B-cos explanations are best at the input", None, "needs B-cos and another model"))
    else:
        found.append(
            _finding(
                "R4",
                "B-cos explanations are best at the input",
                bool(bcos["within_tolerance"])
                and all(float(bcos["epg"]) > float(r["epg"]) for r in others_run.values()),
                f"Energy at the input, EPG @ F1: B-cos {bcos['epg']:.1f} @ {bcos['f1']:.1f}{_note(bcos)}, "
                + ", ".join(f"{k} {r['epg']:.1f} @ {r['f1']:.1f}{_note(r)}" for k, r in others_run.items()),
            )
        )
    gains = {setup: _gain(rows, "epg", setup=setup, loss="energy") for setup in final_setups}
    known = {k: v for k, v in gains.items() if not math.isnan(v)}
    found.append(
        _finding(
            "R5",
            "guidance at the final layer improves localisation for every model",
            None if not known else all(v > 0 for v in known.values()),
            ", ".join(f"{k}: EPG {v:+.1f}" for k, v in known.items()) or "needs a final-layer setup",
        )
    )
    base = baselines(rows)
    guided = rows[(rows["step"] > 0) & (rows["dataset"] == "canvas")]
    better = (
        guided[
            guided.apply(
                lambda r: (
                    r["f1"] > base.loc[(r["dataset"], r["setup"]), "f1"]
                    and r["epg"] > base.loc[(r["dataset"], r["setup"]), "epg"]
                ),
                axis=1,
            )
        ]
        if not guided.empty
        else guided
    )
    found.append(
        _finding(
            "R6",
            "guided models can improve F1 and EPG at once",
            None if guided.empty else not better.empty,
            f"{len(better)} of {len(guided)} guided checkpoints beat their baseline in both",
        )
    )
    full, part1, part10 = (_gain(rows, "epg", setup="bcos@input", loss="energy", annotated=a) for a in (1.0, 0.01, 0.1))
    if any(math.isnan(v) for v in (full, part1)):
        found.append(_finding("R7", "1 % of the boxes nearly suffices", None, "needs the annotation regime"))
    else:
        found.append(
            _finding(
                "R7",
                "1 % of the boxes nearly suffices",
                full > 0 and part1 >= 0.5 * full,
                f"Energy EPG gain with all boxes {full:+.1f}, 10 % {part10:+.1f}, 1 % {part1:+.1f} "
                "(holds: 1 % reaches at least half the full gain)",
            )
        )
    drops = {}
    for loss in ("energy", "l1"):
        exact, coarse = (_gain(rows, "epg", setup="bcos@input", loss=loss, dilation=d) for d in (0.0, 50.0))
        drops[loss] = (exact, coarse)
    if any(math.isnan(v) for pair in drops.values() for v in pair):
        found.append(_finding("R8", "Energy is robust to coarse boxes", None, "needs the dilated regime"))
    else:
        (e0, e50), (l0, l50) = drops["energy"], drops["l1"]
        found.append(
            _finding(
                "R8",
                "Energy is robust to coarse boxes",
                e0 > 0 and e50 >= 0.8 * e0 and (e0 - e50) <= (l0 - l50),
                f"EPG gain with exact / 50 %-dilated boxes: Energy {e0:+.1f} / {e50:+.1f}, L1 {l0:+.1f} / {l50:+.1f} "
                "(holds: Energy gains and keeps 80 % of it, losing less than L1)",
            )
        )
    at_input = _gain(rows, "epg_input", setup="bcos@input", loss="energy")
    at_mid = _gain(rows, "epg_input", setup="bcos@mid", loss="energy")
    xdnn_input = _gain(rows, "epg_input", setup="xdnn-ig@input", loss="energy")
    xdnn_mid = _gain(rows, "epg_input", setup="xdnn-ig@mid", loss="energy")
    xdnn = "" if math.isnan(xdnn_mid) else f"; X-DNN IntGrad at the input {xdnn_input:+.1f}, at relu4 {xdnn_mid:+.1f}"
    found.append(
        _finding(
            "R9",
            "guidance at a middle layer improves the input-level maps too",
            None if math.isnan(at_input) or math.isnan(at_mid) else at_mid > 0 and at_mid >= 0.5 * at_input,
            f"input-level EPG gain, B-cos guided at the input {at_input:+.1f}, at conv4 {at_mid:+.1f}{xdnn} "
            "(holds: B-cos at conv4 gains, at least half the input's gain)",
        )
    )
    return pd.DataFrame(found)


def spurious_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 7.1's layout: worst-group and overall test accuracy of the baseline and each guided configuration.

    Each configuration's checkpoint is the one with the highest validation accuracy (the validation split has the
    training distribution, as the thesis' modified one), the baseline is step 0.
    """
    part = rows[rows["dataset"] == "spurious"]
    if part.empty:
        return pd.DataFrame(columns=["guidance", "loss", "worst group", "overall"])
    table = []
    start = part[part["step"] == 0].iloc[0]
    table.append(
        {
            "guidance": "none (baseline)",
            "loss": "",
            "worst group": start["test_worst"],
            "overall": start["test_overall"],
        }
    )
    for (mask, loss), group in part[part["step"] > 0].groupby(["mask", "loss"], sort=True):
        chosen = group.loc[group["acc"].idxmax()]
        table.append(
            {
                "guidance": "conventional (digit)" if mask == "box" else "reversed (background)",
                "loss": loss,
                "worst group": chosen["test_worst"],
                "overall": chosen["test_overall"],
            }
        )
    return pd.DataFrame(table)


__all__ = [
    "DATASETS",
    "BASELINE_EPOCHS",
    "BASELINE_LR",
    "TRAIN_COUNT",
    "F1_TOLERANCE",
    "FINETUNE_COUNT",
    "FINETUNE_LR",
    "LAMBDAS",
    "LIMITED_SCALE",
    "SETUPS",
    "GuidanceEvaluation",
    "InitFrom",
    "Point",
    "StudyData",
    "baseline",
    "baseline_path",
    "REGIMES",
    "RESULTS_FILE",
    "baselines",
    "best_within_tolerance",
    "check_findings",
    "collect",
    "configuration_fronts",
    "evaluate_guidance",
    "macro_f1",
    "pareto_front",
    "point_models",
    "run_point",
    "shown_model",
    "spurious_table",
    "study_data",
    "write_results",
]
