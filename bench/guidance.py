"""Benchmark of model guidance: a guided training step as a multiple of a plain one, measured side by side.

    python bench/guidance.py                  # 10 repeats
    python bench/guidance.py --quick          # 3 repeats
    python bench/guidance.py --device cuda    # default: CUDA when present; --batch to choose the batch

Rows (batch of 64 digits, 512 on a GPU, repeated where the split is smaller; 1x28x28, Adam, the box the central
14x14 pixels):

* ``IxG @ input``: the conventional CNN ``bcos_relu_twin``, cross-entropy plus ``lambda * Energy`` on Input x
  Gradient at the input (explanation with ``create_graph``, the loss back-propagated through it), against the same
  model's plain cross-entropy step;
* ``B-cos @ input`` and ``B-cos @ conv4``: the B-cos net ``bcos``, binary cross-entropy plus ``lambda * Energy`` on
  its twice-differentiable contributions at the input or at the middle layer, against its plain step;
* ``..., 2nd forward``: the input rows with the data loss on a second forward pass of the model instead of the
  logits of the map's own pass (:func:`~attrlab.attribution.differentiable.explain_with_logits`): the cost of not
  sharing it;
* ``B-cos: input / conv4``: the guided step at the input as a multiple of the one at the middle layer (the thesis'
  R9 speed-up of guidance at deeper layers, 1.7x at Mid2 for its ResNet-50).

The two sides alternate within every repeat, so load from other processes hits both alike; each ratio is the median
of the per-repeat ratios. Target (issue 16): guided step <= 3x a plain step.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

# bench/timing.py (the script's folder is on sys.path)
from timing import (
    add_device_argument,
    add_malloc_argument,
    device_and_batch,
    host_memory,
    paired,
)

from attrlab.attribution.differentiable import explain_for_training, explain_with_logits
from attrlab.data import load_dataset
from attrlab.device import device_name
from attrlab.guidance.losses import localisation_loss
from attrlab.models import build_model
from attrlab.objectives import bce_loss

TARGET = 3.0


def step_function(
    model_name: str,
    method: str | None,
    layer: str = "input",
    shared: bool = True,
    device: str | torch.device = "cpu",
    batch: int = 64,
) -> Callable[[], None]:
    """One Adam step of ``model_name`` on ``batch`` digits: the data loss, plus Energy on ``method``'s map unless None.

    ``shared``: the data loss is put on the logits of the map's own forward pass (:func:`explain_with_logits`);
    else the model runs a second time for them, as an objective handed the trainer's logits does.
    """
    data = load_dataset("digits", device=device)
    index = torch.arange(batch, device=device) % len(data.train.x)
    x, y = data.train.x[index], data.train.y[index]
    masks = torch.zeros(batch, 28, 28, dtype=torch.bool, device=device)
    masks[:, 7:21, 7:21] = True
    model = build_model(model_name, seed=0).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bcos = model_name.startswith("bcos") and "relu" not in model_name

    def data_loss(logits: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, y) if bcos else F.cross_entropy(logits, y)

    def step() -> None:
        if method is None:
            loss = data_loss(model(x))
        elif shared:
            maps, logits = explain_with_logits(model, x, y, method, layer)
            loss = data_loss(logits) + localisation_loss("energy", maps, masks)
        else:
            maps = explain_for_training(model, x, y, method, layer)
            loss = data_loss(model(x)) + localisation_loss("energy", maps, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 repeats instead of 10")
    parser.add_argument("--batch", type=int, help="digits per step (default 64, 512 on a GPU)")
    add_device_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    device, batch = device_and_batch(args.device, 64, 512, args.batch)
    repeats = 3 if args.quick else 10
    print(f"device {device_name(device)}; batch {batch}, median of {repeats}")

    def pair(guided: tuple, plain: tuple, shared: bool = True) -> tuple[float, float, float]:
        """(guided ms, plain ms, ratio) of two step_function specs (model, method[, layer]), side by side."""
        return paired(
            step_function(*guided, shared=shared, device=device, batch=batch),
            step_function(*plain, device=device, batch=batch),
            repeats,
            device,
        )

    rows = [
        ("IxG @ input", pair(("bcos_relu_twin", "ixg"), ("bcos_relu_twin", None))),
        ("B-cos @ input", pair(("bcos", "bcos"), ("bcos", None))),
        ("B-cos @ conv4", pair(("bcos", "bcos", "conv4"), ("bcos", None))),
    ]
    # the same steps with a second forward pass for the data loss (what a trainer objective handed logits pays)
    second = [
        (f"{label}, 2nd forward", pair(spec, (spec[0], None), shared=False))
        for label, spec in (("IxG @ input", ("bcos_relu_twin", "ixg")), ("B-cos @ input", ("bcos", "bcos")))
    ]
    speed = pair(("bcos", "bcos"), ("bcos", "bcos", "conv4"))
    print(f"{'guided step':<24} {'guided ms':>10} {'plain ms':>10} {'ratio':>7} {'target':>7}")
    for label, (ours, reference, ratio) in rows + second:
        verdict = "ok" if ratio <= TARGET else "MISSED"
        print(f"{label:<24} {ours:>10.1f} {reference:>10.1f} {ratio:>7.2f} {TARGET:>6.1f}x {verdict}")
    print(
        f"{'B-cos: input / conv4':<24} {speed[0]:>10.1f} {speed[1]:>10.1f} {speed[2]:>7.2f}   (thesis R9: 1.7x at Mid2)"
    )


if __name__ == "__main__":
    main()
