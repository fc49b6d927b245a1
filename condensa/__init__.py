"""condensa: programmable model compression for PyTorch.

Write a strategy from composable operators, leave knobs open as ranges, and let a constrained
Bayesian optimizer pick them; recover accuracy by fine-tuning, L-C or label-preserving
distillation; measure accuracy and mismatches; export packed checkpoints.
"""

from .errors import CondensaError, ConfigError, KnobError
from .knobs import Choice, Range
from .operators import (
    BlockPrune,
    Codebook,
    Compose,
    FilterPrune,
    HeadPrune,
    MLPPrune,
    NeuronPrune,
    NMPrune,
    Prune,
    Quantize,
    QuantizeAux,
    Strategy,
    finalize,
    strip,
)
from .pipeline import Workspace, workspace

__version__ = "0.1.0"

__all__ = [
    "CondensaError", "ConfigError", "KnobError", "Choice", "Range", "BlockPrune", "Compose", "FilterPrune",
    "HeadPrune", "MLPPrune", "NeuronPrune", "NMPrune", "Prune", "Quantize", "Codebook", "QuantizeAux", "Strategy", "finalize", "strip",
    "Workspace", "workspace", "__version__",
]
