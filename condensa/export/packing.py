"""Bit-exact packed encodings of one tensor: the layouts :func:`condensa.metrics.tensor_cost` costs.

Every tensor is written in the encoding ``tensor_cost`` picks, so the file holds what the
footprint metric promises (up to one byte of padding per stream and the safetensors header):

``dense``      all values (typed, original shape)
``bitmask``    one bit per element (``numpy.packbits``) + the nonzero values
``relative``   relative-index (gap) coding: per entry a value and a ``b``-bit count of the zeros
               before it; a run longer than ``2^b - 1`` inserts filler entries (value 0,
               gap ``2^b - 1``), as in Deep Compression (Han et al., 2016)
``nm``         N:M: ``n`` values and ``n`` positions of ``ceil(log2 m)`` bits per group of ``m``
               along the input dim (the ``nm_groups`` layout)
``rows+X``     a row bitmask (all-zero rows dropped) + the kept rows ``[kept, -1]`` in encoding X

Values are fp32/fp16/bf16 (or the tensor's own dtype) stored as typed safetensors entries, or
``intN`` codes (``"qintN"`` in the manifest): int8 as ``I8``, N < 8 bit-packed as ``N``-bit offset-binary codes (``q + 2^(N-1)``).
Integer-quantized tensors add one fp32 scale per stored output row (``:scales``). All index
streams of a tensor are concatenated into one ``U8`` entry (``:index``), the part sizes recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..metrics.footprint import TensorCost, tensor_cost
from ..operators.params import dequantize_int
from ..operators.prune import nm_groups, nm_ungroup

DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: what decoding a malformed stream raises besides CheckpointError (numpy/torch shape and index errors)
DECODE_ERRORS = (ValueError, IndexError, RuntimeError, TypeError, KeyError)


# -- bit packing ------------------------------------------------------------------------------


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers ``< 2**bits`` at ``bits`` bits each (little-endian bit order)."""
    values = np.ascontiguousarray(values, dtype=np.uint64 if bits > 16 else np.uint32).reshape(-1)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    if bits == 8:
        return values.astype(np.uint8)
    if bits == 16:
        return values.astype("<u2").view(np.uint8)
    if bits in (1, 2, 4):
        per = 8 // bits
        padded = np.zeros(math.ceil(values.size / per) * per, dtype=np.uint8)
        padded[: values.size] = values
        padded = padded.reshape(-1, per)
        shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
        return np.bitwise_or.reduce(padded << shifts, axis=1).astype(np.uint8)
    matrix = ((values[:, None] >> np.arange(bits, dtype=values.dtype)) & 1).astype(np.uint8)
    return np.packbits(matrix.reshape(-1), bitorder="little")


def unpack_bits(buffer: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` integers (int64)."""
    buffer = np.ascontiguousarray(buffer, dtype=np.uint8).reshape(-1)
    needed = math.ceil(count * bits / 8)
    if buffer.size < needed:
        raise CheckpointError(f"packed stream too short: {buffer.size} bytes for {count} values of {bits} bits")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if bits == 8:
        return buffer[:count].astype(np.int64)
    if bits == 16:
        return buffer[: 2 * count].view("<u2").astype(np.int64)
    if bits in (1, 2, 4):
        per = 8 // bits
        shifts = (np.arange(per, dtype=np.uint8) * bits).astype(np.uint8)
        out = (buffer[:needed, None] >> shifts) & ((1 << bits) - 1)
        return out.reshape(-1)[:count].astype(np.int64)
    flat = np.unpackbits(buffer[:needed], bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    return (flat << np.arange(bits, dtype=np.int64)).sum(axis=1)


def packed_bytes(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


# -- value streams ----------------------------------------------------------------------------


@dataclass
class Values:
    """What one stored value is: a float/native dtype, or ``intN`` codes."""

    dtype: str  # a dtype name ("float32", "float16", ...) or "qintN" for N-bit integer codes

    @property
    def int_bits(self) -> int | None:
        if self.dtype.startswith("qint") and self.dtype[4:].isdigit() and 2 <= int(self.dtype[4:]) <= 8:
            return int(self.dtype[4:])
        if self.dtype not in DTYPES:
            raise CheckpointError(f"unknown value type {self.dtype!r}")
        return None

    @property
    def bits(self) -> int:
        if self.int_bits is not None:
            return self.int_bits
        dtype = DTYPES[self.dtype]
        return 1 if dtype == torch.bool else (torch.finfo(dtype).bits if dtype.is_floating_point else torch.iinfo(dtype).bits)

    def store(self, values: torch.Tensor) -> torch.Tensor:
        """Values (codes for intN) -> the tensor written to safetensors."""
        n = self.int_bits
        if n is None:
            return values.to(DTYPES[self.dtype]).contiguous()
        if n == 8:
            return values.to(torch.int8).contiguous()
        offset = 1 << (n - 1)
        codes = (values.to(torch.int64).reshape(-1) + offset).numpy()
        return torch.from_numpy(pack_bits(codes, n).copy())

    def load(self, stored: torch.Tensor, count: int) -> torch.Tensor:
        n = self.int_bits
        if n is None:
            if stored.dtype != DTYPES[self.dtype] or stored.numel() != count:
                raise CheckpointError(f"value stream has {stored.numel()} {stored.dtype} values, expected {count} {self.dtype}")
            return stored
        if n == 8:
            if stored.dtype != torch.int8 or stored.numel() != count:
                raise CheckpointError(f"int8 code stream has {stored.numel()} {stored.dtype} values, expected {count}")
            return stored.to(torch.int64)
        if stored.dtype != torch.uint8:
            raise CheckpointError(f"int{n} code stream must be uint8, got {stored.dtype}")
        return torch.from_numpy(unpack_bits(stored.numpy(), n, count)) - (1 << (n - 1))


# -- encoders ---------------------------------------------------------------------------------


def _select(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1)[index]


def _encode(effective: torch.Tensor, values: torch.Tensor, cost: TensorCost, kind: Values) -> tuple[dict, list[np.ndarray], torch.Tensor]:
    """``(meta, index parts, stored values)`` for ``effective`` (whose zeros define sparsity) and
    ``values`` (what is stored: the effective values, or integer codes of the same shape)."""
    encoding = cost.encoding
    meta: dict[str, Any] = {"encoding": encoding}
    if encoding.startswith("rows+"):
        rows = effective.shape[0]
        alive = (effective.reshape(rows, -1) != 0).any(dim=1)
        kept_eff = effective.reshape(rows, -1)[alive]
        kept_val = values.reshape(rows, -1)[alive]
        inner_cost = tensor_cost(kept_eff, cost.value_bits)
        if inner_cost.encoding != encoding[5:]:
            raise AssertionError(f"inner encoding {inner_cost.encoding} != {encoding}")  # tensor_cost is deterministic
        inner_meta, inner_parts, stored = _encode(kept_eff, kept_val, inner_cost, kind)
        mask = np.packbits(alive.numpy().astype(np.uint8), bitorder="little")
        meta.update({"rows_kept": int(alive.sum()), "inner": inner_meta})
        return meta, [mask, *inner_parts], stored
    if encoding == "dense":
        return meta, [], values
    flat_eff = effective.reshape(-1)
    nonzero = flat_eff != 0
    if encoding == "bitmask":
        index = torch.nonzero(nonzero).reshape(-1)
        meta["count"] = int(index.numel())
        mask = np.packbits(nonzero.numpy().astype(np.uint8), bitorder="little")
        return meta, [mask], _select(values, index)
    if encoding == "relative":
        b = cost.index_bits
        positions = torch.nonzero(nonzero).reshape(-1).to(torch.int64)
        gaps = torch.diff(positions, prepend=torch.tensor([-1], dtype=torch.int64)) - 1
        fillers = gaps >> b
        residual = gaps - (fillers << b)
        entries = int((fillers + 1).sum())
        real = torch.cumsum(fillers + 1, dim=0) - 1
        gap_stream = torch.full((entries,), (1 << b) - 1, dtype=torch.int64)
        gap_stream[real] = residual
        stored = torch.zeros(entries, dtype=values.dtype)
        stored[real] = _select(values, positions)
        meta.update({"b": b, "count": entries})
        return meta, [pack_bits(gap_stream.numpy(), b)], stored
    if encoding == "nm":
        n, m = cost.nm
        groups = nm_groups(effective, m).reshape(-1, m)
        order = torch.argsort((groups == 0).to(torch.int8), dim=1, stable=True)[:, :n]
        value_groups = nm_groups(values, m).reshape(-1, m)
        stored = torch.gather(value_groups, 1, order).reshape(-1)
        bits = cost.index_bits
        meta.update({"n": n, "m": m, "index_bits": bits, "count": int(stored.numel())})
        return meta, [pack_bits(order.reshape(-1).numpy(), bits)], stored
    raise CheckpointError(f"unknown encoding {encoding!r}")


def _decode(meta: dict, shape: tuple[int, ...], index: np.ndarray, stored: torch.Tensor, kind: Values,
            zero: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Rebuild the stored values in ``shape`` (zeros elsewhere); returns ``(tensor, index bytes used)``."""
    encoding = meta.get("encoding")
    numel = math.prod(shape)
    if isinstance(encoding, str) and encoding.startswith("rows+"):
        rows = shape[0] if shape else 1
        used = math.ceil(rows / 8)
        alive = np.unpackbits(index[:used], bitorder="little")[:rows].astype(bool)
        kept = int(meta.get("rows_kept", -1))
        if kept != int(alive.sum()):
            raise CheckpointError(f"row mask keeps {int(alive.sum())} rows, manifest says {kept}")
        inner_shape = (kept, numel // rows if rows else 0)
        inner, inner_used = _decode(meta["inner"], inner_shape, index[used:], stored, kind, zero)
        out = zero.new_zeros((rows, inner_shape[1]))
        out[torch.from_numpy(alive)] = inner
        return out.reshape(shape), used + inner_used
    if encoding == "dense":
        values = kind.load(stored.reshape(-1), numel)
        return values.reshape(shape), 0
    out = zero.new_zeros(numel)
    count = int(meta.get("count", -1))
    values = kind.load(stored.reshape(-1), count)
    if encoding == "bitmask":
        used = math.ceil(numel / 8)
        mask = torch.from_numpy(np.unpackbits(index[:used], bitorder="little")[:numel].astype(bool))
        if int(mask.sum()) != count:
            raise CheckpointError(f"bitmask has {int(mask.sum())} set bits, manifest says {count} values")
        out[mask] = values.to(out.dtype)
        return out.reshape(shape), used
    if encoding == "relative":
        b = int(meta["b"])
        used = packed_bytes(count, b)
        gaps = torch.from_numpy(unpack_bits(index[:used], b, count))
        positions = torch.cumsum(gaps + 1, dim=0) - 1
        if count and int(positions[-1]) >= numel:
            raise CheckpointError(f"relative index runs past the tensor end ({int(positions[-1])} >= {numel})")
        out[positions] = values.to(out.dtype)
        return out.reshape(shape), used
    if encoding == "nm":
        n, m, bits = int(meta["n"]), int(meta["m"]), int(meta["index_bits"])
        template = nm_groups(torch.zeros(shape, dtype=torch.bool), m)
        groups = template.numel() // m
        if count != groups * n:
            raise CheckpointError(f"N:M stream has {count} values, expected {groups * n}")
        used = packed_bytes(count, bits)
        order = torch.from_numpy(unpack_bits(index[:used], bits, count)).reshape(groups, n)
        if count and int(order.max()) >= m:
            raise CheckpointError("N:M position out of range")
        dense = zero.new_zeros((groups, m))
        dense.scatter_(1, order, values.reshape(groups, n).to(dense.dtype))
        return nm_ungroup(dense.reshape(template.shape), torch.Size(shape)), used
    raise CheckpointError(f"unknown encoding {encoding!r}")


@dataclass
class Encoded:
    meta: dict
    entries: dict[str, torch.Tensor]  # suffix ("", ":index", ":scales") -> tensor
    payload_bytes: int
    theory_bits: int


def encode_tensor(effective: torch.Tensor, *, codes: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                  value_dtype: str | None = None) -> Encoded:
    """Encode one tensor in its cheapest ``tensor_cost`` layout.

    ``effective``: the tensor as the model uses it (masked, quantized-dequantized). For an
    ``intN`` tensor pass ``codes`` (integers, same shape) and per-row ``scales``; ``value_dtype``
    is ``"qintN"``, ``"float16"``/``"bfloat16"`` (fp16/bf16 quantization) or ``None`` (own dtype).
    """
    effective = effective.detach().cpu()
    if value_dtype is None:
        value_dtype = DTYPE_NAMES.get(effective.dtype)
        if value_dtype is None:
            raise CheckpointError(f"cannot store tensors of dtype {effective.dtype}")
    kind = Values(value_dtype)
    n_scales = 0
    if kind.int_bits is not None:
        if codes is None or scales is None:
            raise ValueError("intN tensors need codes and scales")
        n_scales = int(scales.numel())
        values = codes.detach().cpu().to(torch.int64)
    else:
        values = effective
    cost = tensor_cost(effective, kind.bits, n_scales) if effective.is_floating_point() else tensor_cost(effective, kind.bits)
    meta, parts, stored = _encode(effective, values, cost, kind)
    entries = {"": kind.store(stored)}
    meta.update({"shape": list(effective.shape), "dtype": DTYPE_NAMES[effective.dtype], "values": value_dtype})
    index = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    if parts:
        meta["index_parts"] = [int(p.size) for p in parts]
        entries[":index"] = torch.from_numpy(index.astype(np.uint8))
    if kind.int_bits is not None:
        row_scales = scales.detach().cpu().to(torch.float32).reshape(-1)
        if cost.encoding.startswith("rows+"):
            rows = effective.shape[0]
            alive = (effective.reshape(rows, -1) != 0).any(dim=1)
            row_scales = row_scales[alive]
        entries[":scales"] = row_scales.contiguous()
        meta["scales"] = int(row_scales.numel())
    entries = {k: v for k, v in entries.items() if v.numel() or k == ""}
    payload = sum(v.numel() * v.element_size() for v in entries.values())
    meta["payload_bytes"] = int(payload)
    meta["theory_bits"] = int(cost.bits)
    return Encoded(meta, entries, int(payload), int(cost.bits))


def decode_tensor(meta: dict, entries: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild the effective tensor (integer codes dequantized exactly as ``FakeQuantize`` does)."""
    try:
        shape = tuple(int(s) for s in meta["shape"])
        dtype = DTYPES[meta["dtype"]]
        kind = Values(str(meta["values"]))
        kind.bits  # noqa: B018 - validates the dtype name
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"bad tensor entry in manifest: {error}") from None
    stored = entries.get("")
    if stored is None:
        stored = torch.zeros(0, dtype=DTYPES.get(kind.dtype, torch.uint8))
    index = entries.get(":index")
    index_np = index.numpy() if index is not None else np.zeros(0, dtype=np.uint8)
    if kind.int_bits is not None:
        zero = torch.zeros((), dtype=torch.int64)
    else:
        zero = torch.zeros((), dtype=DTYPES[kind.dtype])
    values, used = _decode(meta, shape, index_np, stored, kind, zero)
    if used != index_np.size:
        raise CheckpointError(f"index stream has {index_np.size} bytes, the encoding uses {used}")
    if kind.int_bits is None:
        return values.to(dtype).reshape(shape)
    scales = entries.get(":scales")
    rows = shape[0]
    if scales is None and meta.get("scales") == 0:
        scales = torch.zeros(0, dtype=torch.float32)
    if scales is None or scales.dtype != torch.float32:
        raise CheckpointError("integer-quantized tensor without fp32 scales")
    if meta["encoding"].startswith("rows+"):
        kept_mask = torch.from_numpy(np.unpackbits(index_np[: math.ceil(rows / 8)], bitorder="little")[:rows].astype(bool))
        if int(kept_mask.sum()) != scales.numel():
            raise CheckpointError(f"{scales.numel()} scales for {int(kept_mask.sum())} kept rows")
        full = torch.ones(rows, dtype=torch.float32)
        full[kept_mask] = scales
        scales = full
    elif scales.numel() != rows:
        raise CheckpointError(f"{scales.numel()} scales for {rows} rows")
    return dequantize_int(values, scales).to(dtype)


__all__ = ["encode_tensor", "decode_tensor", "pack_bits", "unpack_bits", "Encoded", "Values"]
