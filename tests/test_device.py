"""Device behaviour: no host reads in the per-step paths, deterministic runs, and the device helpers.

The per-step paths (a training step with its evaluation, a tracked step, a batched grid evaluation) must not read
device values back to the host: on a GPU each read stalls the host until the device has caught up. On CUDA this is
checked with ``torch.cuda.set_sync_debug_mode("error")``; on the CPU, where reads cost nothing and are invisible to
that switch, the same is checked by counting the calls that read a tensor's values (``item``, ``tolist``, ``bool``,
``float``, ``int``, ``cpu``, ``numpy``) made from attrlab's own code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import attrlab
import attrlab.__main__ as cli
from attrlab.device import CUBLAS_WORKSPACE, deterministic, device_name, full_float32, set_deterministic, synchronize
from attrlab.grids import MethodSpec, evaluate_setting, make_grids
from attrlab.grids.data import ConfidentImages
from attrlab.models import build_model
from attrlab.track import Tracker, tracked_frame
from attrlab.train import Callback, Run, TrainConfig, Trainer, train

PACKAGE = str(Path(attrlab.__file__).parent)
#: the methods of torch.Tensor that read values back to the host
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")
#: resolve_target validates targets on the host only for CPU tensors; on a GPU it asserts on the device instead
#: (torch._assert_async), so its CPU-only read is not counted
CPU_ONLY = {"resolve_target"}


@contextlib.contextmanager
def host_reads():
    """Record (method, function, file:line) of every value read made directly from attrlab's code in the block."""
    calls: list[tuple[str, str, str]] = []
    saved = {name: torch.Tensor.__dict__.get(name) for name in READS}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, __original=original, __name=name, **kwargs):
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            if where.startswith(PACKAGE) and frame.f_code.co_name not in CPU_ONLY:
                calls.append((__name, frame.f_code.co_name, f"{Path(where).name}:{frame.f_lineno}"))
            return __original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counting)
    try:
        yield calls
    finally:
        for name, original in saved.items():
            if original is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, original)


class _Window(Callback):
    """Opens a context after the callbacks of step ``at - 1`` and closes it after those of step ``at``: the window
    holds exactly one whole step (batch, forward, backward, optimiser step, evaluation, tracking)."""

    def __init__(self, at: int, make_context):
        self.at, self.make_context, self.context, self.value = at, make_context, None, None

    def on_step(self, trainer, step):
        if step == self.at - 1:
            self.context = self.make_context()
            self.value = self.context.__enter__()
        elif step == self.at:
            self.context.__exit__(None, None, None)


CONFIG = dict(dataset="digits", model="shallow", epochs=1, checkpoint_every=10, eval_every=1)


def test_a_tracked_training_step_reads_nothing_back_on_the_cpu(tmp_path, digits):
    window = _Window(3, lambda: host_reads())
    config = TrainConfig(**CONFIG, device="cpu")
    train(tmp_path / "run", config, callbacks=[Tracker(), window], dataset=digits, progress=False)
    assert window.value == []
    # and the counter does see reads: the flush at the checkpoint reads the buffers
    with host_reads() as calls:
        train(
            tmp_path / "again",
            TrainConfig(**{**CONFIG, "epochs": 1}, device="cpu"),
            callbacks=[Tracker()],
            dataset=digits,
            progress=False,
        )
    assert {"cpu"} <= {name for name, _, _ in calls}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tracked_training_step_does_not_synchronise_on_cuda(tmp_path, digits):
    @contextlib.contextmanager
    def sync_errors():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    window = _Window(3, sync_errors)
    config = TrainConfig(**CONFIG, device="cuda")
    train(tmp_path / "run", config, callbacks=[Tracker(), window], dataset=digits, progress=False)
    assert len(tracked_frame(tmp_path / "run", "lrp")) == 15


def test_batched_grid_evaluation_reads_the_scores_once(digits, device):
    model = build_model("vgg_small", seed=0).to(device).eval()
    images = ConfidentImages(digits.test.x, digits.test.y, threshold=0.0)
    grids = make_grids(images, 6, n=2, layout="distinct", seed=0)
    specs = [MethodSpec("IxG", "input_x_gradient"), MethodSpec("GradCAM", "gradcam", smoothing=(1, 3))]
    with host_reads() as calls:
        result = evaluate_setting(model, grids, "gridpg", specs, batch_size=2, keep_maps=False, progress=False)
    assert len(result.scores) == 6 * 4 * (3 + 3 * 2)
    assert [name for name, _, _ in calls] == ["cpu", "numpy"], calls  # one transfer for every method and layer


def test_same_seed_same_tables_with_deterministic_on(tmp_path, digits, device):
    """Two deterministic runs of the seed model, tracked: identical metric and attribution tables (bit for bit)."""
    config = TrainConfig(**{**CONFIG, "checkpoint_every": 5}, device=device, deterministic=True)
    runs = [
        train(tmp_path / name, config, callbacks=[Tracker(schedule=2)], dataset=digits, progress=False)
        for name in ("a", "b")
    ]
    pd.testing.assert_frame_equal(runs[0].metrics, runs[1].metrics, check_exact=True)
    pd.testing.assert_frame_equal(tracked_frame(runs[0].root), tracked_frame(runs[1].root), check_exact=True)
    assert not torch.are_deterministic_algorithms_enabled()  # the switch is scoped to the run
    assert Run(runs[0].root).config.deterministic is True


def test_deterministic_switch_and_its_config_field(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    with pytest.raises(TypeError, match="True or False"):
        set_deterministic("yes")
    with pytest.raises(ValueError, match="deterministic must be True or False, got 1"):
        TrainConfig(deterministic=1)
    # saved only when on, so run directories written before the field existed still match
    assert "deterministic" not in TrainConfig().to_dict()
    assert TrainConfig.from_dict(TrainConfig(deterministic=True).to_dict()).deterministic is True


def test_cli_takes_deterministic_as_true_or_false(tmp_path, monkeypatch):
    seen = []

    class _Finished:
        metrics: list = []

    monkeypatch.setattr(cli, "train", lambda run_dir, config, **options: seen.append(config) or _Finished())
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--deterministic", "true", "--no-progress"]) == 0
    assert cli.main(["train", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    assert [config.deterministic for config in seen] == [True, False]
    with pytest.raises(SystemExit):
        cli.main(["train", "--run-dir", str(tmp_path / "r"), "--deterministic", "maybe"])


def test_device_helpers(device):
    assert device_name(device).startswith(device)
    synchronize(device)
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    with full_float32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before


def test_trainer_keeps_its_tensors_on_the_device(tmp_path, digits, device):
    trainer = Trainer(TrainConfig(**CONFIG, device=device), tmp_path / "run", dataset=digits, progress=False)
    tensors = [
        trainer.data.train.x,
        trainer.attribution_set.x,
        trainer.attribution_set.is_train,
        next(trainer.model.parameters()),
    ]
    assert {t.device.type for t in tensors} == {device}


class _FakeLibc:
    """Records mallopt calls; answers ``accepted`` for each."""

    def __init__(self, accepted=(1, 1, 1)):
        self.calls: list[tuple[int, int]] = []
        self.accepted = list(accepted)

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return self.accepted[len(self.calls) - 1]


def test_reuse_freed_memory_sets_every_parameter_and_says_whether_glibc_took_them(monkeypatch):
    from attrlab import device

    libc = _FakeLibc()
    monkeypatch.setattr(device, "_glibc", lambda: libc)
    assert device.reuse_freed_memory() is True
    assert libc.calls == list(device.MALLOPT_SETTINGS.values())
    refusing = _FakeLibc(accepted=(0, 1, 1))  # a glibc that caps the mmap threshold: the other two still get set
    monkeypatch.setattr(device, "_glibc", lambda: refusing)
    assert device.reuse_freed_memory() is False
    assert len(refusing.calls) == 3
    monkeypatch.setattr(device, "_glibc", lambda: None)  # not glibc: nothing to do
    assert device.reuse_freed_memory() is False
    monkeypatch.setattr(device, "_glibc", lambda: libc)
    monkeypatch.setenv(device.REUSE_ENV, "0")  # the opt-out: glibc is not touched
    assert device.reuse_freed_memory() is False
    assert len(libc.calls) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_after_reuse_freed_memory_a_large_tensor_comes_from_the_heap_not_from_mmap():
    import ctypes

    from attrlab import device

    libc = device._glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")

    class MallInfo2(ctypes.Structure):  # malloc.h: ten size_t fields; hblkhd = bytes in mmapped blocks
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        ] + [("keepcost", ctypes.c_size_t)]

    libc.mallinfo2.restype = MallInfo2
    assert device.reuse_freed_memory() is True  # conftest already called it; calling again changes nothing
    size = 64 * 2**20  # above glibc's largest default mmap threshold (32 MiB): with its defaults this is an mmap
    before = libc.mallinfo2().hblkhd
    block = torch.empty(size, dtype=torch.uint8)
    assert libc.mallinfo2().hblkhd - before < size
    del block
