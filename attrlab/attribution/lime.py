"""LIME (Ribeiro et al. 2016) on superpixels: a weighted linear surrogate fitted to the model on perturbed copies.

For an image with superpixels 1..S (quickshift, scikit-image; the thesis' settings ``kernel_size=4, max_dist=200,
ratio=0.2`` by default, or given as ``segments=``), LIME draws ``n_samples`` binary vectors ``z`` (each superpixel kept
with probability 1/2), builds ``x_z = z[seg] * x + (1 - z[seg]) * baseline``, scores ``f_t(x_z)`` and fits by weighted
least squares ::

    min_{b, c} sum_s pi(x, x_z_s) (f_t(x_z_s) - b - c^T z_s)^2,   pi = exp(-d^2 / (2 width^2)),   d = 1 - cos(x, x_z)

which is captum's ``Lime`` with its default similarity (cosine distance in input space, ``kernel_width`` 1) and
perturbations, and ``SkLearnLinearRegression`` as the surrogate; the attribution of each pixel is its superpixel's
coefficient ``c``, the same for every channel, shape (N, C, H, W). captum's default surrogate is a Lasso (alpha 0.01);
the closed-form least-squares fit is used here because it is exact, batched over images and solved on the device.

Batching: every perturbed copy of every image is a row of one batch scored in passes of ``internal_batch_size``
rows; the binary samples come from a generator seeded with ``seed`` (same seed, same maps); the N weighted
least-squares problems are solved at once (float64 normal equations; images with fewer superpixels than the batch's
largest get coefficient 0 for the missing ones). With (N, T) targets the T fits share the perturbed forwards.
Only the segmentation is a per-image loop, on the host: scikit-image's quickshift has no batched or GPU version.
LIME explains the input only (``layer`` must be None).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .base import (
    Attribution,
    Explanation,
    Layer,
    Target,
    per_target,
    resolve_layer,
    resolve_target,
    target_columns,
)
from .checks import (
    check_baseline,
    check_bool,
    check_image_batch,
    check_internal_batch_size,
    check_non_negative_float,
    check_positive_int,
    pass_rows,
)
from .model_state import eval_semantics


def quickshift_segments(
    inputs: torch.Tensor, kernel_size: float = 4, max_dist: float = 200, ratio: float = 0.2
) -> torch.Tensor:
    """Quickshift superpixels of each image (N, C, H, W) as (N, H, W) labels 0..S_i-1, on the inputs' device.

    Each image is min-max scaled to [0, 1]; one channel is repeated to RGB (quickshift works in Lab colour space),
    three channels are used as RGB, other channel counts without the Lab conversion.
    """
    from skimage.segmentation import quickshift

    images = inputs.detach().float().cpu()
    low = images.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = images.flatten(1).max(1).values.view(-1, 1, 1, 1)
    scaled = ((images - low) / (high - low).clamp_min(1e-12)).numpy().astype(np.float64)
    labels = []
    for image in scaled:
        channels = image.shape[0]
        pixels = np.repeat(image, 3, 0) if channels == 1 else image
        labels.append(
            quickshift(
                pixels.transpose(1, 2, 0),
                kernel_size=kernel_size,
                max_dist=max_dist,
                ratio=ratio,
                convert2lab=pixels.shape[0] == 3,
                rng=0,
            )
        )
    return torch.as_tensor(np.stack(labels), dtype=torch.long, device=inputs.device)


def _relabel(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of each image renumbered 0..S_i-1 (in order of value), and S_i per image."""
    flat = segments.flatten(1)
    relabelled, counts = [], []
    for row in flat:  # one unique per image: images have different label sets
        values, inverse = torch.unique(row, return_inverse=True)
        relabelled.append(inverse)
        counts.append(values.numel())
    return torch.stack(relabelled).view_as(segments), torch.tensor(counts, device=segments.device)


def weighted_least_squares(
    design: torch.Tensor, response: torch.Tensor, weights: torch.Tensor, active: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the intercept and coefficients minimising sum_s w_s (y_s - b - c^T z_s)^2.

    ``design`` (N, M, S) binary samples, ``response`` (N, M, T), ``weights`` (N, M), ``active`` (N, S) which of the
    S columns exist for each image (the others get coefficient 0). With fewer samples than unknowns the solution
    is the minimum-norm one. Returns (N, T, S) coefficients and (N, T)
    intercepts, computed in float64.
    """
    z = torch.cat([design, torch.ones_like(design[..., :1])], -1).double()  # intercept last
    w = weights.double()[..., None]
    gram = z.transpose(1, 2) @ (w * z)
    # the pseudo-inverse gives the minimum-norm solution when there are fewer samples than superpixels (and zero for
    # the all-zero columns of missing superpixels), as a least-squares solver would; it is batched on any device
    solution = torch.linalg.pinv(gram, hermitian=True) @ (z.transpose(1, 2) @ (w * response.double()))
    solution[:, :-1] *= active.double()[:, :, None]
    return solution[:, :-1].transpose(1, 2), solution[:, -1]


class Lime(Attribution):
    """LIME on quickshift superpixels, equal to captum's ``Lime`` with a least-squares surrogate (module docstring).

    Parameters
    ----------
    model : nn.Module
        The classifier (its logits are the scores fitted).
    n_samples : int
        Perturbed copies per image (500 in the thesis' B-cos chapter, 256 in the CoDA chapter).
    kernel_size, max_dist, ratio : float
        quickshift's settings (the thesis', which are LIME's defaults); unused when ``segments`` are given.
    kernel_width : float
        Width of the exponential similarity kernel on the cosine distance (captum's default 1.0).
    baseline : float
        The value of removed superpixels.
    seed : int
        Seed of the binary samples, drawn anew at every call.
    internal_batch_size : int, None or "auto"
        Rows per forward pass.
    progress : bool
        A progress bar over the forward passes.
    """

    name = "lime"
    #: LIME perturbs and explains the input; ``layer`` must be None
    input_only = True

    def __init__(
        self,
        model: nn.Module,
        n_samples: int = 500,
        kernel_size: float = 4,
        max_dist: float = 200,
        ratio: float = 0.2,
        kernel_width: float = 1.0,
        baseline: float = 0.0,
        seed: int = 0,
        internal_batch_size: int | str | None = "auto",
        progress: bool = False,
    ):
        super().__init__(model)
        self.n_samples = check_positive_int("n_samples", n_samples, minimum=2)
        self.kernel_size = check_non_negative_float("kernel_size", kernel_size)
        self.max_dist = check_non_negative_float("max_dist", max_dist)
        self.ratio = check_non_negative_float("ratio", ratio)
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        self.kernel_width = check_non_negative_float("kernel_width", kernel_width)
        if self.kernel_width == 0:
            raise ValueError("kernel_width must be > 0, got 0")
        self.baseline = check_baseline(baseline)
        if isinstance(self.baseline, torch.Tensor):
            raise TypeError("the LIME baseline must be a number (the value removed superpixels are set to)")
        self.seed = check_positive_int("seed", seed, minimum=0)
        self.internal_batch_size = check_internal_batch_size(internal_batch_size)
        self.progress = check_bool("progress", progress)

    def samples(self, segment_counts: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The (N, n_samples, S) binary samples of a call (S = the largest superpixel count; 0 beyond S_i)."""
        generator = torch.Generator(device=device).manual_seed(self.seed)
        width = int(segment_counts.max())
        draws = torch.rand((segment_counts.shape[0], self.n_samples, width), generator=generator, device=device)
        active = torch.arange(width, device=device) < segment_counts[:, None]
        return ((draws < 0.5) & active[:, None]).float()

    def explain(
        self, inputs: torch.Tensor, target: Target = None, layer: Layer = None, segments: torch.Tensor | None = None
    ) -> Explanation:
        """Fit the surrogate for every image and target.

        Parameters
        ----------
        inputs : torch.Tensor
            Images (N, C, H, W).
        target : None, int, sequence or tensor
            The logits to explain; (N, T) for several per image (one fit each, same perturbed forwards).
        layer : None
            LIME explains the input; any other value is an error.
        segments : torch.Tensor, optional
            Superpixel labels (N, H, W) or (H, W) for all images (captum's ``feature_mask``); quickshift when None.

        Returns
        -------
        Explanation
            Per-pixel superpixel coefficients (N, C, H, W), or (N, T, C, H, W).
        """
        x = check_image_batch(inputs, self.model)
        if resolve_layer(self.model, layer) is not None:
            raise ValueError(f"LIME explains the input only: layer must be None, got {layer!r}")
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        if segments is None:
            segments = quickshift_segments(x, self.kernel_size, self.max_dist, self.ratio)
        else:
            segments = torch.as_tensor(segments, device=x.device)
            if (
                segments.dtype.is_floating_point
                or segments.shape[-2:] != (height, width)
                or segments.ndim not in (2, 3)
            ):
                raise ValueError(
                    f"segments must be integer labels (N, H, W) or (H, W) for images {tuple(x.shape)}, got "
                    f"{segments.dtype} {tuple(segments.shape)}"
                )
            segments = segments.long().expand(batch, height, width)
            if segments.shape[0] != batch:
                raise ValueError(f"segments has {segments.shape[0]} images but the batch has {batch}")
        labels, counts = _relabel(segments)
        z = self.samples(counts, x.device)  # (N, M, S)
        with eval_semantics(self.model), torch.no_grad():
            logits = self.model(x)
            target_index = resolve_target(target, logits)
            columns = target_columns(target_index)
            masks = z.gather(2, labels.flatten(1)[:, None, :].expand(-1, self.n_samples, -1))
            masks = masks.view(batch, self.n_samples, 1, height, width).to(x.dtype)
            rows = pass_rows(self.internal_batch_size, x, batch * self.n_samples)
            per_pass = max(1, rows // batch)
            scores, similarity = [], []
            flat_x = x.flatten(1)
            for first in tqdm(range(0, self.n_samples, per_pass), desc=self.name, disable=not self.progress):
                chunk = masks[:, first : first + per_pass]  # (N, k, 1, H, W)
                perturbed = x[:, None] * chunk + self.baseline * (1 - chunk)
                output = self.model(perturbed.flatten(0, 1)).view(batch, chunk.shape[1], -1)
                scores.append(output.gather(2, columns[:, None, :].expand(-1, chunk.shape[1], -1)))
                cosine = torch.nn.functional.cosine_similarity(flat_x[:, None], perturbed.flatten(2), dim=2)
                similarity.append(torch.exp(-((1 - cosine) ** 2) / (2 * self.kernel_width**2)))
            active = torch.arange(z.shape[2], device=x.device) < counts[:, None]
            coefficients, _ = weighted_least_squares(z, torch.cat(scores, 1), torch.cat(similarity, 1), active)
        pixel = coefficients.to(x.dtype).gather(2, labels.flatten(1)[:, None, :].expand(-1, columns.shape[1], -1))
        attribution = pixel.view(batch, columns.shape[1], 1, height, width).expand(-1, -1, x.shape[1], -1, -1)
        return Explanation(per_target(attribution.contiguous(), target_index), logits, target_index)

    def attribute(  # type: ignore[override]
        self, inputs: torch.Tensor, target: Target = None, layer: Layer = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`explain`'s attribution alone."""
        return self.explain(inputs, target=target, layer=layer, segments=segments).attribution


__all__ = ["Lime", "quickshift_segments", "weighted_least_squares"]
