"""LIME against captum's Lime with the same superpixels, samples and similarity kernel (least-squares surrogate)."""

from __future__ import annotations

import pytest
import torch
from attribution_cases import images, model_for
from captum._utils.models.linear_model import SkLearnLinearRegression
from captum.attr import Lime as CaptumLime

from attrlab.attribution import make_method
from attrlab.attribution.lime import quickshift_segments

SHAPE = (1, 28, 28)


def _blocks(size: int = 4) -> torch.Tensor:
    """A fixed segmentation: 7x7 blocks of 4x4 pixels (49 superpixels), where the regression has work to do."""
    index = torch.arange(28) // size
    return index[:, None] * (28 // size) + index[None, :]


@pytest.mark.parametrize("baseline", [0.0, -1.0])
def test_lime_coefficients_equal_captums_given_the_same_perturbations(baseline):
    model = model_for("deep", SHAPE)
    x = images(SHAPE, count=2)
    segments = torch.stack([_blocks(4), _blocks(7) + 100])  # different superpixel counts (49, 16) per image
    target = torch.tensor([[2, 7], [0, 5]])
    method = make_method("lime", model, n_samples=120, baseline=baseline, internal_batch_size=50)
    ours = method.attribute(x, target, segments=segments)
    assert ours.shape == (2, 2, *SHAPE)
    counts = torch.tensor([49, 16])
    samples = method.samples(counts, x.device)
    for i in range(2):
        mask = torch.unique(segments[i], return_inverse=True)[1][None, None]
        for t in range(2):
            draws = iter(samples[i, :, : counts[i]].long()[:, None])

            def perturb(_original, draws=draws, **_kwargs):
                return next(draws)  # captum asks for one sample at a time: ours, in order

            reference = CaptumLime(
                model, interpretable_model=SkLearnLinearRegression(), perturb_func=perturb
            ).attribute(
                x[i : i + 1],
                target=int(target[i, t]),
                feature_mask=mask,
                baselines=baseline,
                n_samples=120,
                perturbations_per_eval=40,
            )
            torch.testing.assert_close(ours[i, t], reference[0], rtol=1e-3, atol=1e-4)


def test_quickshift_defaults_multi_targets_and_errors():
    model = model_for("shallow", SHAPE)
    x = images(SHAPE, count=3)
    segments = quickshift_segments(x)
    assert segments.shape == (3, 28, 28) and segments.dtype == torch.long
    method = make_method("lime", model, n_samples=60)
    both = method.attribute(x, target=torch.tensor([[0, 1], [2, 3], [4, 5]]), segments=_blocks(7))
    one = method.attribute(x, target=[1, 3, 5], segments=_blocks(7))
    torch.testing.assert_close(both[:, 1], one)
    torch.testing.assert_close(method.attribute(x, target=1), method.attribute(x, target=1))  # seeded
    with pytest.raises(ValueError, match="LIME explains the input only: layer must be None, got 'conv2'"):
        method.attribute(x, layer="conv2")
    with pytest.raises(ValueError, match="segments must be integer labels"):
        method.attribute(x, segments=torch.zeros(28, 27, dtype=torch.long))
    with pytest.raises(ValueError, match="n_samples must be an integer >= 2"):
        make_method("lime", model, n_samples=1)
