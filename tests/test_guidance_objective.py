"""The guidance objective with the trainer: the batch's boxes, one random present class per image, clear errors."""

from __future__ import annotations

import pytest
import torch

from attrlab.canvas import annotated_subset, make_canvases
from attrlab.data import ImageDataset, load_dataset
from attrlab.guidance.objective import GuidanceObjective, random_classes
from attrlab.train import TrainConfig, Trainer


@pytest.fixture(scope="module")
def small():
    digits = load_dataset("digits", device="cpu")
    train = make_canvases(digits.train.x, digits.train.y, 100, size=16, digits=(1, 2), scale=(6, 8), seed=0)
    test = make_canvases(digits.test.x, digits.test.y, 60, size=16, digits=(1, 1), scale=(6, 8), seed=1)
    return ImageDataset("tiny-canvas", train, test, list(digits.classes))


def _config(**overrides):
    settings = dict(
        dataset="tiny-canvas",
        model="bcos",
        epochs=1,
        batch_size=50,
        eval_every=10**6,
        attr_per_class=1,
        device="cpu",
        checkpoint_every=1,
    )
    return TrainConfig(**{**settings, **overrides})


def test_random_classes_picks_present_slots_only():
    labels = torch.tensor([[3, -1, -1], [1, 4, -1], [7, 2, 9]])
    seen = set()
    for seed in range(30):
        classes, slots = random_classes(labels, torch.Generator().manual_seed(seed))
        assert classes[0] == 3 and slots[0] == 0
        assert int(classes[1]) in (1, 4)
        assert torch.equal(labels.gather(1, slots[:, None])[:, 0], classes)
        seen.add(int(classes[2]))
    assert seen == {7, 2, 9}


def test_guided_training_runs_and_is_deterministic(small, tmp_path):
    losses = []
    for run in ("a", "b"):
        objective = GuidanceObjective(small.train, "energy", "bcos", "input", lam=1.0, seed=3)
        config = _config(objective=objective.__name__)
        trainer = Trainer(
            config, tmp_path / run, callbacks=[objective], dataset=small, progress=False, objective=objective
        )
        trainer.fit()
        losses.append(trainer.store.read_table("metrics")["train_loss"].to_numpy())
    assert losses[0].shape == (2,) and (losses[0] == losses[1]).all()


def test_trainer_runs_the_model_once_per_guided_step(small, tmp_path):
    """The trainer takes the logits of the map's own forward pass (logits_and_term): one model call per step, and the
    loss equals the data loss on a separate forward pass plus the objective's term."""
    objective = GuidanceObjective(small.train, "energy", "ixg", "input", lam=1.0, seed=3)
    trainer = Trainer(
        _config(model="bcos_relu_twin", objective=objective.__name__, loss="cross_entropy"),
        tmp_path / "run",
        callbacks=[objective],
        dataset=small,
        progress=False,
        objective=objective,
    )
    objective.on_start(trainer, 0)
    index = trainer.sampler.indices(0)
    x, y = small.train.x[index], small.train.y[index]
    calls = []
    first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))  # the map's pass runs layers
    handle = first.register_forward_hook(lambda *_: calls.append(1))
    logits, loss = trainer._forward_and_loss(x, y)
    handle.remove()
    assert len(calls) == 1
    separate = torch.nn.functional.cross_entropy(trainer.model(x), y) + objective(trainer.model, x, y, logits)
    torch.testing.assert_close(loss, separate, rtol=1e-5, atol=1e-6)


def test_masks_follow_the_batch_indices(small):
    annotated = annotated_subset(len(small.train), 0.1, seed=0)
    objective = GuidanceObjective(small.train, "l1", "bcos", lam=1.0, annotated=annotated, mask="outside")
    index = torch.arange(10)
    classes, masks, weight = objective.masks_for(index, step=1)
    labels = small.train.labels[index]
    assert bool((labels == classes[:, None]).any(1).all())
    box = small.train.select(index).class_masks(classes, "box")
    assert torch.equal(masks, ~box)
    assert torch.equal(weight, annotated[index])


def test_clear_errors(small, tmp_path):
    with pytest.raises(ValueError, match="valid choices: energy, l1, ppce, rrr"):
        GuidanceObjective(small.train, "dice", "bcos")
    with pytest.raises(ValueError, match="valid methods: ixg, ig_xdnn, gradcam, bcos"):
        GuidanceObjective(small.train, "l1", "lrp")
    with pytest.raises(ValueError, match="lam must be a positive number"):
        GuidanceObjective(small.train, "l1", "bcos", lam=0)
    with pytest.raises(TypeError, match="split must be a CanvasSplit"):
        GuidanceObjective(load_dataset("digits", device="cpu").train, "l1", "bcos")
    with pytest.raises(ValueError, match="annotated must be a boolean tensor"):
        GuidanceObjective(small.train, "l1", "bcos", annotated=torch.ones(3, dtype=torch.bool))
    objective = GuidanceObjective(small.train, "energy", "bcos")
    with pytest.raises(RuntimeError, match="needs the trainer"):
        objective(None, small.train.x[:2], small.train.y[:2], None)
    config = _config(objective=objective.__name__, augment="crop")
    with pytest.raises(ValueError, match="augment='none'"):
        Trainer(
            config, tmp_path / "crop", callbacks=[objective], dataset=small, progress=False, objective=objective
        ).fit()
