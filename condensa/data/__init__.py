"""Data sets: the embedded digits set, and local vision / text data named in configs."""

from .digits import IndexedTensorDataset, Splits, digits_splits

__all__ = ["IndexedTensorDataset", "Splits", "digits_splits"]
