"""Search the density of Prune + int8 from Python, with the same optimizer the CLI uses.

    python examples/search_in_python.py [--small]
"""

import sys

import condensa
from condensa import Compose, Prune, Quantize, Range
from condensa.search import Objective, accuracy_drop, search

small = "--small" in sys.argv
workspace = condensa.workspace("digits_cnn", recovery={"epochs": 2 if small else 4})
strategy = Compose([Prune(density=Range(0.005, 0.5, log=True)), Quantize("int8")])

result = search(
    strategy,
    evaluate=lambda bound: workspace.evaluate(bound, split="val").metrics,
    objective=Objective("footprint_bytes", cheap=workspace.cheap_objective(strategy)),  # computed, not modeled
    constraints=[accuracy_drop(1.0)],                                                   # <= 1 point lost
    budget=4 if small else 10,
)
print(result.message if not result.feasible else f"best {result.best_knobs} -> {result.best_metrics['compression_ratio']:.1f}x smaller")
