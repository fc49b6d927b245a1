"""condensa: programmable model compression for PyTorch.

Write a strategy from composable operators, leave knobs open as ranges, and let a constrained
Bayesian optimizer pick them; recover accuracy by fine-tuning, L-C or label-preserving
distillation; measure accuracy and mismatches; export packed checkpoints.
"""

from .errors import CondensaError, ConfigError, KnobError
from .knobs import Choice, Range
from .operators import (
    BlockPrune,
    Compose,
    FilterPrune,
    NeuronPrune,
    NMPrune,
    Prune,
    Quantize,
    Strategy,
    finalize,
    strip,
)

__version__ = "0.1.0"


def workspace(*args, **kwargs):
    """Shortcut for :func:`condensa.pipeline.workspace` (data + reference model + recovery)."""
    from .pipeline import workspace as make

    return make(*args, **kwargs)

__all__ = [
    "CondensaError", "ConfigError", "KnobError", "Choice", "Range", "BlockPrune", "Compose", "FilterPrune",
    "NeuronPrune", "NMPrune", "Prune", "Quantize", "Strategy", "finalize", "strip", "workspace", "__version__",
]
