"""A ten-line strategy on the embedded digits data: prune to 5% density, int8, fine-tune, measure.

    python examples/quickstart.py            # ~20 s on 2 CPU cores
"""

import condensa
from condensa import Compose, Prune, Quantize
from condensa.tables import summary_table

workspace = condensa.workspace("digits_cnn", recovery={"epochs": 4})        # data + cached reference CNN
strategy = Compose([Prune(density=0.05), Quantize("int8")])                  # 5% of weights kept, int8 values
evaluation = workspace.evaluate(strategy, split="test")                      # compress a copy, recover, measure
print(summary_table(evaluation.metrics))
print("flipped test examples:", evaluation.metrics["flipped_ids"])
