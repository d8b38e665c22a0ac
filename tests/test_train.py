"""The trainer and run store: metrics, determinism, resume after an interruption or a kill, and clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from attrlab.data import DatasetUnavailableError, ImageDataset, Split
from attrlab.runstore import RunStore, RunStoreError
from attrlab.train import Callback, Run, TrainConfig, Trainer, train

QUICK = dict(dataset="digits", model="shallow", epochs=1, checkpoint_every=4, device="cpu")


@pytest.fixture(scope="module")
def reference_metrics(tmp_path_factory, digits) -> pd.DataFrame:
    """An uninterrupted run of the QUICK configuration, shared by the comparisons below."""
    return train(tmp_path_factory.mktemp("ref") / "run", TrainConfig(**QUICK), dataset=digits, progress=False).metrics


def test_metrics_table_has_one_row_per_step(tmp_path, digits):
    config = TrainConfig(**{**QUICK, "epochs": 2, "eval_every": 5})
    run = train(tmp_path / "run", config, dataset=digits, progress=False)
    metrics = run.metrics
    assert run.complete
    assert metrics["step"].tolist() == list(range(1, 31))  # 1437 images / 100 = 15 steps an epoch
    assert metrics["epoch"].tolist() == [1] * 15 + [2] * 15
    evaluated = metrics["test_acc"].notna()
    assert metrics.loc[evaluated, "step"].tolist() == [5, 10, 15, 20, 25, 30]
    assert metrics["train_loss"].notna().all() and metrics["train_acc"].between(0, 1).all()
    per_class = metrics.loc[evaluated, [f"test_acc_c{c}" for c in range(10)]]
    assert per_class.notna().all().all()
    # the per-class accuracies average (weighted by class size) to the overall one
    counts = torch.bincount(digits.test.y, minlength=10).numpy()
    weighted = (per_class.to_numpy() * counts).sum(1) / counts.sum()
    assert weighted == pytest.approx(metrics.loc[evaluated, "test_acc"].to_numpy(), abs=1e-6)
    assert metrics["test_loss"].iloc[-1] < metrics["train_loss"].iloc[0]  # it learns
    assert {f"attr_loss_c{c}" for c in range(10)} <= set(metrics.columns)


def test_metrics_match_an_independent_evaluation(tmp_path, digits, device):
    run = train(tmp_path / "run", TrainConfig(**{**QUICK, "device": device}), dataset=digits, progress=False)
    model = run.load_model()
    with torch.no_grad():
        logits = model(digits.test.x)
    accuracy = (logits.argmax(1) == digits.test.y).float().mean().item()
    loss = torch.nn.functional.cross_entropy(logits, digits.test.y).item()
    last = run.metrics.iloc[-1]
    assert last["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert last["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_same_seed_same_numbers(tmp_path, digits, reference_metrics):
    second = train(tmp_path / "b", TrainConfig(**QUICK), dataset=digits, progress=False).metrics
    other = train(tmp_path / "c", TrainConfig(**QUICK, seed=1), dataset=digits, progress=False).metrics
    pd.testing.assert_frame_equal(reference_metrics, second)
    assert not reference_metrics["train_loss"].equals(other["train_loss"])


class _Interrupt(Callback):
    """Raises after a given step, like a crash in the middle of a run."""

    def __init__(self, at: int):
        self.at = at

    def on_step(self, trainer, step):
        if step == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_loses_and_repeats_no_step(tmp_path, digits, reference_metrics):
    config = TrainConfig(**QUICK)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, tmp_path / "run", callbacks=[_Interrupt(at=10)], dataset=digits, progress=False).fit()
    store = RunStore(tmp_path / "run")
    assert not store.complete and store.checkpoint_steps() == [4, 8]  # the previous one is kept as a fallback
    resumed = train(tmp_path / "run", config, dataset=digits, progress=False).metrics
    pd.testing.assert_frame_equal(resumed, reference_metrics)


def test_finished_run_is_not_trained_again(tmp_path, digits):
    run = train(tmp_path / "run", TrainConfig(**QUICK), dataset=digits, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in run.root.rglob("*") if p.is_file()}
    again = train(tmp_path / "run", TrainConfig(**QUICK), dataset=digits, progress=False)
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*") if p.is_file()} == stamp


def _cli(run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "attrlab",
        "train",
        "--run-dir",
        str(run_dir),
        "--dataset",
        "digits",
        "--model",
        "shallow",
        "--epochs",
        "4",
        "--checkpoint-every",
        "5",
        "--device",
        "cpu",
        "--no-progress",
    ]


@pytest.mark.slow
def test_resume_after_killing_the_process(tmp_path):
    """SIGKILL a real training process part-way, rerun the same command: the metrics equal an uninterrupted run's."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(_cli(tmp_path / "ref"), check=True, env=env, capture_output=True)
    process = subprocess.Popen(_cli(tmp_path / "run"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = RunStore(tmp_path / "run")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(step >= 15 for step in store.checkpoint_steps()):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not store.complete, "the run finished before it could be killed"
    subprocess.run(_cli(tmp_path / "run"), check=True, env=env, capture_output=True)
    pd.testing.assert_frame_equal(Run(tmp_path / "run").metrics, Run(tmp_path / "ref").metrics)
    assert Run(tmp_path / "run").metrics["step"].tolist() == list(range(1, 61))


def test_other_config_in_same_directory_is_refused(tmp_path, digits):
    train(tmp_path / "run", TrainConfig(**QUICK), dataset=digits, progress=False)
    with pytest.raises(RunStoreError, match=r"different configuration \(epochs: 1 there, 3 now\)"):
        train(tmp_path / "run", TrainConfig(**{**QUICK, "epochs": 3}), dataset=digits, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"batch_size": -5}, "batch_size must be a positive integer"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid choices: adam, sgd"),
        ({"attr_selection": "best"}, "unknown attr_selection 'best'"),
        ({"eval_subset": 0}, "eval_subset must be a positive integer or None"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_unknown_config_key_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        train(tmp_path / "a", TrainConfig(model="resnet", device="cpu"), progress=False)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        train(tmp_path / "b", TrainConfig(dataset="mnist", device="cpu"), progress=False)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        train(tmp_path / "c", TrainConfig(device="tpu"), progress=False)


def test_eval_subset_is_used(tmp_path, digits):
    trainer = Trainer(TrainConfig(**QUICK, eval_subset=100), tmp_path / "run", dataset=digits, progress=False)
    assert len(trainer.eval_split) == 100


@pytest.fixture()
def finished_run(tmp_path, digits) -> Path:
    return train(tmp_path / "run", TrainConfig(**QUICK), dataset=digits, progress=False).root


def test_missing_directory_and_config(tmp_path, finished_run):
    with pytest.raises(RunStoreError, match="does not exist"):
        Run(tmp_path / "nowhere")
    (finished_run / "config.json").unlink()
    with pytest.raises(RunStoreError, match="is not a run directory: it has no config.json"):
        Run(finished_run)


def test_corrupt_config(finished_run):
    (finished_run / "config.json").write_text("{not json")
    with pytest.raises(RunStoreError, match="config.json is corrupt"):
        Run(finished_run)


def test_corrupt_metrics_part(finished_run):
    part = sorted((finished_run / "tables" / "metrics").glob("part-*.parquet"))[1]  # steps 5-8
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(RunStoreError, match=f"table part .*{part.name} is corrupt"):
        _ = Run(finished_run).metrics


def test_corrupt_checkpoint(finished_run, digits, reference_metrics, capsys):
    older, newest = sorted((finished_run / "checkpoints").glob("step-*.pt"))  # the previous one is kept
    newest.write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match="checkpoint .* is corrupt"):
        Run(finished_run).load_model()
    (finished_run / "COMPLETE").unlink()  # an unfinished run resumes from the previous checkpoint and says so
    run = train(finished_run, TrainConfig(**QUICK), dataset=digits, progress=False)
    out = capsys.readouterr().out
    assert f"checkpoint of step {int(newest.stem[5:])} in {finished_run} is unreadable" in out
    assert f"falling back to the previous one, of step {int(older.stem[5:])}" in out
    assert f"resuming {finished_run} from step {int(older.stem[5:])} of 15" in out
    pd.testing.assert_frame_equal(run.metrics, reference_metrics)  # still exact
    (finished_run / "COMPLETE").unlink()
    for checkpoint in (finished_run / "checkpoints").glob("step-*.pt"):
        checkpoint.write_bytes(b"garbage")
    with pytest.raises(RunStoreError, match="(?s)is corrupt.*no earlier checkpoint to fall back to"):
        train(finished_run, TrainConfig(**QUICK), dataset=digits, progress=False)


def test_missing_table_lists_present_ones(finished_run):
    with pytest.raises(RunStoreError, match=r"has no table 'summaries'; tables present: \['metrics'\]"):
        Run(finished_run).table("summaries")


def test_writes_are_atomic_and_leave_no_temporaries(finished_run):
    assert not list(finished_run.rglob(".*.tmp-*"))
    assert json.loads((finished_run / "config.json").read_text())["model"] == "shallow"
    loaded = torch.load(max((finished_run / "checkpoints").glob("*.pt")), weights_only=True)  # the newest
    assert loaded["step"] == 15


def test_evaluations_keep_each_modules_own_train_flag():
    """train.evaluate and grids.confident_images restore every module's flag: a frozen BatchNorm stays frozen."""
    from attrlab.grids import confident_images
    from attrlab.models import build_model
    from attrlab.train import evaluate

    model = build_model("vgg_small_bn", (1, 28, 28), seed=0).train()
    model.bn2.eval()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = torch.arange(12) % 10
    flags = [module.training for module in model.modules()]
    evaluate(model, x, y, num_classes=10)
    assert [module.training for module in model.modules()] == flags
    with pytest.raises(ValueError, match="too few confident images"):
        confident_images(model, x, y, threshold=0.99)
    assert [module.training for module in model.modules()] == flags and not model.bn2.training


@pytest.fixture(scope="module")
def tiny(digits):
    """400 training and 200 test images of digits: the runs below test the run directory, not the learning."""
    return ImageDataset(
        "digits",
        Split(digits.train.x[:400], digits.train.y[:400]),
        Split(digits.test.x[:200], digits.test.y[:200]),
        digits.classes,
    )


TINY = dict(QUICK, attr_per_class=2)


def test_a_run_that_cannot_start_writes_nothing(tmp_path, tiny):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        train(run_dir, TrainConfig(**{**TINY, "dataset": "mnist"}), progress=False)
    with pytest.raises(DatasetUnavailableError, match="data_root .*missing.* does not exist"):
        train(
            run_dir,
            TrainConfig(**{**TINY, "dataset": "fashionmnist"}, data_root=str(tmp_path / "missing")),
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        train(run_dir, TrainConfig(**{**TINY, "model": "resnet"}), dataset=tiny, progress=False)
    assert not run_dir.exists() and not (tmp_path / "missing").exists()
    assert train(run_dir, TrainConfig(**TINY), dataset=tiny, progress=False).complete  # the corrected command


def test_data_location_and_device_are_not_part_of_a_runs_identity(tmp_path, tiny):
    finished = train(tmp_path / "run", TrainConfig(**TINY), dataset=tiny, progress=False)
    moved = TrainConfig(**{**TINY, "device": "auto", "checkpoint_every": 7}, data_root=str(tmp_path / "elsewhere"))
    again = train(tmp_path / "run", moved, dataset=tiny, progress=False)
    pd.testing.assert_frame_equal(again.metrics, finished.metrics)


def test_a_directory_with_a_config_and_no_step_is_taken_over(tmp_path, tiny):
    RunStore.create(tmp_path / "run", TrainConfig(**{**TINY, "epochs": 5}).to_dict())  # failed before step 1
    run = train(tmp_path / "run", TrainConfig(**TINY), dataset=tiny, progress=False)
    assert run.complete and run.config.epochs == 1
    assert RunStore(tmp_path / "run").remove_if_stub() is False  # it holds steps now
    RunStore.create(tmp_path / "stub", {"a": 1})
    assert RunStore(tmp_path / "stub").remove_if_stub() and not (tmp_path / "stub").exists()


def test_time_based_checkpoints_keep_resume_exact(tmp_path, tiny):
    config = TrainConfig(**{**TINY, "epochs": 2, "checkpoint_every": 100, "checkpoint_seconds": 1e-9})
    run = train(tmp_path / "run", config, dataset=tiny, progress=False)
    steps = run.metrics["step"].tolist()
    parts = sorted((run.root / "tables" / "metrics").glob("part-*.parquet"))
    assert len(parts) == len(steps) == 8  # a checkpoint after every step: more than 1e-9 s pass each
    assert RunStore(run.root).checkpoint_steps() == [7, 8]  # the newest two
    reference = train(
        tmp_path / "ref", TrainConfig(**{**TINY, "epochs": 2, "checkpoint_seconds": 0}), dataset=tiny, progress=False
    )
    pd.testing.assert_frame_equal(run.metrics, reference.metrics)
    with pytest.raises(ValueError, match="checkpoint_seconds must be a number >= 0"):
        TrainConfig(checkpoint_seconds=-1)


def test_resume_says_from_which_step(tmp_path, tiny, capsys):
    class Stop(Callback):
        def on_step(self, trainer, step):
            if step == 5:
                raise KeyboardInterrupt

    config = TrainConfig(**{**TINY, "epochs": 2, "checkpoint_every": 2})
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "run", config, dataset=tiny, callbacks=[Stop()], progress=False)
    assert not (tmp_path / "run" / "LOCK").exists()  # released on the way out
    train(tmp_path / "run", config, dataset=tiny, progress=False)
    assert f"resuming {tmp_path / 'run'} from step 4 of 8" in capsys.readouterr().out


def test_a_second_trainer_stops_and_a_stale_lock_is_taken_over(tmp_path, tiny, capsys):
    import socket

    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "run" / "LOCK"
        lock.parent.mkdir()
        lock.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        with pytest.raises(RunStoreError, match=f"in use by process {owner.pid} on .*lock file .*LOCK"):
            train(tmp_path / "run", TrainConfig(**TINY), dataset=tiny, progress=False)
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        owner.kill()
        owner.wait()
    assert train(tmp_path / "run", TrainConfig(**TINY), dataset=tiny, progress=False).complete
    assert f"taking over the stale lock of {tmp_path / 'run'} (process {owner.pid}" in capsys.readouterr().out
    assert not lock.exists()
