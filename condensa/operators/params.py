"""Masks and fake quantizers attached with ``torch.nn.utils.parametrize``.

Why parametrizations: the user's model class is never subclassed or rewritten, autograd keeps
pruned weights at exactly zero during recovery (the forward multiplies by the mask, so no
optimizer step can revive them), and ``finalize`` bakes the result back into plain tensors.

Each compressed tensor carries at most one :class:`Mask` (first) and one :class:`FakeQuantize`
(after it). Operators that prune the same tensor again AND their mask into the existing one.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn
from torch.nn.utils import parametrize

_INT_DTYPE = re.compile(r"^int([2-8])$")
_CB_DTYPE = re.compile(r"^cb([1-8])$")  # weight sharing, 2^N centroids (operators/codebook.py)
_GROUP_DTYPE = re.compile(r"^int([2-8])g([1-9][0-9]*)$")  # group-wise intN, one fp16 scale per G inputs (groupwise.py)
FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_bits(dtype: str) -> int:
    """Storage bits per value of a quantization dtype name (``int8`` -> 8, ``fp16`` -> 16)."""
    if dtype in FLOAT_DTYPES:
        return 16
    match = _INT_DTYPE.match(dtype) or _CB_DTYPE.match(dtype) or _GROUP_DTYPE.match(dtype)
    if not match:
        raise ValueError(f"unknown dtype {dtype!r}")
    return int(match.group(1))


def is_quant_dtype(dtype: object) -> bool:
    return isinstance(dtype, str) and (dtype in FLOAT_DTYPES or bool(_INT_DTYPE.match(dtype)))


def group_dtype(dtype: object) -> tuple[int, int] | None:
    """``(bits, group_size)`` of a group-wise dtype name (``int4g32`` -> ``(4, 32)``), else None."""
    match = _GROUP_DTYPE.match(dtype) if isinstance(dtype, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


class Mask(nn.Module):
    """``w -> w * mask``; the mask is a bool buffer of the tensor's shape."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def int_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel scale (dim 0): max |w| of the channel / (2^(bits-1) - 1)."""
    qmax = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.detach().reshape(1, -1)
    scale = flat.abs().amax(dim=1) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale


def quantize_int(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(q, scale)``: integer codes in [-qmax, qmax] and the per-channel fp32 scales."""
    qmax = 2 ** (bits - 1) - 1
    scale = int_scale(weight, bits)
    shape = (-1,) + (1,) * (weight.dim() - 1) if weight.dim() > 1 else (1,)
    q = torch.clamp(torch.round(weight / scale.reshape(shape)), -qmax, qmax)
    return q, scale


def dequantize_int(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (q.dim() - 1) if q.dim() > 1 else (1,)
    return q.to(scale.dtype) * scale.reshape(shape)


class FakeQuantize(nn.Module):
    """Quantize-dequantize in the forward with a straight-through gradient.

    ``intN``: symmetric per-output-channel, scale from the current weights; ``fp16``/``bf16``:
    round to the 16-bit format. The model computes in fp32 with the quantized values, so the
    accuracy measured is the accuracy of the stored low-precision weights.
    """

    def __init__(self, dtype: str) -> None:
        super().__init__()
        self.dtype = dtype
        self.bits = dtype_bits(dtype)

    def quantized(self, weight: torch.Tensor) -> torch.Tensor:
        if self.dtype in FLOAT_DTYPES:
            return weight.to(FLOAT_DTYPES[self.dtype]).to(weight.dtype)
        q, scale = quantize_int(weight, self.bits)
        return dequantize_int(q, scale).to(weight.dtype)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.quantized(weight) - weight).detach()

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def _plist(module: nn.Module, name: str):
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name]
    return None


def get_mask(module: nn.Module, name: str) -> torch.Tensor | None:
    plist = _plist(module, name)
    if plist is None:
        return None
    for p in plist:
        if isinstance(p, Mask):
            return p.mask
    return None


def get_quant(module: nn.Module, name: str) -> FakeQuantize | None:
    plist = _plist(module, name)
    if plist is None:
        return None
    for p in plist:
        if isinstance(p, FakeQuantize):
            return p
    return None


def raw_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The underlying trainable tensor (the parametrization's ``original``, or the plain one)."""
    plist = _plist(module, name)
    return plist.original if plist is not None else getattr(module, name)


def masked_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor with the mask applied but not quantized: what pruning criteria rank."""
    raw = raw_tensor(module, name).detach()
    mask = get_mask(module, name)
    return raw * mask if mask is not None else raw


def _reattach(module: nn.Module, name: str, mask: torch.Tensor | None, quant: FakeQuantize | None) -> None:
    """Re-register parametrizations in canonical order (mask, then quantizer)."""
    if parametrize.is_parametrized(module, name):
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    if mask is not None:
        with torch.no_grad():
            getattr(module, name).mul_(mask)  # keep the stored value consistent with the mask
        parametrize.register_parametrization(module, name, Mask(mask), unsafe=True)
    if quant is not None:
        parametrize.register_parametrization(module, name, quant, unsafe=True)
    _refresh_rnn(module)


def _refresh_rnn(module: nn.Module) -> None:
    # RNN modules cache their weights in ``_flat_weights``; after (un)parametrizing we rebuild it.
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()


def detach_rnn_caches(model: nn.Module) -> None:
    """Rebuild the ``_flat_weights`` cache of parametrized RNN modules without autograd history.

    A forward in grad mode fills it with the parametrization's outputs (non-leaf tensors), and
    ``copy.deepcopy`` refuses those; ``Strategy.apply`` calls this before copying the model.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.RNNBase) and parametrize.is_parametrized(module):
                module._init_flat_weights()


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """AND ``mask`` into the tensor's mask (creating it), zeroing the stored values it removes."""
    mask = mask.to(torch.bool).to(raw_tensor(module, name).device)
    existing = get_mask(module, name)
    if existing is not None:
        combined = existing & mask
        existing.copy_(combined)
        with torch.no_grad():
            raw_tensor(module, name).mul_(combined)
        return
    _reattach(module, name, mask, get_quant(module, name))


def set_quant(module: nn.Module, name: str, dtype: str) -> None:
    if _CB_DTYPE.match(dtype):
        from .codebook import attach

        attach(module, name, int(dtype[2:]))
        return
    existing = get_quant(module, name)
    if existing is not None and existing.dtype == dtype:
        return
    if _GROUP_DTYPE.match(dtype):
        from .groupwise import GroupFakeQuantize

        quant: FakeQuantize = GroupFakeQuantize(dtype)
    else:
        quant = FakeQuantize(dtype)
    _reattach(module, name, get_mask(module, name), quant)


def compressed_tensors(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """``(module_name, module, tensor_name)`` of every tensor condensa has parametrized."""
    found = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, plist in module.parametrizations.items():
            if any(isinstance(p, (Mask, FakeQuantize)) for p in plist):
                found.append((module_name, module, tensor_name))
    return found


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a private copy of its generated class.

    ``copy.deepcopy`` shares the generated ``Parametrized<Class>`` between original and copy, and
    ``remove_parametrizations`` deletes the property from that class, which would break the other
    model. With a private class, finalizing one of them leaves the other intact.
    """
    cls = type(module)
    namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


def finalize(model: nn.Module) -> nn.Module:
    """Bake masks and quantization into plain tensors (in place) and return the model.

    Afterwards the model is an ordinary module with the same class and state-dict keys as the
    original; pruned entries are exact zeros and quantized weights hold their dequantized values.
    """
    for module in {id(m): m for _, m, _ in compressed_tensors(model)}.values():
        _own_class(module)
    for _, module, tensor_name in compressed_tensors(model):
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        _refresh_rnn(module)
    return model


def baked_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every parametrization baked in, ``model`` left untouched.

    What tracing and surgery need: an ordinary module with the effective (masked, quantized)
    values. Each parametrized module of the copy gets its own class first (see :func:`_own_class`).
    """
    replica = copy.deepcopy(model)
    for module in replica.modules():
        if parametrize.is_parametrized(module):
            _own_class(module)
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
            _refresh_rnn(module)
    return replica


def strip(model: nn.Module) -> nn.Module:
    """Remove condensa's parametrizations, keeping the stored (masked, unquantized) values."""
    for module in {id(m): m for _, m, _ in compressed_tensors(model)}.values():
        _own_class(module)
    for _, module, tensor_name in compressed_tensors(model):
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=False)
        _refresh_rnn(module)
    return model


def quant_dtypes(model: nn.Module) -> dict[str, str]:
    """``{"module.tensor": dtype name}`` for every quantized tensor still parametrized."""
    dtypes = {}
    for module_name, module, tensor_name in compressed_tensors(model):
        quant = get_quant(module, tensor_name)
        if quant is not None:
            dtypes[f"{module_name}.{tensor_name}" if module_name else tensor_name] = quant.dtype
    return dtypes


def quant_bits(model: nn.Module) -> dict[str, int]:
    """``{"module.tensor": bits}`` for every quantized tensor still parametrized."""
    return {name: dtype_bits(dtype) for name, dtype in quant_dtypes(model).items()}
