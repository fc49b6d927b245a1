"""Compression operators: composable, idempotent, applied to a copy of the model."""

from .base import ApplyResult, Compose, LayerRecord, Operator, Record, Strategy
from .codebook import Codebook, QuantizeAux
from .params import finalize, strip
from .prune import BlockPrune, NMPrune, Prune
from .quantize import Quantize
from .structured import FilterPrune, NeuronPrune
from .transformer import HeadPrune, MLPPrune

OPERATORS = {cls.__name__: cls for cls in (Prune, FilterPrune, NeuronPrune, HeadPrune, MLPPrune, BlockPrune, NMPrune, Quantize,
                                           Codebook, QuantizeAux)}

__all__ = [
    "ApplyResult", "Compose", "LayerRecord", "Operator", "Record", "Strategy",
    "finalize", "strip", "Prune", "FilterPrune", "NeuronPrune", "HeadPrune", "MLPPrune", "BlockPrune", "NMPrune", "Quantize", "Codebook",
    "QuantizeAux",
    "OPERATORS",
]
