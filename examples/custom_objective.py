"""A custom objective: measured latency at *your* batch size, under an accuracy bound.

Unstructured zeros do not make dense kernels faster, so this searches a FilterPrune density:
each evaluation physically removes the pruned channels (``condensa.surgery.shrink``) and times the
smaller model. The objective is expensive and noisy, so the optimizer models it with a GP.

    python examples/custom_objective.py [--small]
"""

import sys

import condensa
from condensa import FilterPrune, Range
from condensa.metrics import measure_latency
from condensa.search import Objective, accuracy_drop, search

small = "--small" in sys.argv
BATCH_SIZE = 256


def latency_at_my_batch(model, metrics):
    """Milliseconds per batch of 256 digits images for the shrunk model (median of 20 runs)."""
    from condensa.surgery import shrink

    example = workspace.example_input(BATCH_SIZE).cpu()
    fast = shrink(model.cpu(), example[:1])  # a smaller plain copy; the masked model is untouched
    return measure_latency(fast, example, repeats=5 if small else 20)["latency_ms"]


workspace = condensa.workspace("digits_cnn", recovery={"epochs": 2 if small else 4}, objective=latency_at_my_batch)
strategy = FilterPrune(density=Range(0.1, 1.0))
result = search(
    strategy,
    evaluate=lambda bound: workspace.evaluate(bound, split="val").metrics,
    objective=Objective("objective"),            # the callable's value, stored as metrics["objective"]
    constraints=[accuracy_drop(1.0)],
    budget=4 if small else 10,
)
for ev in result.evaluations:
    print(ev.index, ev.knobs, f"{ev.objective:.2f} ms", "feasible" if ev.feasible else "infeasible")
print(result.message)
