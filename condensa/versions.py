"""Versions of the libraries a result or checkpoint was made with (recorded, never enforced).

Read from package metadata, so nothing heavy is imported just to report a version.
"""

from __future__ import annotations

import importlib.metadata
import platform

DISTRIBUTIONS = ("condensa", "torch", "torchvision", "botorch", "gpytorch", "torch-pruning", "safetensors", "numpy",
                 "onnx", "onnxruntime", "onnxscript")


def versions() -> dict[str, str]:
    """``{"python": ..., distribution: version}`` for the installed ones of :data:`DISTRIBUTIONS`."""
    out = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


__all__ = ["versions", "DISTRIBUTIONS"]
