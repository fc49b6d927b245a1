"""Unstructured magnitude pruning (one global threshold) followed by int8 weights.

The Condensa paper's recipe for the smallest footprint: sparsity removes most weights, int8
shrinks the survivors 4x. Leave ``density`` open to let the search find it.
"""

from condensa import Compose, Prune, Quantize


def strategy(density=0.05, dtype="int8", layers=("Conv2d", "Linear"), exclude=()):
    return Compose([Prune(density=density, layers=layers, exclude=exclude), Quantize(dtype=dtype, layers=layers, exclude=exclude)])
