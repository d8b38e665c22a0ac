"""Every attribution method names a batch that does not fit its model (shape, channels, size, dtype, device)."""

from __future__ import annotations

import pytest
import torch

from attrlab.attribution import available_methods, make_method
from attrlab.attribution.checks import check_fits_model
from attrlab.models import build_model

SETTINGS = {
    "integrated_gradients": {"n_steps": 2},
    "smoothgrad": {"n_samples": 2},
    "rise": {"n_masks": 4},
    "occlusion": {"window": 14, "stride": 14},
}


@pytest.fixture(scope="module")
def model():
    return build_model("shallow", (1, 28, 28), 10, seed=0).eval()


@pytest.mark.parametrize("name", available_methods())
@pytest.mark.parametrize(
    "inputs, error, message",
    [
        (torch.zeros(2, 784), ValueError, r"\(N, C, H, W\)"),
        (torch.zeros(2, 3, 28, 28), ValueError, r"C = 1.*got shape \(2, 3, 28, 28\)"),
        (torch.zeros(2, 1, 32, 32), ValueError, r"shape \(2, 1, 32, 32\) do not fit the model"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.float64), TypeError, r"dtype torch.float64 but the model's parameters"),
        (torch.zeros(2, 1, 28, 28, dtype=torch.int64), TypeError, r"floating point"),
    ],
)
def test_every_method_names_a_batch_that_does_not_fit(model, name, inputs, error, message):
    settings = dict(SETTINGS.get(name, {}))
    if name.startswith("pattern_"):  # the pattern methods need signal patterns fitted on data that fits the model
        from attrlab.attribution.pattern import fit_patterns

        settings["patterns"] = fit_patterns(model, torch.rand(32, 1, 28, 28) * 2 - 1, progress=False)
    method = make_method(name, model, **settings)
    with pytest.raises(error, match=message):
        method.attribute(inputs, target=0)


def test_a_fitting_batch_passes_and_linear_models_are_checked_by_features():
    model = build_model("shallow", (1, 28, 28), 10, seed=0)
    check_fits_model(torch.zeros(3, 1, 28, 28), model)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    check_fits_model(torch.zeros(2, 3, 2, 2), mlp)
    with pytest.raises(ValueError, match=r"Linear\(12, ...\), so each input must hold 12 values; got shape \(2, 13\)"):
        check_fits_model(torch.zeros(2, 13), mlp)
