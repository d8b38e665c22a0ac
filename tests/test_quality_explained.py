"""Metrics that explain again (Average/Max Sensitivity, Random Logit) equal Quantus 0.6 on its own random draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from quantus_reference import SECOND_MOMENT, explain_func, np32, quantus
from skimage.metrics import structural_similarity

from attrlab.attribution import make_method
from attrlab.models import build_model
from attrlab.quality import avg_sensitivity, max_sensitivity, random_logit
from attrlab.quality.draws import off_classes, quantus_off_classes, quantus_uniform_noise
from attrlab.quality.randomisation import ssim_1d


@pytest.fixture(scope="module")
def case(digits):
    model = build_model("shallow", seed=0).eval()
    method = make_method("input_x_gradient", model)
    x, y = digits.test.x[:4], digits.test.y[:4]
    return model, method, x, y, method.attribute(x, target=y).detach()


@pytest.mark.parametrize("metric, ours", [("AvgSensitivity", avg_sensitivity), ("MaxSensitivity", max_sensitivity)])
def test_sensitivity_equals_quantus_on_its_noise(case, metric, ours):
    model, method, x, y, a = case
    reference = getattr(quantus, metric)(nr_samples=3, lower_bound=0.2, abs=False, **SECOND_MOMENT)
    np.random.seed(11)
    expected = np.array(
        reference(
            model=model,
            x_batch=np32(x),
            y_batch=y.numpy(),
            a_batch=np32(a),
            explain_func=explain_func(lambda xx, t: method.attribute(xx, target=t)),
        )
    )
    noise = quantus_uniform_noise(4, 3, (1, 28, 28), 0.2, None, seed=11)
    result = ours(model, x, y, a, method, nr_samples=3, noise=noise, batch_size=5)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_sensitivity_is_seeded_zero_without_noise_and_names_bad_values(case):
    model, method, x, y, a = case
    first = avg_sensitivity(model, x, y, a, method, nr_samples=2, seed=3)
    torch.testing.assert_close(first, avg_sensitivity(model, x, y, a, method, nr_samples=2, seed=3))
    assert (first > 0).all()
    still = avg_sensitivity(model, x, y, a, method, nr_samples=2, noise=torch.zeros(4, 2, 1, 28, 28))
    torch.testing.assert_close(still, torch.zeros(4), atol=1e-6, rtol=0)
    changed = avg_sensitivity(model, x, y, a, method, nr_samples=2, lower_bound=50.0, nan_on_prediction_change=True)
    assert torch.isnan(changed).any()
    with pytest.raises(ValueError, match="noise must have shape"):
        avg_sensitivity(model, x, y, a, method, nr_samples=2, noise=torch.zeros(4, 3, 1, 28, 28))


def test_random_logit_equals_quantus_on_its_off_classes(case):
    model, method, x, y, a = case
    metric = quantus.RandomLogit(num_classes=10, seed=42, abs=False, **SECOND_MOMENT)
    expected = np.array(
        metric(
            model=model,
            x_batch=np32(x),
            y_batch=y.numpy(),
            a_batch=np32(a),
            explain_func=explain_func(lambda xx, t: method.attribute(xx, target=t)),
        )
    )
    others = quantus_off_classes(y, 10, seed=42)
    assert (others != y).all()
    result = random_logit(x, y, a, method, num_classes=10, off_classes=others)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_ssim_1d_equals_scikit_image_and_off_classes_avoid_the_label():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 50, generator=generator), torch.randn(3, 50, generator=generator)
    b[0] = a[0] + 0.1 * b[0]
    ours = ssim_1d(a, b)
    for i in range(3):
        aa, bb = a[i].double().numpy(), b[i].double().numpy()
        span = float(max(aa.max(), bb.max()) - min(aa.min(), bb.min()))
        assert ours[i].item() == pytest.approx(structural_similarity(aa, bb, data_range=span), rel=1e-9, abs=1e-12)
    assert ssim_1d(a, b, data_range=2.0)[1].item() == pytest.approx(
        structural_similarity(a[1].double().numpy(), b[1].double().numpy(), data_range=2.0), rel=1e-9
    )
    y = torch.arange(10).repeat(5)
    drawn = off_classes(y, 10, seed=1)
    assert (drawn != y).all() and set(drawn.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="data_range must be 'span' or a positive number"):
        ssim_1d(a, b, data_range="auto")
