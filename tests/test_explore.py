"""Attribution explorers: input checks, small multiples, the offline animation and the ipywidgets explorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrlab.explore import (
    AttributionHistory,
    animation_html,
    attribution_animation,
    explore,
    plot_attribution_grid,
)

STEPS = [0, 5, 10, 15, 20]


@pytest.fixture
def history() -> AttributionHistory:
    rng = np.random.default_rng(0)
    growth = np.linspace(0.1, 1.0, len(STEPS))[:, None, None, None]  # magnitudes grow over training
    return AttributionHistory.from_maps(
        {
            "lrp": growth * rng.normal(size=(5, 3, 28, 28)),
            ("gradcam", "conv2"): torch.from_numpy(rng.normal(size=(5, 3, 7, 7))),
            ("gradcam", "conv1"): rng.normal(size=(5, 3, 14, 14)),
        },
        steps=STEPS,
        inputs=torch.rand(3, 1, 28, 28),
        labels=["zero", "one", "two"],
    )


def test_plain_structure_is_normalised(history):
    assert history.methods == ["lrp", "gradcam"]
    assert history.layers("gradcam") == ["conv2", "conv1"] and history.layers("lrp") == ["input"]
    assert history.maps[("gradcam", "conv2")].dtype == np.float32 and history.num_images == 3
    assert history.inputs.shape == (3, 28, 28) and 0 <= history.inputs.min() and history.inputs.max() <= 1


@pytest.mark.parametrize(
    ("maps", "steps", "message"),
    [
        ({"lrp": np.zeros((5, 28, 28))}, STEPS, r"expected \(steps, images, H, W\)"),
        ({"lrp": np.zeros((4, 2, 28, 28))}, STEPS, "4 steps but 5 step numbers"),
        ({"a": np.zeros((5, 2, 8, 8)), "b": np.zeros((5, 3, 8, 8))}, STEPS, "3 images, the other maps 2"),
        ({}, STEPS, "maps is empty"),
    ],
)
def test_bad_structures_are_named(maps, steps, message):
    with pytest.raises(ValueError, match=message):
        AttributionHistory.from_maps(maps, steps)


def test_unknown_names_list_the_valid_ones(history):
    with pytest.raises(ValueError, match="valid methods: lrp, gradcam"):
        history.layers("ig")
    with pytest.raises(ValueError, match="its layers: conv2, conv1"):
        history.key("gradcam", "fc1")
    with pytest.raises(ValueError, match="recorded steps run 0..20"):
        history.step_index(7)
    with pytest.raises(ValueError, match="valid choices: shared, step"):
        history.limit(("lrp", "input"), 0, 0, scale="global")


def test_shared_scale_spans_all_steps_and_step_scale_one(history):
    key = ("lrp", "input")
    maps = history.maps[key][:, 1]
    assert history.limit(key, 1, 0, "shared") == pytest.approx(np.abs(maps).max())
    assert history.limit(key, 1, 0, "step") == pytest.approx(np.abs(maps[0]).max())
    assert history.limit(key, 1, 0, "step") < history.limit(key, 1, 0, "shared")


def test_grid_shows_the_maps_of_the_chosen_steps(history):
    figure = plot_attribution_grid(history, image=2, steps=[5, 20], keys=["lrp", ("gradcam", "conv1")])
    axes = np.array(figure.axes).reshape(2, 3)  # input + two steps per row
    np.testing.assert_array_equal(axes[0, 1].images[0].get_array(), history.maps[("lrp", "input")][1, 2])
    np.testing.assert_array_equal(axes[1, 2].images[0].get_array(), history.maps[("gradcam", "conv1")][4, 2])
    np.testing.assert_array_equal(axes[1, 0].images[0].get_array(), history.inputs[2])
    assert axes[0, 2].get_title() == "step 20"
    limit = history.limit(("lrp", "input"), 2, None)
    assert axes[0, 1].images[0].get_clim() == pytest.approx((-limit, limit))
    default = plot_attribution_grid(history, max_steps=3)
    assert [ax.get_title() for ax in default.axes[1:4]] == ["step 0", "step 10", "step 20"]


def test_animation_has_a_frame_per_step_and_plays_offline(history):
    anim = attribution_animation(history, images=(0, 2), keys=["lrp"])
    assert anim.to_jshtml().count("data:image/png;base64") == len(STEPS)
    anim._func(3)  # the frame of step 15
    assert anim._fig.texts[0].get_text() == "step 15"
    np.testing.assert_array_equal(anim._fig.axes[2].images[0].get_array(), history.maps[("lrp", "input")][3, 0])
    html = animation_html(history, images=(0,))
    assert html.count("data:image/png;base64") == len(STEPS)
    assert "<script" in html and "https://" not in html  # no CDN: plays in an offline page


def test_widget_explorer_redraws_on_every_control(history):
    box = explore(history)
    play, step = box.children[0].children
    method, layer, image = box.children[1].children
    scale, view = box.children[2:]
    assert view.format == "png" and bytes(view.value).startswith(b"\x89PNG")
    assert list(step.options) == STEPS and list(method.options) == ["lrp", "gradcam"]
    seen = {bytes(view.value)}
    play.value = 3
    assert step.value == 15 and bytes(view.value) not in seen
    seen.add(bytes(view.value))
    method.value = "gradcam"
    assert list(layer.options) == ["conv2", "conv1"] and bytes(view.value) not in seen
    seen.add(bytes(view.value))
    layer.value = "conv1"
    assert bytes(view.value) not in seen
    seen.add(bytes(view.value))
    image.value = 2
    assert bytes(view.value) not in seen
    seen.add(bytes(view.value))
    scale.value = "step"
    assert bytes(view.value) not in seen
