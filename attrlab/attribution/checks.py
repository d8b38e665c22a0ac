"""Argument checks of the gradient, CAM and perturbation methods (each error names the bad value and the valid ones),
and how ``internal_batch_size`` sizes their forward passes."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def check_batch(inputs: Any) -> torch.Tensor:
    """A floating-point batch (N, ...) with N >= 1, returned detached (methods never write into the caller's graph)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor batch (N, C, H, W), not {type(inputs).__name__}")
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ValueError(f"inputs must be a non-empty batch (N, ...), got shape {tuple(inputs.shape)}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    return inputs.detach()


def check_image_batch(inputs: Any) -> torch.Tensor:
    """:func:`check_batch` for methods that need images (N, C, H, W)."""
    batch = check_batch(inputs)
    if batch.ndim != 4:
        raise ValueError(f"inputs must be images (N, C, H, W), got shape {tuple(batch.shape)}")
    return batch


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
    return internal_batch_size or total


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
