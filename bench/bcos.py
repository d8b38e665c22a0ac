"""Benchmark of B-cos networks: a training step and the inherent explanation as multiples of the same-shaped
conventional CNN's training step and input-gradient pass, measured side by side in one run.

    python bench/bcos.py            # 20 repeats
    python bench/bcos.py --quick    # 5 repeats

The B-cos net is ``bcos`` (B = 2, digits, 1x28x28); the conventional CNN is ``bcos_relu_twin`` (the same encoding,
widths, strides and head, with biased convolutions and ReLUs). Training step: forward, binary cross-entropy,
backward and an Adam step on a batch of 100. Explanation: ``make_method("bcos", model)`` on 200 images (one forward
and one backward pass with the dynamic factors detached) against one input-gradient pass of the twin.

Target (issue 15): training step <= 2.5x, explanation <= 1.5x.
"""

from __future__ import annotations

import argparse

import torch
from timing import add_malloc_argument, host_memory, paired  # bench/timing.py (the script's folder is on sys.path)

from attrlab.attribution import make_method
from attrlab.data import load_dataset
from attrlab.models import build_model
from attrlab.objectives import bce_loss

TARGETS = {"training step": 2.5, "explanation": 1.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 repeats instead of 20")
    add_malloc_argument(parser)
    args = parser.parse_args()
    print(host_memory(args.malloc_defaults))
    repeats = 5 if args.quick else 20
    data = load_dataset("digits", device="cpu")
    xb, yb = data.train.x[:100], data.train.y[:100]
    x = data.test.x[:200]
    models = {"bcos": build_model("bcos", seed=0), "twin": build_model("bcos_relu_twin", seed=0)}
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
    rows = [("training step", *paired(training_step("bcos"), training_step("twin"), repeats))]
    for model in models.values():
        model.eval()
    rows.append(("explanation", *paired(lambda: bcos_method.attribute(x), input_gradient, repeats)))
    print(f"{'measure':<15} {'B-cos ms':>10} {'twin ms':>10} {'ratio':>7} {'target':>7}")
    for label, ours, reference, ratio in rows:
        verdict = "ok" if ratio <= TARGETS[label] else "MISSED"
        print(f"{label:<15} {ours:>10.1f} {reference:>10.1f} {ratio:>7.2f} {TARGETS[label]:>6.1f}x {verdict}")


if __name__ == "__main__":
    main()
