"""Device choice: ``auto`` picks CUDA when present, else CPU."""

from __future__ import annotations

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda"):
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: '{name}' requested but CUDA is not available; use auto or cpu")
        return torch.device(name)
    raise ConfigError(f"device must be one of {list(DEVICES)} (or cuda:N), got {name!r}")
