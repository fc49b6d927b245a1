"""Shippable checkpoints: packed safetensors, a JSON manifest, ONNX; loading reads data only.

* :func:`save` - ``model.safetensors``: every tensor in one entropy-coded bit string
  (:mod:`.packing`), exactly as large as the footprint metric says (after structured surgery
  where the strategy removed channels: smaller), ``manifest.json`` (how to rebuild,
  hashes, versions), ``model.onnx`` checked with onnxruntime (the ``onnx`` extra).
* :func:`load` / :func:`verify` / :func:`read_tensors` - never unpickle anything.
"""

from ..io import HOW_TO_CONVERT
from .load import load, read_tensors, verify
from .onnx import export_onnx, onnx_bytes
from .save import republish, save

__all__ = ["save", "republish", "load", "verify", "read_tensors", "export_onnx", "onnx_bytes", "HOW_TO_CONVERT"]
