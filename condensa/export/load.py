"""``load`` / ``verify``: rebuild a compressed model from a checkpoint folder, reading data only.

Only safetensors and JSON are read: nothing is ever unpickled, since unpickling a file can run
arbitrary code, and code the manifest names is imported only when the caller trusts the folder.
Every file's SHA-256 is checked against the manifest (this detects corruption and
accidental edits; anyone who can write the folder can also rewrite the hashes, so it is no
protection against tampering), a truncated file is reported as such, and a pickle checkpoint is
refused with instructions to convert it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from torch import nn

from ..errors import CheckpointError
from ..io import is_safetensors, looks_pickled, refuse_if_pickle, refuse_pickle
from ..loading import reading_file
from ..models.registry import build_model
from ..packing.layout import DTYPES, ENTRY, decode
from ..surgery import apply_config, apply_widths
from .manifest import MANIFEST, ONNX, WEIGHTS, layout_hash, read_manifest, sha256


def _verify_file(path: Path, expected: dict | None) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    data = path.read_bytes()
    if path.suffix != ".onnx" and not is_safetensors(data) and looks_pickled(data[:4]):
        refuse_pickle(path)
    if not isinstance(expected, dict) or "sha256" not in expected or "bytes" not in expected:
        raise CheckpointError(f"manifest has no hash for {path.name}")
    if len(data) < int(expected["bytes"]):
        raise CheckpointError(f"{path} is truncated: {len(data)} of {expected['bytes']} bytes")
    if len(data) > int(expected["bytes"]):
        raise CheckpointError(f"{path} has {len(data) - int(expected['bytes'])} trailing bytes; hash mismatch expected")
    digest = sha256(data)
    if digest != expected["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 hash mismatch (file {digest[:16]}..., manifest {str(expected['sha256'])[:16]}...); "
                              "the file was modified or corrupted")
    return data


def _template(manifest: dict) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` of the stored tensors, from the manifest's tensor table."""
    out = {}
    for name, meta in manifest["tensors"].items():
        try:
            out[name] = (tuple(int(s) for s in meta["shape"]), DTYPES[meta["dtype"]])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{MANIFEST}: bad entry for tensor '{name}' (needs shape and dtype)") from None
    return out


def _folder(path_dir: str | Path) -> Path:
    """The checkpoint folder of ``path_dir`` (the folder itself, its weights file or its manifest)."""
    path_dir = Path(path_dir)
    if path_dir.is_file():
        refuse_if_pickle(path_dir)
        if path_dir.suffix == ".safetensors" or path_dir.name == MANIFEST:
            return path_dir.parent
        raise CheckpointError(f"{path_dir}: pass the folder written by condensa.export.save")
    if not path_dir.exists():
        raise CheckpointError(f"{path_dir} does not exist")
    return path_dir


def read_tensors(path_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and decode the tensors of a checkpoint: ``(state dict of effective tensors, manifest)``."""
    path_dir = _folder(path_dir)
    manifest = read_manifest(path_dir)
    data = _verify_file(path_dir / WEIGHTS, manifest["files"].get(WEIGHTS))
    try:
        stored = safetensors_load(data)
    except (SafetensorError, ValueError) as error:
        raise CheckpointError(f"{path_dir / WEIGHTS}: not a valid safetensors file ({error})") from None
    if set(stored) != {ENTRY}:
        raise CheckpointError(f"{path_dir / WEIGHTS}: expected one '{ENTRY}' entry, found {sorted(stored)[:5]}")
    aliases = manifest.get("aliases") or {}
    surgery = manifest.get("surgery") or {}
    digest = bytes.fromhex(layout_hash(manifest["tensors"], aliases, surgery.get("widths", {})))
    state = decode(stored[ENTRY].numpy().tobytes(), _template(manifest), digest)
    for alias, canonical in aliases.items():
        if canonical not in state:
            raise CheckpointError(f"alias '{alias}' refers to missing tensor '{canonical}'")
        state[alias] = state[canonical]
    return state, manifest


def _build(manifest: dict, model_factory: Any, source: Path, trust_code: bool) -> nn.Module:
    """The architecture: the caller's ``model_factory`` (trusted: the caller chose it) or the
    manifest's factory, which may only name code to import when the caller trusts the file."""
    info = manifest.get("model") or {}
    kwargs = dict(info.get("kwargs") or {})
    if model_factory is None:
        model_factory = info.get("factory")
        if not model_factory:
            raise CheckpointError(
                f"the manifest names no model factory (model class {info.get('class')}); pass model_factory= to load"
            )
        with reading_file(source, trust_code=trust_code):
            return build_model(model_factory, **kwargs)
    if isinstance(model_factory, dict):
        kwargs = {**kwargs, **dict(model_factory.get("kwargs") or {})}
        model_factory = model_factory.get("name")
    return build_model(model_factory, **kwargs)


def load(path_dir: str | Path, model_factory: str | Callable[..., nn.Module] | dict | None = None,
         device: str | torch.device = "cpu", *, verify_onnx: bool = True,
         trust_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the compressed model of a checkpoint; returns ``(model in eval mode, manifest)``.

    The architecture comes from ``model_factory`` or the manifest's factory spec. A manifest may
    name a built-in model (``digits_cnn``, a torchvision name, ...) but not code to import
    (``pkg.module:function``, ``file.py:function``) unless ``trust_code=True``: the refusal names
    the module. Surgery widths are re-applied, then the unpacked tensors are loaded (strictly: every
    tensor must fit). Outputs equal the model that was saved: bit-exact for pruned/fp32 and
    fp16/bf16 weights, and for integer codes dequantized exactly as ``FakeQuantize`` does.
    """
    state, manifest = read_tensors(path_dir)
    path_dir = _folder(path_dir)
    onnx_info = manifest["files"].get(ONNX)
    if verify_onnx and isinstance(onnx_info, dict) and "sha256" in onnx_info and (path_dir / ONNX).exists():
        _verify_file(path_dir / ONNX, onnx_info)
    model = _build(manifest, model_factory, path_dir / MANIFEST, trust_code)
    surgery = manifest.get("surgery") or {}
    if surgery.get("applied"):
        apply_widths(model, surgery.get("widths") or {}, {k: tuple(v.shape) for k, v in state.items()})
        if surgery.get("kind") == "transformer":  # head counts and MLP width in the HF config, as surgery left them
            apply_config(model, surgery.get("config") or {})
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the rebuilt {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            " (wrong model factory or kwargs?)"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint tensor shapes do not fit the rebuilt model: {wrong[:5]}")
    model.load_state_dict({k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype and v.is_floating_point() else v
                           for k, v in state.items()}, strict=True)
    return model.to(device).eval(), manifest


def verify(path_dir: str | Path) -> dict[str, Any]:
    """Check hashes and decode every tensor without building the model; returns the manifest."""
    _, manifest = read_tensors(path_dir)
    onnx_info = manifest["files"].get(ONNX)
    if isinstance(onnx_info, dict) and "sha256" in onnx_info:
        _verify_file(_folder(path_dir) / ONNX, onnx_info)
    return manifest


__all__ = ["load", "verify", "read_tensors"]
