"""The tracker: schedules, the table it writes, snapshots, resume with tracking, and bad input."""

from __future__ import annotations

import pandas as pd
import pytest

from attrlab.attribution.spec import MethodSpec
from attrlab.runstore import RunStore
from attrlab.summaries import summarise
from attrlab.track import Schedule, Tracker, load_snapshots, method_specs, tracked_frame
from attrlab.train import Callback, Run, TrainConfig, Trainer, train

CONFIG = dict(dataset="digits", model="shallow", epochs=1, checkpoint_every=4, device="cpu", eval_every=3)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("every", list(range(1, 11))),
        (3, [3, 6, 9, 10]),
        ("log:4", [1, 2, 5, 10]),
        ([7, 2, 2, 50], [2, 7]),
    ],
)
def test_schedules(spec, expected):
    assert Schedule(spec).steps(10) == expected


@pytest.mark.parametrize("spec", [0, "hourly", "log:0", [0, 3], True])
def test_bad_schedules(spec):
    with pytest.raises(ValueError, match="schedule|steps >= 1"):
        Schedule(spec)


def test_bad_tracker_arguments():
    with pytest.raises(ValueError, match="unknown target 'truth'; valid choices: predicted, label"):
        Tracker(target="truth")
    with pytest.raises(ValueError, match="method labels must be unique"):
        Tracker(methods=[MethodSpec("a", "lrp"), MethodSpec("a", "gradcam")])
    with pytest.raises(ValueError, match=r"tracked method labels are letters, digits, '-' and '_'; got \['a b'\]"):
        Tracker(methods=[MethodSpec("a b", "lrp")])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, digits):
    run_dir = tmp_path_factory.mktemp("tracked") / "run"
    tracker = Tracker(schedule=2, snapshots=[1, 15])
    train(run_dir, TrainConfig(**CONFIG), callbacks=[tracker], dataset=digits, progress=False)
    return run_dir


def test_table_has_a_row_per_tracked_step_and_method(tracked_run):
    frame = tracked_frame(tracked_run)
    assert frame["step"].tolist() == [s for s in [2, 4, 6, 8, 10, 12, 14, 15] for _ in range(2)]
    assert frame["method"].tolist() == ["lrp", "gradcam"] * 8
    assert frame[["norm_pos", "norm_pos_train", "norm_pos_c9", "frac_pos"]].notna().all().all()
    with pytest.raises(ValueError, match="unknown method 'rise' in this run; tracked methods: gradcam, lrp"):
        tracked_frame(tracked_run, "rise")


def test_rows_equal_a_direct_computation(tracked_run, digits):
    """The stored aggregate at the last step equals summarising the final model's LRP maps by hand."""
    from attrlab.attribution import make_method
    from attrlab.data import attribution_set

    model = Run(tracked_run).load_model(step=15)
    chosen = attribution_set(digits)
    maps = make_method("lrp", model, composite="seed000").attribute(chosen.x)
    per_image = summarise(maps)
    row = tracked_frame(tracked_run, "lrp").loc[15]
    assert row["norm_pos"] == pytest.approx(per_image[:, 0].mean().item(), rel=1e-5)
    assert row["norm_pos_c3"] == pytest.approx(per_image[60:80, 0].mean().item(), rel=1e-5)
    assert row["norm_pos_test"] == pytest.approx(per_image[~chosen.is_train, 0].mean().item(), rel=1e-5)


def test_snapshots(tracked_run):
    steps, maps = load_snapshots(tracked_run, "gradcam")
    assert steps == [1, 15] and maps.shape == (
        2,
        200,
        14,
        14,
    )  # Grad-CAM at conv2 of the shallow model (after one pool)
    with pytest.raises(ValueError, match="no snapshots of 'ig'"):
        load_snapshots(tracked_run, "ig")


class _Interrupt(Callback):
    def on_step(self, trainer, step):
        if step == 11:
            raise KeyboardInterrupt


def test_resume_with_tracking_equals_an_uninterrupted_run(tmp_path, digits, tracked_run):
    config = TrainConfig(**CONFIG)
    with pytest.raises(KeyboardInterrupt):
        Trainer(
            config,
            tmp_path / "run",
            callbacks=[Tracker(schedule=2, snapshots=[1, 15]), _Interrupt()],
            dataset=digits,
            progress=False,
        ).fit()
    assert RunStore(tmp_path / "run").checkpoint_steps() == [4, 8]  # the previous one is kept as a fallback
    train(tmp_path / "run", config, callbacks=[Tracker(schedule=2, snapshots=[1, 15])], dataset=digits, progress=False)
    pd.testing.assert_frame_equal(tracked_frame(tmp_path / "run"), tracked_frame(tracked_run))
    pd.testing.assert_frame_equal(Run(tmp_path / "run").metrics, Run(tracked_run).metrics)


def test_seed_code_gradcam_is_fed_the_training_batch(tmp_path, digits):
    # a snapshot step outside the tracked schedule needs the training batch too
    tracker = Tracker(methods=[MethodSpec("seed", "gradcam_seed_code")], schedule=[2, 3], snapshots=[1])
    train(tmp_path / "run", TrainConfig(**{**CONFIG, "epochs": 1}), callbacks=[tracker], dataset=digits, progress=False)
    frame = tracked_frame(tmp_path / "run", "seed")
    assert frame.index.tolist() == [2, 3] and frame["norm_pos"].notna().all()
    assert load_snapshots(tmp_path / "run", "seed")[0] == [1]


def test_tensorboard_logs_what_the_run_store_holds(tmp_path, digits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from attrlab.data import ImageDataset, Split
    from attrlab.train import TrainConfig, train

    tiny = ImageDataset(
        "digits",
        Split(digits.train.x[:400], digits.train.y[:400]),
        Split(digits.test.x[:200], digits.test.y[:200]),
        digits.classes,
    )
    tracker = Tracker(method_specs(["gradient"]), schedule="every", snapshots=[2, 4])
    config = TrainConfig(epochs=1, attr_per_class=2, checkpoint_every=2, device="cpu")
    run = train(tmp_path / "run", config, callbacks=[tracker], dataset=tiny, progress=False, tensorboard=True)
    events = EventAccumulator(str(run.root / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = events.Tags()
    logged = events.Scalars("metrics/train_loss")
    assert [e.step for e in logged] == run.metrics["step"].tolist() == [1, 2, 3, 4]
    assert [e.value for e in logged] == pytest.approx(run.metrics["train_loss"].tolist(), rel=1e-6)
    summaries = tracked_frame(run.root, "gradient")
    norms = events.Scalars("attributions/gradient/norm_pos")
    assert [e.value for e in norms] == pytest.approx(summaries["norm_pos"].tolist(), rel=1e-6)
    assert [e.step for e in events.Images("snapshots/gradient")] == [2, 4]
    assert "config" in tags["tensors"] or "config/text_summary" in tags["tensors"]


@pytest.mark.parametrize("name", ["deep", "deep_bn", "vgg_small"])
def test_cam_methods_from_lrps_pass_equal_their_own_calls(name, digits, device):
    """A tracked step's CAM maps from LRP's activation are the maps of the CAM methods' own calls (1e-6)."""
    import torch

    from attrlab.attribution import feature_layer, make_method
    from attrlab.attribution.layer_split import ModelSplit
    from attrlab.lrp import LRP
    from attrlab.models import build_model

    model = build_model(name, seed=3).to(device).train()  # training: the methods use eval semantics
    x = digits.test.x[:24].to(device)
    layer = feature_layer(model)
    lrp = LRP(model, "seed000")
    explanation, kept = lrp.explain_keeping(x, keep=[layer, "conv1", "bn1", "pool1"])
    assert torch.equal(explanation.attribution, lrp.explain(x).attribution)
    # conv1's own output (before its ReLU, or before the folded bn1) is never formed by the pass: not handed out
    assert sorted(kept) == sorted([layer, "pool1"])
    for kept_layer in kept:
        with torch.no_grad():
            model.eval()
            truth = ModelSplit(model, kept_layer).head(x)
            model.train()
        assert torch.allclose(kept[kept_layer], truth, rtol=1e-5, atol=1e-6)
    for method in ("gradcam", "gradcam_pp", "layercam"):
        cam = make_method(method, model)
        own = cam.explain(x, target=explanation.target)
        shared = cam.explain_activation(x, kept[layer], target=explanation.target)
        scale = own.attribution.abs().max()
        assert (shared.attribution - own.attribution).abs().max() <= 1e-6 * scale
        assert torch.equal(shared.target, own.target) and torch.allclose(shared.logits, own.logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"one row per input \(N=24\), got \(3, "):
        make_method("gradcam", model).explain_activation(x, kept[layer][:3])


def test_gradcam_rows_equal_a_direct_computation(tracked_run, digits):
    """The Grad-CAM row at the last step (activation from LRP's pass) equals Grad-CAM's own call, summarised."""
    from attrlab.attribution import make_method
    from attrlab.data import attribution_set

    model = Run(tracked_run).load_model(step=15)
    chosen = attribution_set(digits)
    target = make_method("lrp", model, composite="seed000").explain(chosen.x).target
    per_image = summarise(make_method("gradcam", model).attribute(chosen.x, target=target))
    row = tracked_frame(tracked_run, "gradcam").loc[15]
    assert row["norm_pos"] == pytest.approx(per_image[:, 0].mean().item(), rel=1e-5)
    assert row["gini_c3"] == pytest.approx(per_image[60:80, 4].nanmean().item(), rel=1e-5)


def test_attribution_set_metrics_come_from_the_tracked_pass_and_equal_an_untracked_runs(
    tmp_path, digits, monkeypatch, tracked_run, device
):
    """At a tracked evaluation step the trainer takes the attribution set's logits from the tracker's first method (no
    second forward pass); the metrics equal an untracked run's (on the CPU the shallow model's LRP forward is bit for
    bit its own; cuDNN may pick another algorithm for LRP's stacked convolution, so on CUDA to float tolerance)."""
    import attrlab.train as train_module
    from attrlab.data import attribution_set

    evaluated: list[int] = []
    evaluate = train_module.evaluate

    def counting(model, x, *args, **kwargs):
        evaluated.append(len(x))
        return evaluate(model, x, *args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", counting)
    config = TrainConfig(**{**CONFIG, "device": device})
    train(tmp_path / "untracked", config, dataset=digits, progress=False)
    attr_size = len(attribution_set(digits).x)
    assert evaluated.count(attr_size) == 5  # evaluation steps 3, 6, 9, 12, 15
    evaluated.clear()
    train(tmp_path / "tracked", config, callbacks=[Tracker(schedule=2)], dataset=digits, progress=False)
    assert evaluated.count(attr_size) == 2  # 6, 12 and 15 are tracked (every 2nd step and the last): 3 and 9 remain
    untracked = Run(tmp_path / "untracked").metrics
    exact = device == "cpu"
    pd.testing.assert_frame_equal(Run(tmp_path / "tracked").metrics, untracked, check_exact=exact, rtol=1e-5)
    if exact:  # the module's tracked run (CPU) too
        pd.testing.assert_frame_equal(Run(tracked_run).metrics, untracked)
