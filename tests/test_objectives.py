"""The trainer's objective: losses, user objectives, schedules, weight decay and augmentation, saved and resumable."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from attrlab.data import BatchSampler
from attrlab.models import build_model
from attrlab.objectives import augment, bce_loss, learning_rate, logit_bias
from attrlab.train import Callback, Run, TrainConfig, Trainer, train

QUICK = {"dataset": "digits", "model": "shallow", "epochs": 1, "checkpoint_every": 4, "device": "cpu"}


def test_default_run_equals_the_old_training_loop(tmp_path, digits):
    """The defaults are the seed code's loop (Adam 1e-3, cross-entropy, no schedule, no augmentation), bit for bit."""
    run = train(tmp_path / "run", TrainConfig(**QUICK), dataset=digits, progress=False)
    model = build_model("shallow", digits.input_shape, 10, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BatchSampler(len(digits.train), 100, seed=0)
    losses = []
    for step in range(sampler.steps_per_epoch):
        index = sampler.indices(step)
        loss = torch.nn.CrossEntropyLoss()(model(digits.train.x[index]), digits.train.y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert run.metrics["train_loss"].tolist() == torch.tensor(losses).tolist()
    for name, value in run.load_model().state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name
    # the default objective fields stay out of config.json: run directories written before they existed still match
    saved = json.loads((run.root / "config.json").read_text())
    assert "loss" not in saved and "lr_schedule" not in saved and Run(run.root).config == TrainConfig(**QUICK)


def test_bce_loss_and_logit_bias():
    logits = torch.randn(5, 10)
    labels = torch.tensor([0, 3, 9, 2, 2])
    probabilities = torch.sigmoid(logits / 4.0 + math.log(1 / 9))
    onehot = F.one_hot(labels, 10).float()
    expected = -(onehot * probabilities.log() + (1 - onehot) * (1 - probabilities).log()).mean()
    torch.testing.assert_close(bce_loss(logits, labels, temperature=4.0), expected)
    assert torch.sigmoid(torch.tensor(logit_bias(10))).item() == pytest.approx(0.1)


def test_learning_rate_schedules():
    kw = {"base_lr": 1.0, "total_steps": 100, "steps_per_epoch": 10}
    assert [learning_rate("constant", step=s, **kw) for s in (1, 50, 100)] == [1.0, 1.0, 1.0]
    cosine = [learning_rate("cosine", step=s, warmup_epochs=1, lr_min=0.1, **kw) for s in range(1, 101)]
    assert cosine[:10] == pytest.approx([s / 10 for s in range(1, 11)])  # linear warm-up to the base rate
    assert cosine[10] == pytest.approx(1.0) and cosine[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(cosine[10:]))  # then decays monotonically
    steps = [learning_rate("step", step=s, step_epochs=3, gamma=0.5, **kw) for s in (1, 30, 31, 61, 100)]
    assert steps == [1.0, 1.0, 0.5, 0.25, 0.125]
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; valid choices: constant, cosine, step"):
        learning_rate("linear", step=1, **kw)


def test_crops_are_shifts_with_black_filled_in():
    x = torch.randn(6, 2, 9, 9)
    out = augment(x, "crop", pad=2, seed=1, step=5)
    assert out.shape == x.shape
    assert torch.equal(out, augment(x, "crop", pad=2, seed=1, step=5))  # seeded by (seed, step)
    assert not torch.equal(out, augment(x, "crop", pad=2, seed=1, step=6))
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    for i in range(6):  # each image is one crop of its padded self
        crops = [padded[i, :, r : r + 9, c : c + 9] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], crop) for crop in crops)
    flipped = augment(x, "crop_flip", pad=0, seed=0, step=0)
    assert all(torch.equal(f, o) or torch.equal(f, o.flip(-1)) for f, o in zip(flipped, x))
    assert augment(x, "none", pad=2, seed=0, step=0) is x
    with pytest.raises(ValueError, match="crop_flip' mirrors images"):
        TrainConfig(augment="crop_flip")


def _penalty(model, x, y, logits):
    """A user objective: a small weight-norm penalty (sees the model) plus a logit penalty (sees the batch)."""
    return 1e-4 * sum(p.pow(2).sum() for p in model.parameters()) + 1e-3 * logits.pow(2).mean()


class _Interrupt(Callback):
    def on_step(self, trainer, step):
        if step == 10:
            raise KeyboardInterrupt


def test_configured_objective_is_saved_and_resumes_exactly(tmp_path, digits):
    config = TrainConfig(
        **{**QUICK, "epochs": 2},
        loss="bce",
        temperature=2.0,
        lr_schedule="cosine",
        warmup_epochs=0.5,
        lr_min=1e-5,
        weight_decay=1e-4,
        augment="crop",
        augment_pad=3,
    )
    reference = train(tmp_path / "ref", config, dataset=digits, progress=False, objective=_penalty)
    assert reference.config.objective == "_penalty" and reference.config.loss == "bce"
    assert reference.config == Run(reference.root).config  # survives the round trip through config.json
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            reference.config,
            tmp_path / "run",
            callbacks=[_Interrupt()],
            dataset=digits,
            progress=False,
            objective=_penalty,
        ).fit()
    resumed = train(tmp_path / "run", config, dataset=digits, progress=False, objective=_penalty)
    pd.testing.assert_frame_equal(resumed.metrics, reference.metrics)
    plain = train(tmp_path / "plain", TrainConfig(**{**QUICK, "epochs": 2}), dataset=digits, progress=False)
    assert not plain.metrics["train_loss"].equals(reference.metrics["train_loss"])
    with pytest.raises(ValueError, match="config names objective '_penalty' but the objective passed is None"):
        train(tmp_path / "run", reference.config, dataset=digits, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "mse"}, "unknown loss 'mse'; valid choices: cross_entropy, bce"),
        ({"augment": "rotate"}, "unknown augment 'rotate'; valid choices: none, crop, crop_flip"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"lr_schedule": "cosine", "warmup_epochs": 3}, r"warmup_epochs \(3\) must be shorter"),
        ({"augment_pad": -1}, "augment_pad must be a non-negative integer"),
    ],
)
def test_bad_objective_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)
