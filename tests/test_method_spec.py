"""MethodSpec: the one method-with-settings type of the tracker and the grid evaluation; building and bad input."""

from __future__ import annotations

import pytest
import torch

from attrlab.attribution import available_methods, make_method
from attrlab.attribution.spec import MethodSpec
from attrlab.models import build_model


@pytest.fixture(scope="module")
def model():
    return build_model("vgg_small", seed=0).eval()


def test_make_builds_the_registered_method_with_its_settings(model):
    spec = MethodSpec("IG", "integrated_gradients", {"n_steps": 7})
    method = spec.make(model)
    assert type(method) is type(make_method("integrated_gradients", model))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(
        method.attribute(x, target=1), make_method("integrated_gradients", model, n_steps=7).attribute(x, target=1)
    )


def test_layer_settings_override_the_settings_at_their_key_only(model):
    seen = []

    def factory(m, **settings):
        seen.append(settings)
        return make_method("occlusion", m, **settings)

    spec = MethodSpec("Occ", factory, {"window": 4, "stride": 4}, layer_settings={"final": {"stride": 1}})
    spec.make(model)
    spec.make(model, "middle")
    spec.make(model, "final")
    assert seen == [{"window": 4, "stride": 4}, {"window": 4, "stride": 4}, {"window": 4, "stride": 1}]
    assert spec.settings == {"window": 4, "stride": 4}  # the override did not leak into the spec


def test_fields_after_the_settings_are_named_only():
    with pytest.raises(TypeError):
        MethodSpec("Occ", "occlusion", {}, {"final": {"stride": 1}})


def test_normalised_fields_and_smoothed_labels():
    spec = MethodSpec("IxG", "input_x_gradient", smoothing=[1, 15], layer_keys=["input", "final"])
    assert spec.smoothing == (1, 15) and spec.layer_keys == ("input", "final")
    assert [spec.smoothed_label(k) for k in spec.smoothing] == ["IxG", "S-IxG"]
    assert MethodSpec("Grad-CAM++", "gradcam_pp").layer is None  # labels for plots may hold any character


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(label="", method="lrp"), ValueError, "a method label is a non-empty string, got ''"),
        (
            dict(label="x", method="lrpp"),
            ValueError,
            "unknown attribution method 'lrpp' for 'x'; valid names: "
            + ", ".join(available_methods(include_reproductions=True)),
        ),
        (dict(label="x", method=3), TypeError, "method of 'x' must be a registry name or a factory, got 3"),
        (dict(label="x", method="lrp", settings=[("composite", "seed000")]), TypeError, "settings of 'x' must map"),
        (dict(label="x", method="lrp", layer_settings={"final": 1}), TypeError, r"layer_settings\['final'\] of 'x'"),
        (dict(label="x", method="lrp", layer=2), TypeError, "layer of 'x' must be a layer name or None, got 2"),
        (dict(label="x", method="lrp", layer_keys="input"), ValueError, "layer_keys of 'x' must be a non-empty list"),
        (dict(label="x", method="lrp", smoothing=(1, 4)), ValueError, r"positive odd kernel sizes .* got \(1, 4\)"),
        (dict(label="x", method="lrp", smoothing=()), ValueError, "positive odd kernel sizes"),
        (
            dict(label="x", method="lrp", batch_size=0),
            ValueError,
            "batch_size of 'x' must be a positive integer or None",
        ),
    ],
)
def test_bad_specs_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        MethodSpec(**kwargs)


def test_tracker_and_grid_evaluation_share_the_type():
    import attrlab.grids
    import attrlab.track

    assert attrlab.grids.MethodSpec is MethodSpec and attrlab.track.MethodSpec is MethodSpec
    assert all(isinstance(spec, MethodSpec) for spec in attrlab.track.method_specs(["lrp", "gradcam"]))
