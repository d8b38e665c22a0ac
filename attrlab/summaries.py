"""Summaries of attribution maps: per-image norms, entropies, sparseness, and their per-step group means.

Per image (a map is first summed over colour channels, as in the seed code), computed batched on the device:

* ``norm_pos`` / ``norm_neg``: Frobenius (L2) norm of the positive part ``max(R, 0)`` / negative part ``min(R, 0)``;
* ``entropy_pos`` / ``entropy_neg``: Shannon entropy (natural log) of the part normalised by its sum; an all-zero part
  has no distribution and so no entropy: the value is NaN (the seed code replaced it by 0, which drags the mean of
  a step towards 0 whenever maps die, a defect this module does not copy);
* ``gini``: Gini sparseness of ``|R|`` (Hurley & Rickard; Quantus' ``Sparseness``): 0 for a uniform map, near 1 for
  a single pixel; NaN for an all-zero map;
* ``frac_pos``: the fraction of pixels with positive relevance.

The group summary of a step (:func:`group_summary`): the mean of each summary over the whole set, per class, and per
train/test half of the attribution set, ignoring NaNs, each with the count of NaN images beside it
(``<summary>_nan``), so that nothing undefined is silently averaged in.
"""

from __future__ import annotations

import torch

SUMMARIES = ("norm_pos", "norm_neg", "entropy_pos", "entropy_neg", "gini", "frac_pos")
#: the summaries that can be undefined (NaN) for an image
UNDEFINED_POSSIBLE = ("entropy_pos", "entropy_neg", "gini")


def to_map(attribution: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W) by summing channels; (N, H, W) and (N, D) are flattened as they are."""
    if attribution.ndim == 4:
        attribution = attribution.sum(1)
    return attribution.reshape(attribution.shape[0], -1)


def _entropy(part: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a non-negative (N, D) tensor normalised to sum 1; NaN for a zero row."""
    total = part.sum(1, keepdim=True)
    p = part / total  # NaN rows where total == 0
    terms = torch.where(part > 0, p * torch.log(p), torch.zeros_like(p))
    entropy = -terms.sum(1)
    return torch.where(total.squeeze(1) > 0, entropy, torch.full_like(entropy, float("nan")))


def gini(values: torch.Tensor) -> torch.Tensor:
    """Gini index of each row of ``|values|`` (N, D): sum_i (2i - d - 1) a_(i) / (d sum a), a sorted ascending."""
    a = values.abs().sort(dim=1).values
    d = a.shape[1]
    weights = 2 * torch.arange(1, d + 1, device=a.device, dtype=a.dtype) - d - 1
    total = a.sum(1)
    index = (a * weights).sum(1) / (d * total)
    return torch.where(total > 0, index, torch.full_like(index, float("nan")))


def summarise(attribution: torch.Tensor) -> torch.Tensor:
    """Per-image summaries as an (N, len(SUMMARIES)) tensor in the order of :data:`SUMMARIES`.

    Computed for the positive and the negative part at once (one (2, N, D) tensor), with the parts' sums shared by
    the entropies and the Gini index: a tracked step summarises every map of every method, so the number of passes
    over the maps counts (the values equal :func:`gini` and the entropy's definition to float rounding).
    """
    flat = to_map(attribution).float()
    d = flat.shape[1]
    parts = torch.stack([flat.clamp(min=0), flat.clamp(max=0).neg_()])  # (2, N, D), both >= 0
    totals = parts.sum(-1)  # (2, N)
    p = parts / totals[..., None]  # NaN rows where a part is all zero
    entropies = torch.special.xlogy(p, p).sum(-1).neg_()  # xlogy(0, 0) = 0: zero pixels add nothing
    entropies = torch.where(totals > 0, entropies, torch.full_like(entropies, float("nan")))
    magnitude = totals.sum(0)  # sum |R| per image
    ranked = flat.abs().sort(dim=1).values
    weights = 2 * torch.arange(1, d + 1, device=flat.device, dtype=flat.dtype) - d - 1
    gini_index = (ranked @ weights) / (d * magnitude)
    gini_index = torch.where(magnitude > 0, gini_index, torch.full_like(gini_index, float("nan")))
    norms = torch.linalg.vector_norm(parts, dim=-1)
    positive_share = torch.count_nonzero(parts[0], dim=-1).to(flat.dtype) / d
    return torch.stack([norms[0], norms[1], entropies[0], entropies[1], gini_index, positive_share], dim=1)


def group_names(num_classes: int) -> list[str]:
    """Names of the groups of images, in the order :func:`group_summary` returns them."""
    return ["all", "train", "test"] + [f"c{c}" for c in range(num_classes)]


def group_summary_columns(num_classes: int) -> list[str]:
    """Column names of a :func:`group_summary` row: ``<summary>`` (all images), ``<summary>_<group>``, ``..._nan``."""
    columns = []
    for group in group_names(num_classes):
        suffix = "" if group == "all" else f"_{group}"
        columns += [f"{name}{suffix}" for name in SUMMARIES]
        columns += [f"{name}_nan{suffix}" for name in UNDEFINED_POSSIBLE]
    return columns


def group_matrix(labels: torch.Tensor, is_train: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(groups, N) 0/1 membership matrix of the groups of :func:`group_names` (built once per attribution set)."""
    everyone = torch.ones_like(labels, dtype=torch.float32)[None]
    halves = torch.stack([is_train.float(), (~is_train).float()])
    classes = torch.nn.functional.one_hot(labels, num_classes).T.float()
    return torch.cat([everyone, halves, classes])


def group_summary(per_image: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """One flat row of NaN-ignoring group means and NaN counts (order of :func:`group_summary_columns`), on the device.

    Parameters
    ----------
    per_image : torch.Tensor
        (N, len(SUMMARIES)) per-image summaries from :func:`summarise`.
    groups : torch.Tensor
        (groups, N) 0/1 membership matrix from :func:`group_matrix`.

    Returns
    -------
    torch.Tensor
        The flat row, len(group_summary_columns(num_classes)) values.
    """
    defined = ~torch.isnan(per_image)  # (N, S)
    values = torch.where(defined, per_image, torch.zeros_like(per_image))
    sums = groups @ values  # (G, S)
    counts = groups @ defined.float()
    means = sums / counts  # NaN where a group has no defined value
    missing = groups.sum(1, keepdim=True) - counts  # (G, S)
    undefined_index = [SUMMARIES.index(name) for name in UNDEFINED_POSSIBLE]
    return torch.cat([means, missing[:, undefined_index]], dim=1).reshape(-1)
