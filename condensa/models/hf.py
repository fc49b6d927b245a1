"""Hugging Face models from a local folder: ``model.name: hf:PATH``.

``hf:PATH`` loads a folder written by ``save_pretrained`` with ``from_pretrained(PATH,
local_files_only=True)``: nothing is downloaded, and nothing in the folder can make condensa run
code: ``trust_remote_code`` stays False (a config whose ``auto_map`` names custom code is
refused by transformers) and weights are read with ``use_safetensors=True`` (a folder with only
``pytorch_model.bin`` is refused instead of unpickled). The Auto class is chosen from the
config's ``architectures`` (``...ForCausalLM`` / ``...LMHeadModel`` -> ``AutoModelForCausalLM``,
``...ForSequenceClassification`` -> ``AutoModelForSequenceClassification``, ...). The folder's
weights are the reference: the pipeline trains nothing for ``hf:`` models.

Loaded models are prepared for compression: ``use_cache`` off (no KV cache built per batch), and
GPT-2's ``transformers.pytorch_utils.Conv1D`` layers (weight ``[in, out]``) become ``nn.Linear``
(``conv1d: linear``, the default; ``conv1d: keep`` leaves them) so every operator (Prune, N:M
along the input dimension, per-output-channel quantization) sees the standard ``[out, in]``
layout. :func:`save_hf` converts them back (:func:`restore_conv1d`) so ``from_pretrained``
reads what it writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..extras import MissingExtraError, require
from ..operators.transformer import is_conv1d

PREFIX = "hf:"
CONV1D_MODES = ("linear", "keep")
#: ``from_pretrained`` options a config may not set: they would download, run code or unpickle
REFUSED = ("trust_remote_code", "use_safetensors", "weights_only", "local_files_only", "revision", "token",
           "cache_dir", "force_download", "proxies", "from_tf", "from_flax", "gguf_file")

#: architecture name suffix -> Auto class (first match wins)
_AUTO = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForImageClassification", "AutoModelForImageClassification"),
)


def is_hf_spec(spec: Any) -> bool:
    """True for a ``model.name`` of the form ``hf:PATH``."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def hf_path(spec: str | Path) -> Path:
    text = str(spec)
    return Path(text[len(PREFIX):] if text.startswith(PREFIX) else text).expanduser()


def auto_class(config: Any) -> type:
    """The Auto class for the config's ``architectures`` (``AutoModel`` when none is recognized)."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        for suffix, auto in _AUTO:
            if arch.endswith(suffix):
                return getattr(transformers, auto)
    return transformers.AutoModel


def load_hf(spec: str | Path, *, conv1d: str = "linear", **kwargs: Any) -> nn.Module:
    """``from_pretrained(PATH, local_files_only=True, use_safetensors=True)`` with the Auto class
    the folder's config names, prepared for compression (:func:`prepare`). ``kwargs`` go to
    ``from_pretrained`` (e.g. ``attn_implementation``, or config fields such as ``num_labels``)."""
    path = hf_path(spec)
    where = f"model.name: hf:{path}"
    try:
        require("transformers")
    except MissingExtraError as error:
        raise ModelError(f"{where}: {error}") from None
    if not (path / "config.json").is_file():
        raise ModelError(f"{where}: no config.json there (expected a folder written by save_pretrained; "
                         "nothing is downloaded)")
    if conv1d not in CONV1D_MODES:
        raise ModelError(f"model.kwargs.conv1d: must be one of {list(CONV1D_MODES)}, got {conv1d!r}")
    refused = sorted(set(kwargs) & set(REFUSED))
    if refused:
        raise ModelError(f"model.kwargs: {', '.join(refused)} cannot be set for hf: models (condensa loads local "
                         "safetensors weights only and never runs code from the folder)")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
        explicit = getattr(config, "transformers_weights", None)
        if explicit is not None and not str(explicit).endswith((".safetensors", ".safetensors.index.json")):
            raise ModelError(f"{where}: config.json names weights '{explicit}', not safetensors; condensa does not "
                             "unpickle weights")
        if not any(path.glob("*.safetensors")) and any(path.glob("*.bin")):
            raise ModelError(f"{where}: the folder holds only pickled weights (*.bin); condensa reads safetensors only "
                             "(unpickling can run code): re-save it with save_pretrained(..., safe_serialization=True)")
        with _quiet_progress():
            model = auto_class(config).from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                                       use_safetensors=True, weights_only=True, **kwargs)
    except ModelError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers raises many types; one line naming the folder
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelError(f"{where}: cannot load it: {type(error).__name__}: {first}") from error
    prepare(model, conv1d=conv1d)
    return model.eval()


def prepare(model: nn.Module, *, conv1d: str = "linear") -> nn.Module:
    """``use_cache`` off and (``conv1d="linear"``) GPT-2 ``Conv1D`` layers as ``nn.Linear``."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False
    if conv1d == "linear":
        linearize_conv1d(model)
    return model


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> list[str]:
    """Replace every ``Conv1D`` (``y = x @ W + b`` with ``W: [in, out]``) by the equal ``nn.Linear``
    (weight ``W.T``), in place; returns the qualified names replaced (also kept in
    ``model._condensa_conv1d`` for :func:`restore_conv1d`)."""
    names = {id(m): n for n, m in model.named_modules()}
    replaced = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not is_conv1d(child):
                continue
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
    """Inverse of :func:`linearize_conv1d` (in place, on a plain model): the layers it converted
    become ``Conv1D`` again with their current (possibly shrunk) sizes."""
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
        else:
            conv.bias = None
        setattr(modules[parent_name] if parent_name else model, attr, conv)
    model._condensa_conv1d = []
    return model


def save_hf(model: nn.Module, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` that ``from_pretrained`` reads: a copy of
    ``model`` with masks and quantization baked into plain weights and ``Conv1D`` layers restored
    (``model`` itself is untouched). The architecture is what ``model.config`` describes."""
    from ..operators import params  # operators import nothing from models: no cycle

    if not hasattr(model, "save_pretrained"):
        raise ModelError(f"save_hf: {type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    replica = restore_conv1d(params.baked_copy(model).cpu())

    folder = Path(folder)
    with _quiet_progress():
        replica.save_pretrained(str(folder))
    return folder


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars from transformers in condensa's output."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


__all__ = ["PREFIX", "is_hf_spec", "hf_path", "auto_class", "load_hf", "prepare", "linearize_conv1d", "restore_conv1d",
           "save_hf"]
