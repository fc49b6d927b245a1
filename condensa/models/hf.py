"""Hugging Face models from a local folder: ``model.name: hf:PATH``.

``hf:PATH`` loads a folder written by ``save_pretrained`` with ``from_pretrained(PATH,
local_files_only=True)``: nothing is ever downloaded. The Auto class is chosen from the config's
``architectures`` (``...ForCausalLM`` -> ``AutoModelForCausalLM``, ``...ForSequenceClassification``
-> ``AutoModelForSequenceClassification``, ...). The weights in the folder are the reference: no
reference training happens for ``hf:`` models.

Loaded models are prepared for compression: ``use_cache`` off (the forward then returns only
logits, which every metric needs, and no KV cache is built per batch), and GPT-2's
``transformers.pytorch_utils.Conv1D`` layers (weight ``[in, out]``) are converted to ``nn.Linear``
(``conv1d="linear"``, the default) so that every operator (Prune, N:M along the input dim,
per-output-channel and group-wise quantization) sees the standard ``[out, in]`` layout; the
export converts them back (:func:`restore_conv1d`) so ``from_pretrained`` reads the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

PREFIX = "hf:"

_AUTO = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForImageClassification", "AutoModelForImageClassification"),
)


def is_hf_spec(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def auto_class(config: Any):
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        for suffix, auto in _AUTO:
            if arch.endswith(suffix):
                return getattr(transformers, auto)
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_hf(path: str | Path, *, conv1d: str = "linear", attn_implementation: str | None = None, **kwargs: Any) -> nn.Module:
    """``from_pretrained(path, local_files_only=True)`` with the Auto class the config names."""
    path = Path(str(path)[len(PREFIX):] if is_hf_spec(str(path)) else path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(f"model.name: hf:{path}: no config.json there (expected a folder written by save_pretrained; "
                         "nothing is downloaded)")
    if conv1d not in ("linear", "keep"):
        raise ModelError(f"model.kwargs.conv1d: must be 'linear' or 'keep', got {conv1d!r}")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = auto_class(config).from_pretrained(str(path), local_files_only=True, **extra, **kwargs)
    except ModelError:
        raise
    except Exception as error:  # noqa: BLE001 - one line naming the folder
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelError(f"model.name: cannot load hf:{path}: {type(error).__name__}: {first}") from error
    prepare(model, conv1d=conv1d)
    return model.eval()


def prepare(model: nn.Module, *, conv1d: str = "linear") -> nn.Module:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    if conv1d == "linear":
        linearize_conv1d(model)
    return model


def _conv1d_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    from ..operators.transformer import is_conv1d

    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if is_conv1d(child):
                found.append((parent, name, child))
    return found


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace every ``Conv1D`` (``y = x @ W + b``, ``W: [in, out]``) by an equal ``nn.Linear``
    (``W.T``); returns the qualified names replaced (also kept in ``model._condensa_conv1d``)."""
    names = {id(m): n for n, m in model.named_modules()}
    replaced = []
    for parent, name, child in _conv1d_modules(model):
        weight = child.weight.detach()
        linear = nn.Linear(weight.shape[0], weight.shape[1], bias=child.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight.t())
        if child.bias is not None:
            linear.bias.copy_(child.bias.detach())
        setattr(parent, name, linear)
        replaced.append(names[id(child)])
    if replaced:
        model._condensa_conv1d = sorted(set(getattr(model, "_condensa_conv1d", [])) | set(replaced))
    return replaced


@torch.no_grad()
def restore_conv1d(model: nn.Module) -> nn.Module:
    """Inverse of :func:`linearize_conv1d` (in place): the layers it converted become ``Conv1D``
    again, with their current (possibly shrunk) sizes, so ``save_pretrained`` writes the layout
    ``from_pretrained`` expects."""
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    for name in getattr(model, "_condensa_conv1d", []):
        linear = modules.get(name)
        if not isinstance(linear, nn.Linear):
            continue
        parent_name, _, attr = name.rpartition(".")
        conv = Conv1D(linear.out_features, linear.in_features).to(device=linear.weight.device, dtype=linear.weight.dtype)
        conv.weight.copy_(linear.weight.detach().t())
        if linear.bias is not None:
            conv.bias.copy_(linear.bias.detach())
        setattr(modules[parent_name] if parent_name else model, attr, conv)
    model._condensa_conv1d = []
    return model


def save_hf(model: nn.Module, folder: str | Path) -> Path:
    """``save_pretrained`` of a plain copy (Conv1D layers restored): ``config.json`` +
    ``model.safetensors`` that ``from_pretrained`` reads. The (possibly shrunk) architecture is
    described by ``model.config``, which surgery rewrote
    (:func:`condensa.surgery.transformer.shrink_transformer`)."""
    from ..operators.params import baked_copy as plain_copy

    if not hasattr(model, "save_pretrained"):
        raise ModelError("save_hf: not a Hugging Face model (no save_pretrained)")
    replica = plain_copy(model)
    restore_conv1d(replica)
    from transformers.utils import logging as hf_logging

    folder = Path(folder)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in condensa's output
    try:
        replica.save_pretrained(str(folder))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    return folder


__all__ = ["load_hf", "is_hf_spec", "linearize_conv1d", "restore_conv1d", "save_hf", "prepare", "PREFIX"]
