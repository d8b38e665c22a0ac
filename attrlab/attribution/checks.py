"""Argument checks of the gradient, CAM and perturbation methods (each error names the bad value and the valid ones),
and how ``internal_batch_size`` sizes their forward passes."""

from __future__ import annotations

import copy
import itertools
import math
import weakref
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn


def check_batch(inputs: Any, model: nn.Module | None = None) -> torch.Tensor:
    """A floating-point batch (N, ...) with N >= 1, returned detached (methods never write into the caller's graph).

    With ``model``, the batch must also fit it (see :func:`check_fits_model`): its dtype and device, the channels or
    features of its first layer and, where a shape-only (meta) pass can tell, its image size.
    """
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch (N, C, H, W), not {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, ...), got shape {tuple(inputs.shape)}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    if model is not None:
        check_fits_model(inputs, model)
    return inputs.detach()


def check_image_batch(inputs: Any, model: nn.Module | None = None) -> torch.Tensor:
    """:func:`check_batch` for methods that need images (N, C, H, W)."""
    batch = check_batch(inputs)
    if batch.ndim != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(batch.shape)}")
    if model is not None:
        check_fits_model(batch, model)
    return batch


#: per model, its hook-free twin on the meta device and the (shape without N, dtype) pairs the twin has accepted
_FITTING: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose parameters and buffers live on the meta device (no data copied) and with no hooks.

    The model itself never runs for a check: its hooks must not fire and its BatchNorm statistics must not move.
    """
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        twin = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(twin, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else twin
    try:
        twin_model = copy.deepcopy(model, memo)
    except Exception:  # a module that cannot be copied: its shapes are left to the real pass
        return None
    for module in twin_model.modules():
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            getattr(module, hooks, {}).clear()
    return twin_model


#: layers that pass the input on reshaped at most, skipped when looking for the layer that receives the input
_RESHAPES = (nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Unflatten)


def check_fits_model(inputs: torch.Tensor, model: nn.Module) -> None:
    """Raise a clear error when ``inputs`` cannot go through ``model``, before the model runs.

    Checked: the dtype and the device against the model's parameters, the channels of a first ``Conv2d`` or the
    features of a first ``Linear``, and, by one forward pass on the meta device (shapes only, no arithmetic; once per
    model and input shape), every later shape: a 32x32 image in a model built for 28x28 fails there, and the error
    names the shapes instead of torch's ``mat1 and mat2 shapes cannot be multiplied``.
    """
    parameter = next(model.parameters(), None)
    shape = tuple(inputs.shape)
    if parameter is not None:
        if parameter.dtype.is_floating_point and inputs.dtype != parameter.dtype:
            raise TypeError(
                f"inputs have dtype {inputs.dtype} but the model's parameters are {parameter.dtype}; "
                f"convert them with inputs.to({parameter.dtype})"
            )
        if inputs.device != parameter.device:
            raise ValueError(
                f"inputs are on {inputs.device} but the model is on {parameter.device}; move them with "
                f"inputs.to('{parameter.device}')"
            )
    # the first computing layer, when the input reaches it directly (reshapes aside); a model that transforms its input
    # first (B-cos' [x, 1 - x] encoding doubles the channels) is left to the shape-only pass below
    leaves = (m for m in model.modules() if next(m.children(), None) is None)
    first = next((m for m in leaves if not isinstance(m, _RESHAPES)), None)
    if isinstance(first, nn.Conv2d) and (inputs.ndim != 4 or shape[1] != first.in_channels):
        raise ValueError(
            f"inputs must be images (N, C, H, W) with C = {first.in_channels}, the channels of the model's first "
            f"convolution; got shape {shape}"
        )
    if isinstance(first, nn.Linear) and math.prod(shape[1:]) != first.in_features:
        raise ValueError(
            f"the model's first layer is Linear({first.in_features}, ...), so each input must hold "
            f"{first.in_features} values; got shape {shape} ({math.prod(shape[1:])} values per input)"
        )
    key = (shape[1:], inputs.dtype)
    entry = _FITTING.get(model)
    if entry is None:
        entry = _FITTING[model] = (_meta_copy(model), set())
    twin, known = entry
    if key in known or twin is None:
        return
    try:
        with torch.no_grad():
            twin(torch.empty((1, *shape[1:]), dtype=inputs.dtype, device="meta"))
    except RuntimeError as err:
        if "meta" in str(err).lower():  # an operation that needs real values (.item(), ...): cannot tell here
            return
        raise ValueError(
            f"inputs of shape {shape} do not fit the model ({' '.join(str(err).split())[:300]}); "
            "pass images of the size the model was built for"
        ) from err
    except Exception:  # an operation without a meta kernel: the shapes cannot be told here, the real pass will
        return
    known.add(key)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_optional_positive_int(name: str, value: Any) -> int | None:
    return None if value is None else check_positive_int(name, value)


#: ``internal_batch_size="auto"`` on a CPU: rows per forward pass holding about this many input values. Per-image
#: cost of the small grid models grows beyond ~64 rows of 56x56 (activations leave the caches), so CPU passes stay
#: small; on a GPU, where large passes are what is fast, "auto" means :data:`AUTO_ROWS_GPU` rows.
AUTO_VALUES_CPU = 2**18
AUTO_ROWS_GPU = 2048


def check_internal_batch_size(value: Any) -> int | str | None:
    """``internal_batch_size``: rows per forward pass, ``None`` (all at once) or ``"auto"`` (see :func:`pass_rows`)."""
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"internal_batch_size must be an integer >= 1, None or 'auto', got {value!r}")
    return value


def pass_rows(internal_batch_size: int | str | None, inputs: torch.Tensor, total: int) -> int:
    """Rows per forward pass for ``total`` rows shaped like the rows of ``inputs``."""
    if internal_batch_size == "auto":
        if inputs.device.type == "cpu":
            return max(1, AUTO_VALUES_CPU // max(1, inputs[0].numel()))
        return AUTO_ROWS_GPU
    return cast("int | None", internal_batch_size) or total  # "auto" is the only string (check_internal_batch_size)


def check_non_negative_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a probability in (0, 1], got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(map(str, choices))}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_pair(name: str, value: Any) -> tuple[int, int]:
    """An int or a pair of ints >= 1 (window and stride sizes), as a (height, width) pair."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair)
    ):
        raise ValueError(f"{name} must be an integer >= 1 or a pair of them (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


def check_baseline(value: Any) -> float:
    """A constructor's scalar baseline: a finite number (tensors go to ``attribute(..., baselines=...)``)."""
    if isinstance(value, torch.Tensor):
        raise TypeError(
            "the constructor's baseline is a number; pass a baseline tensor (one per image, or one broadcast over the "
            "batch) to attribute(..., baselines=tensor) / explain(..., baselines=tensor), as in captum"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise ValueError(f"baseline must be a finite number, got {value!r}")
    return float(value)


def check_baselines(value: Any, default: float, like: torch.Tensor, what: str = "inputs") -> torch.Tensor:
    """``baselines`` of one call as a tensor shaped like ``like`` on its device and dtype.

    ``None`` gives the constructor's scalar ``default``; a number is that value everywhere; a floating-point tensor
    must broadcast to ``like`` (a per-image (N, ...) baseline or one (1, ...) / (...) shared by the batch).
    """
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            raise TypeError(f"a baseline tensor must be floating point, got dtype {value.dtype}")
        try:
            return torch.broadcast_to(value.detach().to(like), like.shape)
        except RuntimeError as err:
            raise ValueError(
                f"baselines of shape {tuple(value.shape)} do not broadcast to the {what} {tuple(like.shape)}"
            ) from err
    return torch.full_like(like, check_baseline(value))
