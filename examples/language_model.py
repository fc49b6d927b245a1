"""condensa is not vision-only: a character-level LSTM on the Python standard library's source
text, compressed with Prune + int8 under a perplexity bound (at most +5%).

    python examples/language_model.py [--small]
"""

import sys

import condensa
from condensa import Compose, Prune, Quantize, Range
from condensa.search import Constraint, Objective, search

small = "--small" in sys.argv
workspace = condensa.workspace(
    "char_lstm",
    data="text",
    data_options={"seq_len": 32 if small else 48, "limit": 1500 if small else 6000},
    model_kwargs={"hidden": 96 if small else 256},
    train={"epochs": 2 if small else 6, "lr": 0.003, "batch_size": 128},
    recovery={"epochs": 1, "lr": 0.002, "batch_size": 128},
)
layers = ["LSTM", "Linear", "Embedding"]
strategy = Compose([Prune(density=Range(0.05, 0.6, log=True), layers=layers), Quantize("int8", layers=layers)])
result = search(
    strategy,
    evaluate=lambda bound: workspace.evaluate(bound, split="val").metrics,
    objective=Objective("footprint_bytes", cheap=workspace.cheap_objective(strategy)),
    constraints=[Constraint("perplexity_increase", 5.0)],
    budget=3 if small else 8,
)
for ev in result.evaluations:
    m = ev.metrics
    print(f"density {ev.knobs['prune.density']:.3f}: perplexity {m['perplexity']:.3f} "
          f"(reference {m['reference_perplexity']:.3f}), {m['compression_ratio']:.1f}x smaller, "
          f"next-char mismatches {m['mismatch_rate']:.1f}%")
print(result.message)
