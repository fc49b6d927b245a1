"""Structured surgery: physically remove pruned channels, so the model really shrinks.

A model transform, not an export step: :func:`shrink` turns a masked model into a smaller ordinary
module with equal outputs; ``condensa.export.save`` calls it for structured strategies and
:func:`apply_widths` rebuilds the shrunk architecture when a checkpoint is loaded. Transformers
(``HeadPrune`` / ``MLPPrune``: attention heads and MLP neurons) go through
:func:`shrink_transformer` instead (:mod:`.transformer`).
"""

from .shrink import ShrinkReport, apply_widths, dead_channels, shrink, shrink_with_report
from .transformer import (
    TransformerShrinkReport,
    apply_config,
    has_dead_structures,
    is_transformer,
    runnable,
    shrink_transformer,
    slice_layer,
)

__all__ = ["ShrinkReport", "apply_widths", "dead_channels", "shrink", "shrink_with_report",
           "TransformerShrinkReport", "apply_config", "has_dead_structures", "is_transformer", "runnable", "shrink_transformer",
           "slice_layer"]
