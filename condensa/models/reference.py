"""Train (or load from the cache) the reference model a strategy compresses.

Reference models on the embedded data train in seconds; they are cached as safetensors under a
user cache dir (``$CONDENSA_CACHE``, default ``~/.cache/condensa``) keyed by a hash of the model
spec, its arguments, the data split and the training settings, so every command after the first
reuses the same reference. User checkpoints load with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ..errors import CheckpointError, ModelError
from ..io import atomic_write_bytes, is_safetensors_file
from ..recovery.config import TrainConfig
from ..recovery.train import train
from .registry import build_model

#: what reading a state dict raises on a corrupt or foreign file (besides UnpicklingError)
READ_ERRORS = (SafetensorError, RuntimeError, ValueError, OSError, EOFError, KeyError, TypeError)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    path = Path(override or os.environ.get("CONDENSA_CACHE") or Path.home() / ".cache" / "condensa")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a state dict from a safetensors file (recognized by its structure, whatever its name)
    or a ``.pt`` state dict read with ``weights_only=True`` (tensors only, no code)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"model.checkpoint: {path} is a directory; give a .safetensors file or a state-dict .pt file")
    if not path.is_file():
        raise ModelError(f"model.checkpoint: file {path} does not exist")
    try:
        if path.suffix == ".safetensors" or is_safetensors_file(path):
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"model.checkpoint: {path} holds pickled objects beyond tensors, which weights_only=True "
                              "refuses (unpickling can run code); save a plain state_dict or a .safetensors file") from error
    except READ_ERRORS as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"model.checkpoint: cannot read {path} safely: {type(error).__name__}: {first}") from error
    if isinstance(state, dict):
        broken = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if broken:
            raise CheckpointError(f"model.checkpoint: {path} holds NaN or infinite values in {len(broken)} of {len(state)} "
                                  f"tensors (first: '{broken[0]}'); it was saved from a diverged or corrupted training")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelError(f"model.checkpoint: {path} does not fit the model: {first}") from error
    return model


def train_reference(
    spec: str,
    kwargs: dict[str, Any],
    splits: Any,
    config: TrainConfig,
    *,
    data_key: dict[str, Any],
    seed: int = 0,
    device: torch.device = torch.device("cpu"),
    cache: str | os.PathLike | None = None,
    log=print,
) -> nn.Module:
    """Return the trained reference model, training it once and caching its weights."""
    key = cache_key({"model": spec, "kwargs": kwargs, "data": data_key, "train": vars(config), "seed": seed, "v": 1})
    path = cache_dir(cache) / f"reference-{spec.replace('/', '_').replace(':', '_')}-{key}.safetensors"
    torch.manual_seed(seed)
    model = build_model(spec, **kwargs)
    if path.is_file():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except (*READ_ERRORS, RuntimeError):  # a corrupt or stale cache entry is simply retrained
            path.unlink(missing_ok=True)
    log(f"training reference model {spec} ({config.epochs} epochs) -> cache {path.name}")
    train(model, splits.train, config, device=device, seed=seed)
    model.cpu()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()
