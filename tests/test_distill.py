"""Explanation-enhanced knowledge distillation: the losses against direct formulas, KD as e²KD with lambda 0, frozen
against live teachers, exact resumption, the evaluation and the protocol's helpers."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from attrlab.data import BatchSampler
from attrlab.distill import (
    Distillation,
    FrozenTeacher,
    TrainingExplanation,
    agreement,
    default_explanation,
    explanation_loss,
    explanation_similarity,
    kd_loss,
    map_similarity,
    resize_maps,
    student_scores,
    teacher_targets,
    to_image_size,
)
from attrlab.distill.study import check_claims, epochs_for, few_shot, thesis_layout
from attrlab.models import build_model
from attrlab.objectives import augment
from attrlab.train import Callback, TrainConfig, Trainer, train

QUICK = {"model": "shallow", "epochs": 2, "batch_size": 25, "checkpoint_every": 3, "device": "cpu"}
QUICK.update(eval_every=4, attr_per_class=2, loss="none")
GRADCAM_T = TrainingExplanation("gradcam", "relu6")
GRADCAM_S = TrainingExplanation("gradcam", "relu2")


@pytest.fixture(scope="module")
def small(digits):
    """10 training images per class (100 images, 4 steps per epoch of 25)."""
    return few_shot(digits, 10, seed=0)


@pytest.fixture(scope="module")
def teacher():
    return build_model("vgg_small", (1, 28, 28), 10, seed=3).eval()


def test_kd_loss_equals_the_direct_formula():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 6, 10, generator=generator, dtype=torch.float64)
    for tau in (1.0, 4.0):
        p_t = torch.softmax(teacher / tau, 1)
        p_s = torch.softmax(student / tau, 1)
        expected = tau**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
        torch.testing.assert_close(kd_loss(student, teacher, tau), expected)
    assert kd_loss(teacher, teacher, 2.0).abs().item() < 1e-12  # KL(p || p) = 0
    with pytest.raises(ValueError, match="tau must be positive"):
        kd_loss(student, teacher, 0.0)
    with pytest.raises(ValueError, match="must both be"):
        kd_loss(student, teacher[:, :5], 1.0)


def test_explanation_loss_is_one_minus_cosine_of_the_resized_maps():
    generator = torch.Generator().manual_seed(1)
    teacher_maps = torch.rand(4, 7, 7, generator=generator)
    student_maps = torch.rand(4, 14, 14, generator=generator)
    shrunk = student_maps.view(4, 7, 2, 7, 2).mean((2, 4))  # area resizing 14 -> 7: means of 2x2 blocks
    torch.testing.assert_close(resize_maps(student_maps, 7), shrunk)
    a, b = teacher_maps.flatten(1), shrunk.flatten(1)
    cosine = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    torch.testing.assert_close(explanation_loss(teacher_maps, student_maps, 7), (1 - cosine).mean())
    assert explanation_loss(teacher_maps, 3.0 * teacher_maps, 7).abs().item() < 1e-6  # scale-free
    assert map_similarity(torch.zeros(1, 2, 2), torch.ones(1, 2, 2)).item() == 0.0  # a dead map: 0, not NaN
    assert resize_maps(teacher_maps, 14).shape == (4, 14, 14)
    with pytest.raises(ValueError, match="positive integer"):
        resize_maps(teacher_maps, 0)


def test_default_explanations_follow_the_thesis():
    assert default_explanation(build_model("vgg_small")) == GRADCAM_T
    assert default_explanation(build_model("shallow")) == GRADCAM_S
    assert default_explanation(build_model("bcos")) == TrainingExplanation("bcos", "input")
    with pytest.raises(ValueError, match="valid choices: ixg, ig_xdnn, gradcam, bcos"):
        TrainingExplanation("lrp")


def _plain_kd_loop(small, teacher, tau, config):
    """The KD training loop written out: Adam on tau^2 KL(teacher || student) of the trainer's augmented batches."""
    model = build_model("shallow", (1, 28, 28), 10, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = BatchSampler(len(small.train), config.batch_size, seed=config.seed)
    for step in range(1, config.epochs * sampler.steps_per_epoch + 1):
        index = sampler.indices(step - 1)
        xb = augment(small.train.x[index], config.augment, config.augment_pad, config.seed, step, -1.0)
        with torch.no_grad():
            target = torch.softmax(teacher(xb) / tau, 1)
        log_student = torch.log_softmax(model(xb) / tau, 1)
        loss = tau**2 * (target * (target.log() - log_student)).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def test_lambda_zero_is_plain_kd_and_lambda_changes_training(tmp_path, small, teacher):
    config = TrainConfig(**QUICK, augment="crop", augment_pad=2)
    kd = Distillation(teacher, 3.0, 0.0, GRADCAM_T, GRADCAM_S, 7)
    assert kd.__name__ == "kd_tau3"
    run = train(tmp_path / "kd", config, dataset=small, objective=kd, progress=False)
    reference = _plain_kd_loop(small, teacher, 3.0, config)
    trained = run.load_model()
    # float32 sums in another order after 8 Adam steps: single-thread builds differ by up to ~2e-6 (Adam divides by
    # small second moments); the e²KD run below differs by orders of magnitude more
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=1e-4, atol=1e-5)
    e2kd = Distillation(teacher, 3.0, 5.0, GRADCAM_T, GRADCAM_S, 7)
    assert e2kd.__name__ == "e2kd_lam5_gradcam@relu6_gradcam@relu2_s7_tau3"
    guided = train(tmp_path / "e2kd", config, dataset=small, objective=e2kd, progress=False).load_model()
    assert not torch.allclose(guided.fc1.weight, trained.fc1.weight)


class _Both(Callback):
    """Trains with the live objective and records both objectives' losses on every step's batch."""

    __name__ = "both"

    def __init__(self, live, frozen):
        self.live, self.frozen, self.rows = live, frozen, []

    def on_start(self, trainer, step):
        self.frozen.on_start(trainer, step)

    def __call__(self, model, x, y, logits):
        self.rows.append([torch.stack(o.losses(model, x, logits)).detach() for o in (self.live, self.frozen)])
        return self.live(model, x, y, logits)


@pytest.mark.parametrize("augmentation", ["none", "crop"])
def test_frozen_and_live_teachers_agree_without_augmentation(tmp_path, small, teacher, augmentation):
    frozen_teacher = FrozenTeacher.compute(teacher, small.train.x, GRADCAM_T, batch_size=64)
    live = Distillation(teacher, 2.0, 1.0, GRADCAM_T, GRADCAM_S, 7)
    frozen = Distillation(teacher, 2.0, 1.0, GRADCAM_T, GRADCAM_S, 7, frozen=frozen_teacher)
    assert frozen.__name__ == live.__name__ + "_frozen"
    recorder = _Both(live, frozen)
    config = TrainConfig(**QUICK, augment=augmentation, augment_pad=3)
    train(tmp_path / "run", config, dataset=small, objective=recorder, progress=False)
    live_losses = torch.stack([row[0] for row in recorder.rows])
    frozen_losses = torch.stack([row[1] for row in recorder.rows])
    assert live_losses.shape == (8, 2) and (live_losses[:, 1] > 0).all()
    if augmentation == "none":  # the same targets: equal up to the teacher's batch composition
        torch.testing.assert_close(frozen_losses, live_losses, rtol=1e-4, atol=1e-6)
    else:  # frozen maps and logits are of the un-cropped images: an approximation
        assert not torch.allclose(frozen_losses, live_losses, rtol=1e-3, atol=1e-5)


def test_frozen_maps_are_cropped_like_the_images(small, teacher):
    frozen = FrozenTeacher.compute(teacher, small.train.x, GRADCAM_T)
    assert frozen.maps.shape == (100, 28, 28) and frozen.logits.shape == (100, 10)
    index = torch.tensor([5, 17, 42])
    logits, maps = frozen.batch(index, "crop", 3, seed=1, step=7)
    assert torch.equal(logits, frozen.logits[index])  # frozen logits: of the un-cropped images
    # where each pixel of step 7's crop comes from (1-based flat position; 0: shifted in), for images and maps alike
    code = torch.arange(1, 28 * 28 + 1, dtype=torch.float32).view(1, 1, 28, 28).expand(3, 1, 28, 28)
    source = augment(code, "crop", 3, 1, 7, fill=0.0)[:, 0].long()
    assert (source == 0).any() and not torch.equal(source, code[:, 0].long())  # a real shift
    inside = source > 0
    gathered = frozen.maps[index].flatten(1).gather(1, (source.flatten(1) - 1).clamp(min=0)).view(3, 28, 28)
    torch.testing.assert_close(maps, torch.where(inside, gathered, 0.0), rtol=0, atol=0)
    images = augment(small.train.x[index], "crop", 3, 1, 7, fill=-1.0)[:, 0]  # what the trainer feeds the student
    pixels = small.train.x[index][:, 0].flatten(1).gather(1, (source.flatten(1) - 1).clamp(min=0)).view(3, 28, 28)
    torch.testing.assert_close(images, torch.where(inside, pixels, -1.0), rtol=0, atol=0)


class _Interrupt(Callback):
    def on_step(self, trainer, step):
        if step == 5:
            raise KeyboardInterrupt


@pytest.mark.parametrize("frozen", [False, True])
def test_distillation_resumes_exactly(tmp_path, small, teacher, frozen):
    def objective():
        stored = FrozenTeacher.compute(teacher, small.train.x, GRADCAM_T) if frozen else None
        return Distillation(teacher, 2.0, 2.0, GRADCAM_T, GRADCAM_S, 7, frozen=stored)

    config = TrainConfig(**QUICK, augment="crop")
    reference = train(tmp_path / "ref", config, dataset=small, objective=objective(), progress=False)
    config = dataclasses.replace(config, objective=objective().__name__)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "run", [_Interrupt()], small, progress=False, objective=objective()).fit()
    resumed = train(tmp_path / "run", config, dataset=small, objective=objective(), progress=False)
    pd.testing.assert_frame_equal(resumed.metrics, reference.metrics)
    for name, value in reference.load_model().state_dict().items():
        assert torch.equal(resumed.load_model().state_dict()[name], value), name


def test_bad_settings_are_clear_errors(tmp_path, small, teacher):
    with pytest.raises(ValueError, match="lam must be >= 0"):
        Distillation(teacher, 1.0, -1.0, GRADCAM_T, GRADCAM_S, 7)
    with pytest.raises(ValueError, match="tau must be positive"):
        Distillation(teacher, 0.0, 1.0, GRADCAM_T, GRADCAM_S, 7)
    with pytest.raises(ValueError, match="frozen maps are gradcam@relu6"):
        stored = FrozenTeacher.compute(teacher, small.train.x[:4], GRADCAM_T)
        Distillation(teacher, 1.0, 1.0, TrainingExplanation("ixg"), GRADCAM_S, 7, frozen=stored)
    with pytest.raises(ValueError, match="loss 'none' trains on the user objective alone"):
        Trainer(TrainConfig(**QUICK), tmp_path / "none", dataset=small, progress=False)
    assert not (tmp_path / "none").exists()
    stored = FrozenTeacher.compute(teacher, small.train.x[:4], GRADCAM_T)
    with pytest.raises(ValueError, match="frozen teacher holds 4 images but the training split has 100"):
        objective = Distillation(teacher, 1.0, 1.0, GRADCAM_T, GRADCAM_S, 7, frozen=stored)
        train(tmp_path / "short", TrainConfig(**QUICK), dataset=small, objective=objective, progress=False)


def test_agreement_and_similarity(small, teacher):
    student = build_model("shallow", (1, 28, 28), 10, seed=1).eval()
    x, y = small.test.x[:50], small.test.y[:50]
    expected = (teacher(x).argmax(1) == student(x).argmax(1)).double().mean().item()
    assert agreement(teacher, student, x) == pytest.approx(expected)
    assert agreement(teacher, teacher, x) == 1.0
    similarity = explanation_similarity(teacher, student, x, GRADCAM_T, GRADCAM_S, 7, batch_size=16)
    logits, teacher_maps = teacher_targets(teacher, x, GRADCAM_T)
    student_maps = to_image_size(GRADCAM_S(student, x, logits.argmax(1)), 28, 28)
    loss = explanation_loss(teacher_maps, student_maps, 7)
    torch.testing.assert_close(1 - similarity.mean(), loss, rtol=1e-5, atol=1e-6)
    self_similarity = explanation_similarity(teacher, teacher, x, GRADCAM_T, GRADCAM_T, 7)
    alive = teacher_maps.flatten(1).abs().sum(1) > 0
    torch.testing.assert_close(self_similarity[alive], torch.ones(int(alive.sum())), rtol=1e-5, atol=1e-5)
    scores = student_scores(teacher, student, x, y, GRADCAM_T, GRADCAM_S, 7)
    assert scores["agreement"] == pytest.approx(expected)
    assert scores["similarity"] == pytest.approx(similarity.double().mean().item())


def test_few_shot_and_the_protocol_helpers(digits):
    data = few_shot(digits, 5, seed=2)
    assert len(data.train) == 50 and torch.equal(torch.bincount(data.train.y), torch.full((10,), 5))
    assert torch.equal(few_shot(digits, 5, seed=2).train.x, data.train.x) and data.test is digits.test
    assert few_shot(digits, None) is digits
    with pytest.raises(ValueError, match="fewer than shots=1000"):
        few_shot(digits, 1000)
    assert epochs_for(50, 100, 40) == 40 and epochs_for(1437, 100, 40) == 3
    rows = []
    for data_name, shots, gains in (("5 shots", 5, 4.0), ("full", None, 1.0)):
        for method, bonus in (("kd", 0.0), ("e2kd", gains), ("kd_frozen", -1.0), ("e2kd_frozen", gains - 2.0)):
            rows.append({"data": data_name, "shots": shots, "method": method, "accuracy": 80 + bonus})
            rows[-1].update(agreement=85 + bonus, similarity=30 + 10 * bonus)
    table = pd.DataFrame(rows)
    claims = check_claims(table).set_index("claim")["ours"]
    assert claims["e²KD raises the student's accuracy over KD with few data (5 shots)"] == 4.0
    assert claims["the accuracy gain of e²KD is larger with few data than with the full data"] == 3.0
    assert claims["frozen e²KD beats live KD in accuracy with few data (5 shots)"] == 2.0
    layout = thesis_layout(table)
    assert list(layout.index) == ["KD", "+ e²KD", "❄ KD", "❄ + e²KD"]
    assert layout.loc["+ e²KD", ("5 shots", "accuracy")] == 84.0
