"""StepBuffer: named slots, keys first, NaN for slots not written, one flush per checkpoint, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from attrlab.stepbuffer import StepBuffer


def _buffer(capacity=3):
    return StepBuffer({"loss": ["loss"], "eval": ["eval_a", "eval_b"]}, capacity, "cpu", keys=("step", "method"))


def test_rows_land_in_their_named_slots_and_flush_in_order():
    buffer = _buffer()
    buffer.append({"step": 1, "method": "lrp"}, loss=torch.tensor(0.5))
    buffer.append({"method": "cam", "step": 2}, loss=torch.tensor(0.25), eval=torch.tensor([1.0, 2.0]))
    assert len(buffer) == 2
    frame = buffer.flush()
    assert list(frame.columns) == ["step", "method", "loss", "eval_a", "eval_b"]
    assert frame["step"].tolist() == [1, 2] and frame["method"].tolist() == ["lrp", "cam"]
    assert frame["loss"].tolist() == [0.5, 0.25] and frame["eval_b"].tolist()[1] == 2.0
    assert math.isnan(frame["eval_a"][0])  # a slot not written stays NaN
    assert str(frame["loss"].dtype) == "float32" and str(frame["step"].dtype) == "int64"


def test_flush_empties_the_buffer_and_it_refills_from_nan():
    buffer = _buffer(capacity=1)
    buffer.append({"step": 1, "method": "a"}, loss=1.0, eval=torch.tensor([3.0, 4.0]))
    buffer.flush()
    assert len(buffer) == 0
    buffer.append({"step": 2, "method": "a"}, loss=2.0)
    frame = buffer.flush()
    assert frame["step"].tolist() == [2] and frame[["eval_a", "eval_b"]].isna().all().all()


def test_the_values_stay_on_the_device_they_were_made_on():
    buffer = StepBuffer({"x": ["x"]}, 2, torch.device("cpu"))
    assert buffer.values.device.type == "cpu" and buffer.values.shape == (2, 1)


def test_bad_rows_and_layouts_are_named():
    buffer = _buffer(capacity=1)
    with pytest.raises(ValueError, match=r"a row needs the keys \['step', 'method'\], got \['step'\]"):
        buffer.append({"step": 1}, loss=1.0)
    with pytest.raises(ValueError, match="unknown slots \\['los'\\]; valid slots: loss, eval"):
        buffer.append({"step": 1, "method": "a"}, los=1.0)
    with pytest.raises(ValueError, match=r"slot 'eval' holds 2 values, got a tensor of shape \(3,\)"):
        buffer.append({"step": 1, "method": "a"}, loss=5.0, eval=torch.zeros(3))
    assert len(buffer) == 0 and buffer.values.isnan().all()  # a refused row leaves nothing behind
    buffer.append({"step": 1, "method": "a"}, loss=1.0)
    with pytest.raises(RuntimeError, match="the step buffer is full \\(1 rows\\): flush it first"):
        buffer.append({"step": 2, "method": "a"}, loss=1.0)
    with pytest.raises(ValueError, match="capacity must be a positive integer, got 0"):
        StepBuffer({"x": ["x"]}, 0, "cpu")
    with pytest.raises(ValueError, match="slot 'x' must list its column names"):
        StepBuffer({"x": "x"}, 1, "cpu")
    with pytest.raises(ValueError, match=r"column names must be unique; repeated: \['step'\]"):
        StepBuffer({"step": ["step"]}, 1, "cpu")
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        StepBuffer({"x": ["a"], "y": ["a"]}, 1, "cpu")
