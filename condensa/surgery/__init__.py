"""Structured surgery: physically remove pruned channels, so the model really shrinks.

A model transform, not an export step: :func:`shrink` turns a masked model into a smaller ordinary
module with equal outputs; ``condensa.export.save`` calls it for structured strategies and
:func:`apply_widths` rebuilds the shrunk architecture when a checkpoint is loaded.
"""

from .shrink import ShrinkReport, apply_widths, dead_channels, shrink, shrink_with_report

__all__ = ["ShrinkReport", "apply_widths", "dead_channels", "shrink", "shrink_with_report"]
