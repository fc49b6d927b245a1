"""Structured filter pruning: whole conv output channels, ranked by L1 norm.

Removed channels can be cut out physically (``condensa export`` shrinks the model), which is what
makes a model faster on ordinary hardware. Channels are pruned per coupling group (residual
additions, concatenations); groups that reach the model output stay dense.
"""

from condensa import FilterPrune


def strategy(density=0.5, criterion="l1", layers=("Conv2d",), exclude=()):
    return FilterPrune(density=density, criterion=criterion, layers=layers, exclude=exclude)
