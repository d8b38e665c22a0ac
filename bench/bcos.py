"""Benchmark of B-cos networks: a training step and the inherent explanation as multiples of the same-shaped
conventional CNN's training step and input-gradient pass, measured side by side in one run.

    python bench/bcos.py                    # 20 repeats
    python bench/bcos.py --quick            # 5 repeats
    python bench/bcos.py --device cuda      # default: CUDA when present; --batch to choose the batch

The B-cos net is ``bcos`` (B = 2, digits, 1x28x28); the conventional CNN is ``bcos_relu_twin`` (the same encoding,
widths, strides and head, with biased convolutions and ReLUs). Training step: forward, binary cross-entropy,
backward and an Adam step on a batch of 100 (1000 on a GPU). Explanation: ``make_method("bcos", model)`` on twice
the batch (one forward and one backward pass with the dynamic factors detached) against one input-gradient pass of
the twin. Digits are repeated where the batch is larger than the split.

Target (issue 15): training step <= 2.5x, explanation <= 1.5x.
"""

from __future__ import annotations

import argparse

import torch

# bench/timing.py (the script's folder is on sys.path)
from timing import (
    add_device_argument,
    add_malloc_argument,
    device_and_batch,
    host_memory,
    paired,
)

from attrlab.attribution import make_method
from attrlab.data import load_dataset
from attrlab.device import device_name
from attrlab.models import build_model
from attrlab.objectives import bce_loss

TARGETS = {"training step": 2.5, "explanation": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 20")
    parser.add_argument("--batch", type=int, help="training batch (default 100, 1000 on a GPU); explained: twice it")
    add_device_argument(parser)
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    device, batch = device_and_batch(args.device, 100, 1000, args.batch)
    repeats = 5 if args.quick else 20
    data = load_dataset("digits", device=device)
    index = torch.arange(batch, device=device) % len(data.train.x)
    xb, yb = data.train.x[index], data.train.y[index]
    x = data.test.x[torch.arange(2 * batch, device=device) % len(data.test.x)]
    print(f"device {device_name(device)}; training batch {batch}, {2 * batch} images explained, median of {repeats}")
    models = {
        "bcos": build_model("bcos", seed=0).to(device),
        "twin": build_model("bcos_relu_twin", seed=0).to(device),
    }
    optimizers = {name: torch.optim.Adam(model.parameters(), lr=1e-3) for name, model in models.items()}

    def training_step(name):
        def step():
            loss = bce_loss(models[name](xb), yb)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()

        return step

    bcos_method = make_method("bcos", models["bcos"].eval())
    twin = models["twin"]

    def input_gradient():
        inputs = x.detach().requires_grad_(True)
        logits = twin(inputs)
        torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), inputs)

    for model in models.values():
        model.train()
    rows = [("training step", *paired(training_step("bcos"), training_step("twin"), repeats, device))]
    for model in models.values():
        model.eval()
    rows.append(("explanation", *paired(lambda: bcos_method.attribute(x), input_gradient, repeats, device)))
    print(f"{'measure':<15} {'B-cos ms':>10} {'twin ms':>10} {'ratio':>7} {'target':>7}")
    for label, ours, reference, ratio in rows:
        verdict = "ok" if ratio <= TARGETS[label] else "MISSED"
        print(f"{label:<15} {ours:>10.1f} {reference:>10.1f} {ratio:>7.2f} {TARGETS[label]:>6.1f}x {verdict}")


if __name__ == "__main__":
    main()
