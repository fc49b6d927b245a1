"""Shippable compression: structured surgery, packed safetensors checkpoints, ONNX.

* :func:`shrink` - physically remove pruned channels (Torch-Pruning dependency graph), outputs
  unchanged.
* :func:`save` / :func:`load` - ``model.safetensors`` in the encodings the footprint metric
  costs, ``manifest.json`` (how to rebuild, hashes, versions), ``model.onnx`` checked with
  onnxruntime. Loading never unpickles anything.
"""

from .checkpoint import HOW_TO_CONVERT, export_onnx, load, onnx_bytes, read_tensors, save, verify, versions
from .surgery import ShrinkReport, apply_widths, shrink, shrink_with_report

__all__ = [
    "save", "load", "verify", "read_tensors", "export_onnx", "onnx_bytes", "versions", "HOW_TO_CONVERT",
    "shrink", "shrink_with_report", "ShrinkReport", "apply_widths",
]
