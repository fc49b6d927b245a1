"""The checkpoint folder's layout and its ``manifest.json``: names, format version, hashes.

A checkpoint folder holds ``model.safetensors`` (packed tensors), ``manifest.json`` (how to
rebuild the model, every tensor's encoding and shape, strategy, metrics, versions, SHA-256 of each
file) and optionally ``model.onnx``. The manifest is written last, so its presence marks a
complete checkpoint. The layout hash ties the manifest's tensor table to the weights file: it is
stored in the safetensors metadata, so editing one without the other is detected.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError, ModelError
from ..io import HOW_TO_CONVERT, PICKLE_SUFFIXES, canonical_json

FORMAT = "condensa-packed"
FORMAT_VERSION = 2  # 2: one entropy-coded bit string (condensa/packing/); 1: fixed-width entries per tensor
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
ONNX = "model.onnx"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layout_hash(tensors: dict, aliases: dict, widths: dict) -> str:
    """SHA-256 of the tensor table, tied-weight aliases and surgery widths (canonical JSON)."""
    return sha256(canonical_json({"tensors": tensors, "aliases": aliases, "widths": widths}))


def factory_spec(model_factory: str | Callable[..., nn.Module] | dict | None,
                 model_kwargs: dict | None) -> tuple[str | None, dict]:
    """``(spec string or None, kwargs)`` recorded in the manifest for rebuilding the model."""
    kwargs = dict(model_kwargs or {})
    if model_factory is None:
        return None, kwargs
    if isinstance(model_factory, dict):
        spec = model_factory.get("name") or model_factory.get("factory")
        kwargs = {**dict(model_factory.get("kwargs") or {}), **kwargs}
        return (str(spec) if spec else None), kwargs
    if isinstance(model_factory, str):
        return model_factory, kwargs
    if callable(model_factory):
        module = getattr(model_factory, "__module__", None)
        qualname = getattr(model_factory, "__qualname__", "")
        if module and qualname and "<" not in qualname and module != "__main__":
            return f"{module}:{qualname}", kwargs
        return None, kwargs
    raise ModelError(f"model_factory must be a spec string, a callable or {{name, kwargs}}, got {model_factory!r}")


def read_manifest(path_dir: Path) -> dict[str, Any]:
    """The validated manifest of a checkpoint folder (raises :class:`CheckpointError`)."""
    manifest_path = path_dir / MANIFEST
    if not manifest_path.is_file():
        pickles = sorted(p.name for p in path_dir.iterdir() if p.suffix in PICKLE_SUFFIXES) if path_dir.is_dir() else []
        if pickles:
            raise CheckpointError(f"{path_dir} holds {', '.join(pickles)} but no {MANIFEST}. {HOW_TO_CONVERT}")
        raise CheckpointError(f"{path_dir}: no {MANIFEST}; not a checkpoint written by condensa.export.save")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable or not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: format version {manifest.get('format_version')!r}, this condensa reads {FORMAT_VERSION}")
    for key in ("tensors", "files"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{manifest_path}: missing or malformed '{key}'")
    return manifest


__all__ = ["FORMAT", "FORMAT_VERSION", "WEIGHTS", "MANIFEST", "ONNX", "sha256", "layout_hash", "factory_spec",
           "read_manifest"]
