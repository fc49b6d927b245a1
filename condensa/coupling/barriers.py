"""Barriers: ops through which channel indices cannot be mapped exactly.

Torch-Pruning treats any op it does not know as element-wise. Before trusting a coupling group we
check the ops it passes through, recorded during the tracing forward pass: a reshape other than a
flatten into ``[batch, -1]``, a transpose or permute that moves the channel dim (a channel
shuffle, as in ShuffleNet), or an element-wise op that changes the channel count is a *barrier*;
groups touching a barrier are reported as blocked instead of being pruned wrongly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

#: what the recorder may meet in an op's arguments that it cannot interpret
_UNREADABLE = (TypeError, ValueError, IndexError, AttributeError)

_PERMUTING = {"transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "channel_shuffle",
              "pixel_shuffle", "pixel_unshuffle"}
_RESHAPING = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "unsqueeze", "squeeze"}


def _moves_channel_dim(name: str, args: tuple, kwargs: dict, ndim: int) -> bool:
    def norm(d: int) -> int:
        return d % ndim if ndim else d

    try:
        if name in ("transpose", "swapaxes", "swapdims"):
            dims = [a for a in args[1:3]] or [kwargs.get("dim0"), kwargs.get("dim1")]
            a, b = norm(int(dims[0])), norm(int(dims[1]))
            return a != b and 1 in (a, b)
        if name == "permute":
            perm = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
            return norm(int(perm[1])) != 1
        if name in ("movedim", "moveaxis"):
            src, dst = args[1], args[2]
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            return any(norm(s) == 1 or norm(d) == 1 for s, d in zip(src, dst, strict=False) if norm(s) != norm(d))
    except _UNREADABLE:  # an unknown signature: assume the worst
        return True
    return True  # t, channel_shuffle, pixel_shuffle: always move channels


class OpRecorder(TorchFunctionMode):
    """Records ``grad_fn -> (op name, input shape, output shape, moves channels)`` during tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[Any, tuple[str, tuple, tuple, bool]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            first = args[0] if args else None
            if isinstance(out, torch.Tensor) and out.grad_fn is not None and isinstance(first, torch.Tensor):
                name = getattr(func, "__name__", str(func)).rstrip("_")
                moved = name in _PERMUTING and _moves_channel_dim(name, args, kwargs, first.dim())
                self.ops[out.grad_fn] = (name, tuple(first.shape), tuple(out.shape), moved)
        except _UNREADABLE:  # recording must never break the forward
            pass
        return out


def barrier_reason(record: tuple[str, tuple, tuple, bool] | None, tp_type: str) -> str | None:
    if record is None:
        return None
    name, shape_in, shape_out, moved = record
    if moved:
        return f"'{name}' moves the channel dimension (e.g. a channel shuffle)"
    if name in _RESHAPING or tp_type == "RESHAPE":
        if shape_in == shape_out:
            return None
        if len(shape_in) >= 2 and shape_out == (shape_in[0], math.prod(shape_in[1:])):
            return None  # flatten into [batch, features]: Torch-Pruning maps these indices
        if len(shape_in) >= 2 and len(shape_out) >= 2 and shape_in[:2] == shape_out[:2]:
            return None  # batch and channel dims untouched (e.g. flattening spatial dims)
        return f"'{name}' reshapes {list(shape_in)} -> {list(shape_out)} across the channel dimension"
    if tp_type == "ELEMENTWISE" and len(shape_in) >= 2 and len(shape_out) >= 2 and shape_in[1] != shape_out[1]:
        if shape_in[1] == 1 or shape_out[0] != shape_in[0]:
            return None  # broadcasting a [*, 1, ...] operand, or not a channel op
        return f"'{name}' changes the channel count {shape_in[1]} -> {shape_out[1]}"
    return None


