"""The model's output for each image's target class, evaluated in large batches without gradients.

Every perturbation metric funnels its perturbed copies through :func:`target_scores`, so a whole batch of images and
all their perturbation steps go through the model in a few large forward passes instead of one call per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

#: an explanation function: (inputs (N, C, H, W), targets (N,)) -> maps; an attrlab method's ``attribute`` fits
Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


#: images per forward pass when ``batch_size`` is None: large on a GPU; on a CPU a few hundred images already fill
#: the caches and larger batches ran slower (the deep model on digits, one thread: 128 images per pass was fastest)
AUTO_BATCH = {"cuda": 4096, "cpu": 128}


def check_batch_size(batch_size: int | None) -> None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}")


def resolve_batch_size(batch_size: int | None, device: torch.device) -> int:
    """``batch_size``, or for None the automatic size for ``device`` (:data:`AUTO_BATCH`)."""
    check_batch_size(batch_size)
    if batch_size is not None:
        return batch_size
    return AUTO_BATCH["cuda"] if device.type == "cuda" else AUTO_BATCH["cpu"]


def as_explain(explain) -> Explain:
    """``explain`` as a function of (inputs, targets): an attrlab method (its ``attribute``) or such a function."""
    if hasattr(explain, "attribute"):
        return lambda x, target: explain.attribute(x, target=target)
    if not callable(explain):
        raise TypeError(f"explain must be an attribution method or a function (x, target) -> maps, got {explain!r}")
    return explain


@torch.no_grad()
def target_scores(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None, softmax: bool = False
) -> torch.Tensor:
    """The model's logit (or softmax probability) of ``targets`` for every image of ``x``, in eval mode.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier; it is switched to eval mode for the call and back afterwards.
    x : torch.Tensor
        Images (M, C, H, W).
    targets : torch.Tensor
        (M,) class indices.
    batch_size : int, optional
        Images per forward pass; None chooses by device (:data:`AUTO_BATCH`).
    softmax : bool
        Score softmax probabilities instead of logits (Quantus' ``softmax``; logits by default, as there).

    Returns
    -------
    torch.Tensor
        (M,) scores.
    """
    batch_size = resolve_batch_size(batch_size, x.device)
    was_training = model.training
    model.eval()
    try:
        parts = []
        for start in range(0, len(x), batch_size):
            out = model(x[start : start + batch_size])
            if softmax:
                out = out.softmax(1)
            parts.append(out.gather(1, targets[start : start + batch_size, None])[:, 0])
    finally:
        model.train(was_training)
    return torch.cat(parts) if parts else x.new_zeros(0)


def score_steps(
    model: nn.Module,
    steps: Iterable[torch.Tensor],
    y: torch.Tensor,
    batch_size: int | None = None,
    softmax: bool = False,
) -> torch.Tensor:
    """Scores of a sequence of perturbed batches (each (N, C, H, W), one per step) as an (N, steps) tensor.

    Steps are gathered until ``batch_size`` images are waiting (None: by device), then scored in one forward pass.
    """
    batch_size = resolve_batch_size(batch_size, y.device)
    columns: list[torch.Tensor] = []
    waiting: list[torch.Tensor] = []
    n = len(y)

    def flush() -> None:
        if waiting:
            images = torch.cat(waiting)
            scores = target_scores(model, images, y.repeat(len(waiting)), batch_size, softmax)
            columns.extend(scores.reshape(len(waiting), n).unbind(0))
            waiting.clear()

    for step in steps:
        waiting.append(step)
        if len(waiting) * n >= batch_size:
            flush()
    flush()
    return torch.stack(columns, 1) if columns else y.new_zeros((n, 0), dtype=torch.float32)
