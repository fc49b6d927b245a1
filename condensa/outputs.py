"""Model outputs as logits: tensors, Hugging Face ``ModelOutput`` objects, tuples.

Every place that consumes a model's output (predictions, recovery losses, latency, FLOPs,
surgery checks, ONNX export) goes through :func:`logits_of`, so a ``transformers`` model whose
forward returns ``CausalLMOutputWithPast`` / ``SequenceClassifierOutput`` works wherever a model
returning a tensor does. Language models produce per-position logits ``[batch, positions,
classes]`` with labels ``[batch, positions]``; :func:`flatten_positions` turns them into one row
per prediction, so every metric and loss written for ``[N, classes]`` applies per token.
No ``transformers`` import here: the checks are structural.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output.

    A tensor is returned as is; an object with a ``logits`` attribute or key (``ModelOutput``,
    a dict) gives that; a tuple/list gives its first element (recursively).
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output:
        return logits_of(output[0])
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}; return a tensor, "
                    "a ModelOutput with 'logits', or a tuple whose first item is the logits")


def flatten_positions(logits: torch.Tensor, labels: torch.Tensor | None = None,
                      teacher: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``[B, T, C]`` logits (and ``[B, T]`` labels, ``[B, T, C]`` teacher logits) -> one row per
    position: ``[B*T, C]`` and ``[B*T]``. ``[N, C]`` inputs are returned unchanged."""
    if logits.dim() <= 2:
        return logits, labels, teacher
    classes = logits.shape[-1]
    flat_labels = labels.reshape(-1) if labels is not None else None
    if flat_labels is not None and flat_labels.numel() * classes != logits.numel():
        raise ValueError(f"labels of shape {list(labels.shape)} do not match logits of shape {list(logits.shape)}")
    return (logits.reshape(-1, classes), flat_labels,
            teacher.reshape(-1, teacher.shape[-1]) if teacher is not None else None)


class LogitsOnly(nn.Module):
    """Wrap a model so its forward takes one tensor and returns the logits tensor (ONNX export,
    tracing tools); parameters are shared with the wrapped model.

    For a Hugging Face model taking token ids, an all-ones ``attention_mask`` is passed along:
    without it transformers 5 inspects ``position_ids`` for packed sequences with ``torch.diff``,
    which the TorchScript ONNX exporter cannot export (every window is full length, so the mask
    changes nothing).
    """

    def __init__(self, model: nn.Module, attention_mask: bool | None = None) -> None:
        super().__init__()
        self.model = model
        if attention_mask is None:
            import inspect

            try:
                attention_mask = "attention_mask" in inspect.signature(model.forward).parameters
            except (TypeError, ValueError):
                attention_mask = False
        self.attention_mask = attention_mask

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.attention_mask and not inputs.is_floating_point():
            return logits_of(self.model(input_ids=inputs, attention_mask=torch.ones_like(inputs)))
        return logits_of(self.model(inputs))


__all__ = ["logits_of", "flatten_positions", "LogitsOnly"]
