"""The localisation data set: digits at seeded random positions and scales on a larger canvas, with boxes and masks.

Each canvas (default 64 x 64, one channel) holds one to three digits of scikit-learn's bundled digits (the 28 x 28
images of :func:`attrlab.data.load_dataset`), each of a different class. The canvas is split into four quadrants
and every digit gets its own quadrant, in which its side (``scale``) and position are drawn uniformly, so digits never
overlap and each has a box and a pixel mask of its own. An optional smooth random texture lies behind the digits.
Slot 0 holds the digit the image is labelled with (``y``); the other slots are further digits of other classes, for
multi-label use (``targets``, a multi-hot (N, classes) tensor) or as distractors. Training canvases draw digits from the
training split, test canvases from the test split. Everything is drawn from one seeded ``torch.Generator`` and built
as whole tensors (one ``grid_sample`` call places all digits of a slot), so the same seed gives the same data set.

The splits are :class:`CanvasSplit` objects, a :class:`attrlab.data.Split` (``x``, ``y``) with the boxes and masks
added, so ``load_dataset("canvas")``, the trainer and the models use the data set unchanged.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import ImageDataset, Split, normalise

BACKGROUNDS = ("none", "texture")


@dataclass
class CanvasSplit(Split):
    """Canvases ``x`` (N, 1, S, S) in [-1, 1] with the class ``y`` (N,) of their slot-0 digit, and per digit slot:

    ``labels`` (N, K) the class (-1 for an empty slot), ``boxes`` (N, K, 4) as (top, left, bottom, right) with
    exclusive bottom/right (-1 for an empty slot), ``masks`` (N, K, S, S) the digit's pixels (ink above the
    threshold, inside its box).
    """

    labels: torch.Tensor = None  # type: ignore[assignment]
    boxes: torch.Tensor = None  # type: ignore[assignment]
    masks: torch.Tensor = None  # type: ignore[assignment]
    num_classes: int = 10

    def to(self, device: torch.device | str) -> CanvasSplit:
        return CanvasSplit(
            self.x.to(device),
            self.y.to(device),
            self.labels.to(device),
            self.boxes.to(device),
            self.masks.to(device),
            self.num_classes,
        )

    def subset(self, size: int, seed: int = 0) -> CanvasSplit:
        """A fixed, seeded random subset of ``size`` canvases (in increasing index order), boxes and masks kept."""
        if not 0 < size <= len(self):
            raise ValueError(f"subset size must be between 1 and {len(self)}, got {size}")
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self), generator=generator)[:size].sort().values.to(self.y.device)
        return self.select(index)

    def select(self, index: torch.Tensor | slice) -> CanvasSplit:
        """The canvases at ``index``."""
        return CanvasSplit(
            self.x[index], self.y[index], self.labels[index], self.boxes[index], self.masks[index], self.num_classes
        )

    @property
    def count(self) -> torch.Tensor:
        """(N,) digits per canvas."""
        return (self.labels >= 0).sum(1)

    @property
    def targets(self) -> torch.Tensor:
        """(N, classes) multi-hot float targets: 1 for every class on the canvas."""
        hot = torch.zeros(len(self), self.num_classes + 1, device=self.y.device)
        hot.scatter_(1, torch.where(self.labels >= 0, self.labels, self.num_classes), 1.0)
        return hot[:, : self.num_classes]

    @property
    def box_masks(self) -> torch.Tensor:
        """(N, K, S, S) boolean masks of the digits' boxes (all False for an empty slot)."""
        size = self.x.shape[-1]
        r = torch.arange(size, device=self.x.device)
        top, left, bottom, right = self.boxes.unbind(-1)
        rows = (r >= top[..., None]) & (r < bottom[..., None])
        cols = (r >= left[..., None]) & (r < right[..., None])
        return rows[..., :, None] & cols[..., None, :]

    def class_masks(self, classes: torch.Tensor, kind: str = "pixels") -> torch.Tensor:
        """(N, S, S) the mask of the digit of ``classes`` (N,) on each canvas (empty where that class is absent).

        ``kind`` is ``"pixels"`` (the digit's ink) or ``"box"`` (its box); the localisation metrics take either.
        """
        if kind not in ("pixels", "box"):
            raise ValueError(f"unknown mask kind {kind!r}; valid choices: pixels, box")
        masks = self.masks if kind == "pixels" else self.box_masks
        match = self.labels == classes.to(self.labels.device)[:, None]
        return (masks & match[..., None, None]).any(1)


def _smooth_texture(n: int, size: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    """(n, 1, size, size) smooth random texture in [0, strength]: coarse noise upsampled bicubically, plus grain."""
    coarse = torch.rand((n, 1, 8, 8), generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    grain = torch.rand((n, 1, size, size), generator=generator)
    return (0.8 * smooth + 0.2 * grain).clamp(0.0, 1.0) * strength


def make_canvases(
    images: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    size: int = 64,
    digits: tuple[int, int] = (1, 3),
    scale: tuple[int, int] = (16, 32),
    background: str = "none",
    texture_strength: float = 0.35,
    mask_threshold: float = 0.25,
    num_classes: int = 10,
    seed: int = 0,
) -> CanvasSplit:
    """``count`` canvases built from ``images`` (M, 1, h, w) in [-1, 1] with ``labels`` (M,).

    Parameters
    ----------
    images : torch.Tensor
        Source digits, normalised to [-1, 1] (as :func:`attrlab.data.load_dataset` holds them).
    labels : torch.Tensor
        (M,) their classes; every class in ``range(num_classes)`` must occur.
    count : int
        Number of canvases.
    size : int
        Canvas side in pixels (even, at least 16).
    digits : tuple of int
        Smallest and largest number of digits per canvas (1 to 4, one quadrant each); (1, 1) is single-label.
    scale : tuple of int
        Smallest and largest digit side in pixels (at most ``size // 2``).
    background : str
        ``"none"`` (black) or ``"texture"`` (a smooth seeded texture behind the digits).
    texture_strength : float
        Brightest texture value on the [0, 1] scale (digits are up to 1).
    mask_threshold : float
        Ink level on the [0, 1] scale above which a digit's pixel is in its mask.
    num_classes : int
        Number of classes.
    seed : int
        Seed of every draw.

    Returns
    -------
    CanvasSplit
        The canvases with labels, boxes and masks, on the device of ``images``.
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; valid choices: {', '.join(BACKGROUNDS)}")
    if not isinstance(size, int) or size < 16 or size % 2:
        raise ValueError(f"size must be an even integer >= 16, got {size!r}")
    low, high = digits
    if not 1 <= low <= high <= min(4, num_classes):
        raise ValueError(f"digits must be (low, high) with 1 <= low <= high <= 4, got {digits!r}")
    smallest, largest = scale
    if not 4 <= smallest <= largest <= size // 2:
        raise ValueError(f"scale must be (low, high) with 4 <= low <= high <= {size // 2}, got {scale!r}")
    if not isinstance(count, int) or count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    device = images.device
    per_class = torch.bincount(labels.cpu(), minlength=num_classes)
    if bool((per_class == 0).any()):
        raise ValueError(
            f"every class needs a source image; missing: {torch.nonzero(per_class == 0).flatten().tolist()}"
        )
    generator = torch.Generator().manual_seed(seed)
    slots = high
    n_digits = torch.randint(low, high + 1, (count,), generator=generator)
    classes = torch.rand((count, num_classes), generator=generator).argsort(1)[:, :slots]
    order = torch.argsort(labels.cpu(), stable=True)
    offsets = torch.cumsum(per_class, 0) - per_class
    pick = (torch.rand((count, slots), generator=generator) * per_class[classes]).long()
    source = order[offsets[classes] + pick]
    quadrant = torch.rand((count, 4), generator=generator).argsort(1)[:, :slots]
    side = torch.randint(smallest, largest + 1, (count, slots), generator=generator)
    half = size // 2
    room = half - side
    top = (quadrant // 2) * half + (torch.rand((count, slots), generator=generator) * (room + 1)).long()
    left = (quadrant % 2) * half + (torch.rand((count, slots), generator=generator) * (room + 1)).long()
    present = torch.arange(slots)[None] < n_digits[:, None]
    texture = _smooth_texture(count, size, generator, texture_strength) if background == "texture" else None

    ink = (images[source.reshape(-1).to(device)] + 1.0) / 2.0  # back to [0, 1]; (count * slots, 1, h, w)
    # an affine grid per digit maps canvas coordinates onto its box: outside the box it samples zeros
    t, l_, s = (v.reshape(-1).to(device=device, dtype=torch.float32) for v in (top, left, side))
    theta = torch.zeros(count * slots, 2, 3, device=device)
    theta[:, 0, 0] = size / s
    theta[:, 1, 1] = size / s
    theta[:, 0, 2] = (size - 2 * l_ - s) / s
    theta[:, 1, 2] = (size - 2 * t - s) / s
    grid = F.affine_grid(theta, [count * slots, 1, size, size], align_corners=False)
    placed = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    boxes = torch.stack([top, left, top + side, left + side], -1)
    boxes = torch.where(present[..., None], boxes, torch.full_like(boxes, -1)).to(device)
    slot_labels = torch.where(present, classes, torch.full_like(classes, -1)).to(device)
    split = CanvasSplit(torch.zeros(0), slot_labels[:, 0].clone(), slot_labels, boxes, torch.zeros(0), num_classes)
    split.x = torch.zeros(count, 1, size, size, device=device)  # box_masks reads the canvas size from x
    inside = split.box_masks
    # bilinear sampling bleeds half a pixel past the box edge; the ink is cut to the box so the box holds all of it
    placed = placed.reshape(count, slots, size, size) * inside
    canvas = placed.amax(1, keepdim=True)
    if texture is not None:
        canvas = torch.maximum(canvas, texture.to(device))
    split.x = normalise(canvas.clamp(0.0, 1.0)).contiguous()
    split.masks = placed > mask_threshold
    return split


def canvas_dataset(
    size: int = 64,
    digits: tuple[int, int] = (1, 3),
    scale: tuple[int, int] = (16, 32),
    background: str = "none",
    train_count: int = 3000,
    test_count: int = 600,
    seed: int = 0,
) -> ImageDataset:
    """The canvas data set built from the digits' train and test splits (``load_dataset("canvas")`` uses the defaults).

    Parameters
    ----------
    size, digits, scale, background
        As in :func:`make_canvases`.
    train_count, test_count : int
        Canvases per split.
    seed : int
        Seed of the training canvases; the test canvases use ``seed + 1``.

    Returns
    -------
    ImageDataset
        Named "canvas", with :class:`CanvasSplit` splits on the CPU.
    """
    from .data import load_dataset

    source = load_dataset("digits", device="cpu")
    settings: dict[str, Any] = dict(size=size, digits=digits, scale=scale, background=background)
    train = make_canvases(source.train.x, source.train.y, train_count, seed=seed, **settings)
    test = make_canvases(source.test.x, source.test.y, test_count, seed=seed + 1, **settings)
    return ImageDataset("canvas", train, test, list(source.classes))


# ----------------------------------------------------------------------------- coarse and partial annotations
def dilate_boxes(split: CanvasSplit, percent: float) -> CanvasSplit:
    """The split with every box grown by ``percent`` % of its side (half on each side), clipped to the canvas.

    The coarse annotations of thesis Fig. 7.11 (10, 25, 50 %). Images, labels and pixel masks are kept; only
    ``boxes`` (and so ``box_masks``) change.

    Parameters
    ----------
    split : CanvasSplit
        The canvases.
    percent : float
        Growth of each box side in percent (>= 0).

    Returns
    -------
    CanvasSplit
        A new split sharing ``x``, ``y``, ``labels`` and ``masks`` with ``split``.
    """
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not percent >= 0:
        raise ValueError(f"percent must be a number >= 0, got {percent!r}")
    top, left, bottom, right = split.boxes.unbind(-1)
    grow_rows = torch.round((bottom - top).float() * percent / 200.0).long()
    grow_cols = torch.round((right - left).float() * percent / 200.0).long()
    size = split.x.shape[-1]
    grown = torch.stack(
        [
            (top - grow_rows).clamp(min=0),
            (left - grow_cols).clamp(min=0),
            (bottom + grow_rows).clamp(max=size),
            (right + grow_cols).clamp(max=size),
        ],
        -1,
    )
    boxes = torch.where(split.labels[..., None] >= 0, grown, split.boxes)  # empty slots stay -1
    dilated = copy.copy(split)
    dilated.boxes = boxes
    return dilated


def annotated_subset(count: int, fraction: float, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(count,) booleans: which images carry box annotations when only ``fraction`` of them are annotated.

    Thesis R7 annotates 1 % or 10 % of the training images; at least one image is always annotated.

    Parameters
    ----------
    count : int
        Images in the split.
    fraction : float
        In (0, 1].
    seed : int
        Seeds which images.
    device : torch.device or str
        Where the result lives.

    Returns
    -------
    torch.Tensor
        A boolean (count,) tensor with ``max(1, round(fraction * count))`` True entries.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[: max(1, round(fraction * count))]
    annotated = torch.zeros(count, dtype=torch.bool)
    annotated[chosen] = True
    return annotated.to(device)


# ----------------------------------------------------------------------------- the spurious-correlation set
#: the two digit groups of the spurious set (the "landbirds" and "waterbirds" of Waterbirds): class 0 and class 1
SPURIOUS_GROUPS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))
#: background textures of the spurious set: 0 horizontal stripes ("land"), 1 vertical stripes ("water")
SPURIOUS_BACKGROUNDS = ("horizontal", "vertical")


@dataclass
class SpuriousSplit(CanvasSplit):
    """A :class:`CanvasSplit` of the spurious set: ``y`` is the digit group (0: digits 0-4, 1: 5-9), ``background``
    (N,) the texture (0 horizontal, 1 vertical stripes) and ``digits`` (N,) the digit class.

    ``group`` numbers the four (class, background) groups as Waterbirds does: G1 = (0, 0), G2 = (0, 1),
    G3 = (1, 0), G4 = (1, 1), as 0..3; the training split holds only G1 and G4.
    """

    background: torch.Tensor = None  # type: ignore[assignment]
    digits: torch.Tensor = None  # type: ignore[assignment]

    def to(self, device: torch.device | str) -> SpuriousSplit:
        return self._with(slice(None), device)

    def select(self, index: torch.Tensor | slice) -> SpuriousSplit:
        return self._with(index, None)

    def _with(self, index: torch.Tensor | slice, device: torch.device | str | None) -> SpuriousSplit:
        def take(value: torch.Tensor) -> torch.Tensor:
            value = value[index]
            return value if device is None else value.to(device)

        return SpuriousSplit(
            take(self.x),
            take(self.y),
            take(self.labels),
            take(self.boxes),
            take(self.masks),
            self.num_classes,
            take(self.background),
            take(self.digits),
        )

    @property
    def group(self) -> torch.Tensor:
        """(N,) the group index 0..3 (G1..G4): ``2 * y + background``."""
        return 2 * self.y + self.background


def _stripes(background: torch.Tensor, size: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    """(n, 1, size, size) stripes in [0, strength]: horizontal where ``background`` is 0, vertical where 1."""
    n = len(background)
    period = 4.0 + 3.0 * torch.rand((n, 1, 1), generator=generator)
    phase = 2 * math.pi * torch.rand((n, 1, 1), generator=generator)
    r = torch.arange(size, dtype=torch.float32)
    rows = (0.5 + 0.5 * torch.sin(2 * math.pi * r[None, :, None] / period + phase)).expand(n, size, size)
    cols = rows.transpose(1, 2)
    texture = torch.where(background.bool()[:, None, None], cols, rows)
    return (texture * strength)[:, None]


def make_spurious(
    images: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    correlated: bool,
    size: int = 32,
    scale: tuple[int, int] = (12, 16),
    strength: float = 0.5,
    seed: int = 0,
) -> SpuriousSplit:
    """``count`` canvases of one digit on a striped background, in the style of Waterbirds (Sagawa et al. 2020).

    The label is the digit's group (:data:`SPURIOUS_GROUPS`). With ``correlated`` (the training split) the background
    always equals the label (groups G1 and G4 only), so the stripes alone predict it; otherwise (the test split) the
    background is drawn independently, half and half, and a model that reads the stripes fails on G2 and G3.

    Parameters
    ----------
    images, labels : torch.Tensor
        Source digits in [-1, 1] and their classes (0-9).
    count : int
        Canvases.
    correlated : bool
        Background = label (training) or independent of it (test).
    size : int
        Canvas side (even, >= 16).
    scale : tuple of int
        Smallest and largest digit side (at most ``size // 2``: each digit lies in one quadrant).
    strength : float
        Brightest stripe value on the [0, 1] scale.
    seed : int
        Seed of every draw.

    Returns
    -------
    SpuriousSplit
        Two classes; one box and pixel mask per canvas (the digit).
    """
    if not isinstance(correlated, bool):
        raise ValueError(f"correlated must be True or False, got {correlated!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    base = make_canvases(images, labels, count, size=size, digits=(1, 1), scale=scale, seed=seed)
    generator = torch.Generator().manual_seed(seed + 7919)
    digit = base.y.cpu()
    group = (digit >= len(SPURIOUS_GROUPS[0])).long()
    background = group.clone() if correlated else (torch.rand(count, generator=generator) < 0.5).long()
    ink = (base.x + 1.0) / 2.0
    texture = _stripes(background, size, generator, strength).to(ink.device)
    x = normalise(torch.maximum(ink, texture)).contiguous()
    device = base.x.device
    return SpuriousSplit(
        x,
        group.to(device),
        group.to(device)[:, None],
        base.boxes,
        base.masks,
        len(SPURIOUS_GROUPS),
        background.to(device),
        digit.to(device),
    )


def spurious_dataset(
    size: int = 32, train_count: int = 2000, test_count: int = 1000, strength: float = 0.5, seed: int = 0
) -> ImageDataset:
    """The spurious-correlation data set: training canvases with background = label, test canvases without.

    Parameters
    ----------
    size : int
        Canvas side.
    train_count, test_count : int
        Canvases per split.
    strength : float
        Stripe brightness (see :func:`make_spurious`).
    seed : int
        Seed of the training canvases; the test canvases use ``seed + 1``.

    Returns
    -------
    ImageDataset
        Named "spurious", classes "digits 0-4" and "digits 5-9", :class:`SpuriousSplit` splits on the CPU.
    """
    from .data import load_dataset

    source = load_dataset("digits", device="cpu")
    scale = (size * 3 // 8, size // 2)
    train = make_spurious(source.train.x, source.train.y, train_count, True, size, scale, strength, seed)
    test = make_spurious(source.test.x, source.test.y, test_count, False, size, scale, strength, seed + 1)
    return ImageDataset("spurious", train, test, ["digits 0-4", "digits 5-9"])


def group_accuracy(predictions: torch.Tensor, split: SpuriousSplit) -> dict[str, float]:
    """Accuracy per group (G1..G4), the worst group's and the overall accuracy (thesis Table 7.1).

    Parameters
    ----------
    predictions : torch.Tensor
        (N,) predicted classes of ``split``'s images.
    split : SpuriousSplit
        The canvases.

    Returns
    -------
    dict
        ``{"G1": ..., "G2": ..., "G3": ..., "G4": ..., "worst": ..., "overall": ...}`` in percent; a group
        without images is NaN and left out of ``worst``.
    """
    if predictions.shape != split.y.shape:
        raise ValueError(f"predictions must have shape {tuple(split.y.shape)}, got {tuple(predictions.shape)}")
    correct = (predictions.to(split.y.device) == split.y).float()
    group = split.group
    counts = torch.zeros(4, device=correct.device).index_add(0, group, torch.ones_like(correct))
    hits = torch.zeros(4, device=correct.device).index_add(0, group, correct)
    per_group = (100 * hits / counts).tolist()
    result = {f"G{g + 1}": value for g, value in enumerate(per_group)}
    present = [value for value, n in zip(per_group, counts.tolist()) if n > 0]
    result["worst"] = min(present)
    result["overall"] = 100 * float(correct.mean())
    return result
