"""Attribution explorers: scrub through the training steps, methods, layers and images of stored attribution maps.

The input is a plain in-memory structure, :class:`AttributionHistory`, built with :meth:`AttributionHistory.from_maps`:

- ``maps``: a dict from a method name (``"lrp"``) or a ``(method, layer)`` pair (``("gradcam", "conv2")``) to an
  array of shape ``(steps, images, H, W)``: the map of every image at every recorded step (numpy or torch; channels
  already reduced). Different layers may have different ``H, W``.
- ``steps``: the optimiser step of each entry of the first axis.
- ``inputs`` (optional): the images, ``(images, H, W)`` or ``(images, C, H, W)``, shown beside the maps.
- ``labels`` (optional): a caption per image.

In JupyterLab, :func:`explore` returns ipywidgets controls (step slider with a play button, method, layer, image,
colour scale). A static book has no kernel behind its widgets, so it shows :func:`animation_html` (a matplotlib
``to_jshtml`` animation that plays offline) or the small multiples of :func:`plot_attribution_grid` instead.

Colours: red is positive, blue negative attribution, white zero. With ``scale="shared"`` one symmetric colour range
per method, layer and image spans all steps, so growing or shrinking magnitudes over training stay visible;
``scale="step"`` rescales every map on its own, to compare shapes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib import animation
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .plots.style import book_figure

SCALES = ("shared", "step")
#: the layer name used for maps given under a plain method name
INPUT_LAYER = "input"
_CMAP = "bwr"


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor, on any device
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


@dataclass(frozen=True)
class AttributionHistory:
    """Attribution maps over training: ``maps[(method, layer)]`` is ``(steps, images, H, W)``; see the module doc."""

    maps: dict[tuple[str, str], np.ndarray]
    steps: np.ndarray
    inputs: np.ndarray | None = None
    labels: tuple[str, ...] | None = None

    @classmethod
    def from_maps(
        cls,
        maps: Mapping[str | tuple[str, str], Any],
        steps: Sequence[int] | np.ndarray,
        inputs: Any | None = None,
        labels: Sequence[str] | None = None,
    ) -> AttributionHistory:
        """Check and normalise the plain structure described in the module docstring."""
        steps = np.asarray(steps).astype(int).reshape(-1)
        if not maps:
            raise ValueError("maps is empty: pass a dict method -> array (steps, images, H, W)")
        normalised: dict[tuple[str, str], np.ndarray] = {}
        images = None
        for key, array in maps.items():
            method, layer = (key, INPUT_LAYER) if isinstance(key, str) else tuple(key)
            values = _to_numpy(array)
            if values.ndim != 4:
                raise ValueError(
                    f"maps[{key!r}] has shape {values.shape}; expected (steps, images, H, W) = 4 axes "
                    "(reduce colour channels first)"
                )
            if values.shape[0] != len(steps):
                raise ValueError(f"maps[{key!r}] has {values.shape[0]} steps but {len(steps)} step numbers were given")
            if images is not None and values.shape[1] != images:
                raise ValueError(f"maps[{key!r}] has {values.shape[1]} images, the other maps {images}")
            images = values.shape[1]
            normalised[(str(method), str(layer))] = values
        if inputs is not None:
            inputs = _to_numpy(inputs)
            if inputs.ndim == 4:
                inputs = inputs.mean(axis=1) if inputs.shape[1] != 3 else inputs.transpose(0, 2, 3, 1)
            if inputs.ndim not in (3, 4) or inputs.shape[0] != images:
                raise ValueError(f"inputs has shape {inputs.shape}; expected ({images}, H, W) or ({images}, C, H, W)")
            low, high = inputs.min(), inputs.max()
            inputs = (inputs - low) / (high - low) if high > low else np.zeros_like(inputs)
        if labels is not None and len(labels) != images:
            raise ValueError(f"got {len(labels)} labels for {images} images")
        return cls(normalised, steps, inputs, tuple(labels) if labels is not None else None)

    @property
    def num_images(self) -> int:
        return next(iter(self.maps.values())).shape[1]

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(method for method, _ in self.maps))

    def layers(self, method: str) -> list[str]:
        found = [layer for m, layer in self.maps if m == method]
        if not found:
            raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(self.methods)}")
        return found

    def key(self, method: str, layer: str | None = None) -> tuple[str, str]:
        """The ``(method, layer)`` key, the first layer of ``method`` when ``layer`` is None."""
        layers = self.layers(method)
        layer = layers[0] if layer is None else layer
        if layer not in layers:
            raise ValueError(f"method {method!r} has no maps of layer {layer!r}; its layers: {', '.join(layers)}")
        return (method, layer)

    def limit(self, key: tuple[str, str], image: int, step_index: int | None, scale: str = "shared") -> float:
        """Half-width of the symmetric colour range: over all steps (``shared``) or of one step (``step``)."""
        if scale not in SCALES:
            raise ValueError(f"unknown scale {scale!r}; valid choices: {', '.join(SCALES)}")
        maps = self.maps[key][:, image]
        limit = float(np.abs(maps if scale == "shared" or step_index is None else maps[step_index]).max())
        return limit if limit > 0 else 1.0

    def step_index(self, step: int) -> int:
        where = np.flatnonzero(self.steps == step)
        if len(where) == 0:
            raise ValueError(f"no maps recorded at step {step}; recorded steps run {self.steps[0]}..{self.steps[-1]}")
        return int(where[0])


def _label(history: AttributionHistory, image: int) -> str:
    return history.labels[image] if history.labels is not None else f"image {image}"


def _show_input(ax, history: AttributionHistory, image: int) -> None:
    assert history.inputs is not None  # every caller checks it first
    ax.imshow(history.inputs[image], cmap="gray", vmin=0, vmax=1)
    ax.set_title(_label(history, image), fontsize="small")


def _clean(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _keys(history: AttributionHistory, keys: Sequence[tuple[str, str] | str] | None) -> list[tuple[str, str]]:
    if keys is None:
        return list(history.maps)
    return [history.key(k) if isinstance(k, str) else history.key(*k) for k in keys]


def _row_name(key: tuple[str, str]) -> str:
    method, layer = key
    return method if layer == INPUT_LAYER else f"{method}\n@{layer}"


@book_figure
def plot_attribution_grid(
    history: AttributionHistory,
    image: int = 0,
    steps: Sequence[int] | None = None,
    keys: Sequence[tuple[str, str] | str] | None = None,
    scale: str = "shared",
    max_steps: int = 6,
) -> Figure:
    """Small multiples of one image's maps: a row per method (and layer), a column per step (the input first).

    ``steps`` defaults to ``max_steps`` recorded steps spread evenly from the first to the last.
    """
    if not 0 <= image < history.num_images:
        raise ValueError(f"image must be between 0 and {history.num_images - 1}, got {image}")
    if steps is None:
        count = min(max_steps, len(history.steps))
        indices = np.unique(np.linspace(0, len(history.steps) - 1, count).round().astype(int)).tolist()
    else:
        indices = [history.step_index(step) for step in steps]
    rows = _keys(history, keys)
    offset = 1 if history.inputs is not None else 0
    figure = Figure(figsize=(1.6 * (len(indices) + offset) + 0.6, 1.6 * len(rows) + 0.4), layout="constrained")
    axes = figure.subplots(len(rows), len(indices) + offset, squeeze=False)
    for row, key in enumerate(rows):
        if offset:
            _show_input(axes[row, 0], history, image)
        for column, index in enumerate(indices):
            ax = axes[row, column + offset]
            limit = history.limit(key, image, index, scale)
            ax.imshow(history.maps[key][index, image], cmap=_CMAP, vmin=-limit, vmax=limit)
            if row == 0:
                ax.set_title(f"step {history.steps[index]}", fontsize="small")
        axes[row, offset].set_ylabel(_row_name(key), fontsize="small")
    for ax in axes.flat:
        _clean(ax)
    return figure


def attribution_animation(
    history: AttributionHistory,
    images: Sequence[int] = (0, 1, 2, 3),
    keys: Sequence[tuple[str, str] | str] | None = None,
    scale: str = "shared",
    interval: int = 200,
) -> animation.FuncAnimation:
    """An animation over the recorded steps: a row per method (and layer), a column per image."""
    images = [i for i in images if 0 <= i < history.num_images] or [0]
    rows = _keys(history, keys)
    offset = 1 if history.inputs is not None else 0
    figure = Figure(figsize=(1.6 * len(images) + 0.6, 1.6 * (len(rows) + offset) + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(rows) + offset, len(images), squeeze=False)
    artists = {}
    for column, image in enumerate(images):
        if offset:
            _show_input(axes[0, column], history, image)
        for row, key in enumerate(rows):
            limit = history.limit(key, image, 0, scale)
            artists[row, column] = axes[row + offset, column].imshow(
                history.maps[key][0, image], cmap=_CMAP, vmin=-limit, vmax=limit
            )
            if column == 0:
                axes[row + offset, 0].set_ylabel(_row_name(key), fontsize="small")
    for ax in axes.flat:
        _clean(ax)
    title = figure.suptitle(f"step {history.steps[0]}")

    def update(index: int):
        for (row, column), artist in artists.items():
            key, image = rows[row], images[column]
            artist.set_data(history.maps[key][index, image])
            if scale == "step":
                limit = history.limit(key, image, index, scale)
                artist.set_clim(-limit, limit)
        title.set_text(f"step {history.steps[index]}")
        return [*artists.values(), title]

    return animation.FuncAnimation(figure, update, frames=len(history.steps), interval=interval, blit=False)


def animation_html(history: AttributionHistory, **options: Any) -> str:
    """The animation of :func:`attribution_animation` as self-contained HTML/JavaScript (plays offline)."""
    html = attribution_animation(history, **options).to_jshtml(default_mode="once")
    # matplotlib links Font Awesome from a CDN for the button icons; the book theme ships Font Awesome itself, and
    # an offline page should not wait for the network
    return re.sub(r'<link rel="stylesheet"\s+href="https://[^"]*font-awesome[^"]*">', "", html)


def _render(history: AttributionHistory, key: tuple[str, str], image: int, index: int, scale: str) -> bytes:
    """PNG of the explorer's view: input, the map at the step, the map's L2 norm over all steps."""
    columns = 3 if history.inputs is not None else 2
    figure = Figure(figsize=(3.0 * columns, 3.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, columns)
    if history.inputs is not None:
        _show_input(axes[0], history, image)
        _clean(axes[0])
    ax = axes[-2]
    limit = history.limit(key, image, index, scale)
    shown = ax.imshow(history.maps[key][index, image], cmap=_CMAP, vmin=-limit, vmax=limit)
    figure.colorbar(shown, ax=ax, shrink=0.8)
    ax.set_title(f"{_row_name(key).replace(chr(10), ' ')}, step {history.steps[index]}", fontsize="small")
    _clean(ax)
    norms = np.linalg.norm(history.maps[key][:, image].reshape(len(history.steps), -1), axis=1)
    axes[-1].plot(history.steps, norms, color="tab:red")
    axes[-1].axvline(history.steps[index], color="0.3", linestyle="--")
    axes[-1].set_xlabel("step")
    axes[-1].set_title("L2 norm of the map", fontsize="small")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def explore(history: AttributionHistory, scale: str = "shared") -> Any:
    """An ipywidgets explorer (for JupyterLab): step slider with play button, method, layer, image and colour scale."""
    import ipywidgets as widgets

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices: {', '.join(SCALES)}")
    step = widgets.SelectionSlider(
        options=[int(s) for s in history.steps],
        description="step",
        continuous_update=False,
        layout=widgets.Layout(width="60%"),
    )
    play = widgets.Play(min=0, max=len(history.steps) - 1, interval=300, description="play")
    method = widgets.Dropdown(options=history.methods, description="method")
    layer = widgets.Dropdown(options=history.layers(history.methods[0]), description="layer")
    image = widgets.Dropdown(options=[(_label(history, i), i) for i in range(history.num_images)], description="image")
    colour = widgets.ToggleButtons(options=list(SCALES), value=scale, description="scale")
    view = widgets.Image(format="png")

    def sync_step_from_play(change: dict) -> None:
        step.index = change["new"]

    def sync_layers(change: dict) -> None:
        layer.options = history.layers(change["new"])

    def redraw(_change: dict | None = None) -> None:
        key = history.key(method.value, layer.value if layer.value in history.layers(method.value) else None)
        view.value = _render(history, key, image.value, step.index, colour.value)

    play.observe(sync_step_from_play, names="value")
    method.observe(sync_layers, names="value")
    for control in (step, method, layer, image, colour):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox(
        [widgets.HBox([play, step]), widgets.HBox([method, layer, image]), colour, view],
    )
