"""Optional dependencies (pip extras): a one-line error naming the extra when one is missing.

The core (operators, recovery, search, packed export) needs none of them; ONNX files, report plots,
parallel search and Hugging Face models do.
"""

from __future__ import annotations

import importlib.util

from .errors import CondensaError

#: module -> (extra, what needs it)
EXTRAS = {
    "onnx": ("onnx", "writing ONNX files"),
    "onnxruntime": ("onnx", "checking ONNX files"),
    "onnxscript": ("onnx", "writing ONNX files"),
    "matplotlib": ("report", "report plots"),
    "ray": ("ray", "parallel search (search.workers > 1)"),
    "transformers": ("hf", "Hugging Face and transformer models (hf:PATH, char_gpt)"),
    "tokenizers": ("hf", "Hugging Face tokenizers (data.tokenizer)"),
}


class MissingExtraError(CondensaError, ImportError):
    """An optional dependency is not installed."""


def require(*modules: str) -> None:
    """Raise :class:`MissingExtraError` naming the pip extra if any of ``modules`` is missing."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            extra, purpose = EXTRAS[module]
            raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({module} is not installed): "
                                    f"pip install 'condensa[{extra}]'")


def available(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


__all__ = ["EXTRAS", "MissingExtraError", "require", "available"]
