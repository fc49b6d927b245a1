"""Structured filter pruning: whole conv output channels, ranked by L1 norm.

Removed channels can be cut out physically (``condensa export`` shrinks the model), which is what
makes a model faster on ordinary hardware. The classifier is never pruned.
"""

from condensa import FilterPrune


def strategy(density=0.5, criterion="l1", layers=("Conv2d",), exclude=("@last",)):
    return FilterPrune(density=density, criterion=criterion, layers=layers, exclude=exclude)
