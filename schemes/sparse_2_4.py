"""2:4 semi-structured sparsity (two nonzeros in every four weights), the pattern sparse tensor
cores accelerate. The first layer usually has too few input channels (e.g. 1 or 3) and is excluded.
"""

from condensa import Compose, NMPrune, Quantize


def strategy(n=2, m=4, exclude=("@first",), quantize=None):
    ops = NMPrune(n=n, m=m, layers=("Conv2d", "Linear"), exclude=exclude)
    if quantize:
        return Compose([ops, Quantize(dtype=quantize, layers=("Conv2d", "Linear"))])
    return ops
