"""The packed format: every tensor of a model in one entropy-coded bit string, sized exactly.

:func:`packed_size` is the exact size of the ``model.safetensors`` that
:func:`condensa.export.save` writes (container included), computed from histograms without coding
anything: it *is* the footprint metric (:func:`condensa.metrics.footprint`). :func:`encode`
writes that bit string, :func:`decode` reads it back bit-exactly.

The file holds one ``U8`` safetensors entry (``packed``) and no safetensors metadata (it would cost
~100 bytes, 3% of a 3 KB file); the payload starts with the format version (8 bits) and the first
64 bits of the layout hash (see :mod:`.manifest`: it ties the manifest's tensor table, aliases and
surgery widths to the weights file). Then every tensor, in sorted state-dict name order (tied
aliases omitted). Names, shapes and dtypes are not in the bit string: they come from the
manifest's tensor table (and must match the model the factory rebuilds).

Per tensor (fields LSB-first, no padding between tensors; ``w(n) = ceil(log2 n)``):

``kind``       3 bits: 0 native dtype, 1 fp16 values, 2 bf16 values, 3 ``intN`` codes with fp32
               per-row scales, 4 codebook (``cbN``), 5 group-wise ``intN`` codes with fp16 scales per
               (row, group) (``intNgG``); for 3/4/5 ``N-1`` in 3 bits
``constant``   1 bit (float kinds): every element equals one value, stored once; done
``rows``       1 bit (tensors of >= 2 dims and >= 2 rows): a row bitmask follows and only the
               rows with a nonzero are coded (what filter / neuron pruning leaves)
``index``      2 bits: 0 dense (every element coded), 1 bitmask, 2 relative (fixed ``b``-bit gaps),
               3 relative with entropy-coded gaps. Relative: ``b-1`` in 4 bits, the entry count in
               ``w(numel+1)`` bits; gap symbol ``2^b-1`` is a filler (skip ``2^b-1`` zeros, no
               value), any other ``g`` means ``g`` zeros then a value (Deep Compression's bounded
               gaps, Han et al. 2016)
side info      kind 3: one fp32 scale per coded row (one per tensor for 1-D tensors); kind 4:
               ``K-1`` in 8 bits, the centroid dtype (2 bits: fp16/bf16/fp32), ``K`` centroids
               (the distinct nonzero values, ascending), 1 bit: the stream has a zero symbol ``K``;
               kind 5 (before ``rows``): ``G-1`` in 16 bits, 1 bit: a bitmask of the live input
               columns follows (one bit per column of the ``[rows, inputs]`` view), and after the
               row bitmask one fp16 scale per (coded row, group of ``G`` live columns), row-major.
               Kind 5 codes only the live columns: its ``rows`` and ``index`` run over the
               ``[rows, live columns]`` matrix (:mod:`condensa.operators.groupwise`)
streams        the index stream, then (kinds 3, 4, 5) 1 bit raw/entropy-coded and the code stream,
               or (float kinds) the raw values; entropy-coded streams are
               :mod:`condensa.export.entropy` streams (Huffman or Golomb, whichever is cheaper)

Integer (non-float) tensors such as ``num_batches_tracked`` are zig-zag Exp-Golomb coded.
:class:`Options` restricts the layouts the *encoder* may choose (the benchmark's rows: dense
fp32, bitmask + int8, relative + int8, ...); by default it takes the cheapest of all, per tensor.
The decoder needs no options.

Exactness: decoding returns, for every tensor, exactly the ``effective`` value of :func:`specs`
-- the dequantized codes (``dequantize_int`` as ``FakeQuantize`` computes them; group-wise codes
as ``GroupFakeQuantize`` does), the codebook
values, or the stored float -- compared with ``torch.equal`` (a masked ``-0.0`` comes back as
``+0.0``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import CheckpointError
from ..operators import params
from . import entropy as E

ENTRY = "packed"
VERSION = 2  # the payload's first byte (format 1: the fixed-width per-tensor entries of condensa <= 0.1)
VERSION_BITS = 8
DIGEST_BITS = 64  # the first 64 bits of the layout hash
HEADER_BITS = VERSION_BITS + DIGEST_BITS
NATIVE, FP16, BF16, INT, CODEBOOK, GROUPED = range(6)
KIND_NAMES = {NATIVE: "native", FP16: "fp16", BF16: "bf16", INT: "int", CODEBOOK: "codebook", GROUPED: "grouped"}
CODED = (INT, CODEBOOK, GROUPED)  # kinds that store integer symbols
GROUP_BITS = 16  # G-1 of a grouped tensor
DENSE, BITMASK, RELATIVE, RELATIVE_EC = range(4)
INDEX_NAMES = {DENSE: "dense", BITMASK: "bitmask", RELATIVE: "relative", RELATIVE_EC: "relative-ec"}
CENTROID_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
CENTROID_DTYPES = {v: k for k, v in CENTROID_CODES.items()}
DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
#: what decoding a malformed stream raises besides CheckpointError (numpy/torch shape and index errors)
DECODE_ERRORS = (ValueError, IndexError, RuntimeError, TypeError, KeyError, OverflowError)


@dataclass(frozen=True)
class Options:
    """Which layouts the encoder may use (it picks the cheapest allowed one per tensor)."""

    index: tuple[str, ...] = ("dense", "bitmask", "relative", "relative-ec")
    rows: bool = True
    entropy_values: bool = True
    max_b: int = 16

    def index_modes(self) -> list[int]:
        return [mode for mode, name in INDEX_NAMES.items() if name in self.index]


# -- which dtype each tensor is stored in -------------------------------------------------------


def _record_entries(record: Any) -> dict[str, dict[str, Any]]:
    if record is None:
        return {}
    if hasattr(record, "to_dict"):
        record = record.to_dict()
    if isinstance(record, dict):
        return {name: entry for name, entry in record.items() if isinstance(entry, dict)}
    return {}


def quant_plan(model: nn.Module, record: Any = None) -> dict[str, str]:
    """``{tensor: dtype}`` of quantized tensors (``intN``, ``cbN``, ``fp16``, ``bf16``): from the
    model's quantizers, else the record (a finalized model)."""
    dtypes = dict(params.quant_dtypes(model))
    state = dict(model.state_dict())
    for name, entry in _record_entries(record).items():
        if name in dtypes or name not in state or not state[name].is_floating_point():
            continue
        tensor = state[name]
        dtype, bits = entry.get("dtype"), entry.get("bits")
        if isinstance(dtype, str) and (dtype.startswith("cb") or params.is_quant_dtype(dtype) or params.group_dtype(dtype)):
            dtypes[name] = dtype
            continue
        if not isinstance(bits, int) or bits >= torch.finfo(tensor.dtype).bits:
            continue
        if bits < 16:
            dtypes[name] = f"int{bits}"
        elif torch.equal(tensor.to(torch.float16).to(tensor.dtype), tensor):
            dtypes[name] = "fp16"
        else:
            dtypes[name] = "bf16"
    return dtypes


def aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for tensors registered under several names (tied weights)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        if ".parametrizations." in name or name.startswith("parametrizations."):  # a parametrized model
            name = name.replace(".parametrizations.", ".").removeprefix("parametrizations.").removesuffix(".original")
        key = id(tensor)
        if key in first:
            out[name] = first[key]
        else:
            first[key] = name
    return out


# -- what each tensor is ----------------------------------------------------------------------


@dataclass
class Spec:
    """One state-dict tensor as stored: kind, effective value and (for codes) symbols + side info."""

    name: str
    effective: torch.Tensor  # exactly what decoding returns
    kind: int
    bits: int = 0  # N of intN / cbN
    codes: np.ndarray | None = None  # int64 symbols per element (INT, CODEBOOK; GROUPED: [rows, live columns])
    alphabet: int = 0
    zero_symbol: int | None = None  # the symbol of an exact zero (INT: qmax; CODEBOOK: K, if any)
    scales: torch.Tensor | None = None  # INT: fp32 per row (or one); GROUPED: fp16 values [rows, groups]
    centroids: torch.Tensor | None = None  # CODEBOOK: stored centroid values (their own dtype)
    value_dtype: torch.dtype | None = None  # NATIVE/FP16/BF16: dtype of a stored value
    group_size: int = 0  # GROUPED: inputs per scale
    live: np.ndarray | None = None  # GROUPED: bool per input column (the coded ones)

    def coded(self) -> tuple[torch.Tensor, np.ndarray | None]:
        """``(values, symbols)`` of the elements the layout codes: the tensor itself, or for
        GROUPED its ``[rows, live columns]`` matrix (the only kind whose symbols are 2-D)."""
        if self.kind != GROUPED:
            return self.effective, (self.codes.reshape(-1) if self.codes is not None else None)
        live = torch.from_numpy(self.live)
        rows = self.effective.shape[0] if self.effective.dim() > 1 else 1
        return self.effective.reshape(rows, -1)[:, live], self.codes.reshape(-1)


def _module_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, tensor_name = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), tensor_name


def state_order(model: nn.Module) -> list[str]:
    """State-dict names of the plain (unparametrized) model, sorted (the coding order)."""
    names = []
    for key in model.state_dict():
        if key.startswith("parametrizations.") or ".parametrizations." in key:
            if not key.endswith(".original"):
                continue  # masks, codes, centroids: parts of a parametrization
            key = key.replace(".parametrizations.", ".").removeprefix("parametrizations.")[: -len(".original")]
        if key not in names:
            names.append(key)
    return sorted(names)  # parametrizing a tensor moves it in state_dict order: sort for both sides


def effective_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model stores, with masks and quantization applied, by state-dict name."""
    tensors = {}
    for name, tensor in model.state_dict().items():
        if ".parametrizations." in name or name.startswith("parametrizations."):  # the root may be parametrized
            continue
        tensors[name] = tensor
    # Parametrized tensors appear as parametrizations.X.original; use their effective value.
    for module_name, module, tensor_name in params.compressed_tensors(model):
        key = f"{module_name}.{tensor_name}" if module_name else tensor_name
        tensors[key] = getattr(module, tensor_name).detach()
    return tensors


def specs(model: nn.Module, dtypes: dict[str, str] | None = None, skip: Any = (),
          values: dict[str, torch.Tensor] | None = None) -> list[Spec]:
    """Every state-dict tensor of ``model`` but ``skip`` (tied-weight aliases), in coding order.

    Quantizers attached to the model say how a tensor is stored; ``dtypes`` (see
    :func:`quant_plan`) covers finalized models (``{"fc.weight": "int4" | "cb3" | "fp16"}``).
    """
    from ..operators.codebook import SharedWeights

    recorded = dict(dtypes or {})
    skip = set(skip)
    out = []
    values = effective_tensors(model) if values is None else values
    for name in state_order(model):
        if name in skip:
            continue
        tensor = values[name]
        tensor = tensor.detach().cpu()
        module, tensor_name = _module_of(model, name)
        quant = params.get_quant(module, tensor_name) if params.parametrize.is_parametrized(module, tensor_name) else None
        dtype = quant.dtype if quant is not None else recorded.get(name)
        if not tensor.is_floating_point():
            out.append(Spec(name, tensor, NATIVE, value_dtype=tensor.dtype))
        elif isinstance(quant, SharedWeights) or (dtype or "").startswith("cb"):
            # parametrized or finalized alike: the distinct nonzero values are the centroids (used
            # ones only, ascending), so both give the same bytes and unused centroids cost nothing
            bits = int(dtype[2:])
            mask = tensor != 0
            centroids, nz = torch.unique(tensor[mask], return_inverse=True)
            if centroids.numel() > (1 << bits):
                raise CheckpointError(f"{name}: {centroids.numel()} distinct values in a cb{bits} tensor")
            if centroids.numel() == 0:
                centroids = torch.zeros(1, dtype=tensor.dtype)
            low = next(d for d in (torch.float16, torch.bfloat16, torch.float32)
                       if torch.equal(centroids.to(d).to(tensor.dtype), centroids))
            codes = torch.zeros(tensor.shape, dtype=torch.int64)
            codes[mask] = nz
            k = centroids.numel()
            symbols = torch.where(mask, codes, torch.full_like(codes, k)).numpy()
            out.append(Spec(name, tensor.clone(), CODEBOOK, bits, symbols, k, k, centroids=centroids.to(low)))
        elif params.group_dtype(dtype):
            bits, group_size = params.group_dtype(dtype)
            source = params.masked_tensor(module, tensor_name) if quant is not None else tensor
            out.append(grouped_spec(name, source.detach().cpu(), bits, group_size, tensor.dtype))
        elif dtype is not None and dtype.startswith("int"):
            bits = int(dtype[3:])
            source = params.masked_tensor(module, tensor_name) if quant is not None else tensor
            q, scale = params.quantize_int(source.detach().cpu(), bits)
            out.append(int_spec(name, q, scale, bits, tensor.dtype))
        elif dtype in ("fp16", "bf16"):
            low = torch.float16 if dtype == "fp16" else torch.bfloat16
            out.append(Spec(name, tensor.to(low).to(tensor.dtype), FP16 if dtype == "fp16" else BF16, value_dtype=low))
        else:
            out.append(Spec(name, tensor, NATIVE, value_dtype=tensor.dtype))
    return out


def int_spec(name: str, q: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> Spec:
    """The spec of an ``intN`` tensor from its codes ``q`` (in ``[-qmax, qmax]``) and per-row scales."""
    qmax = 2 ** (bits - 1) - 1
    effective = params.dequantize_int(q, scale).to(dtype)
    return Spec(name, effective, INT, bits, (q.to(torch.int64) + qmax).numpy(), 2 * qmax + 1, qmax,
                scales=scale.to(torch.float32))


def grouped_spec(name: str, source: torch.Tensor, bits: int, group_size: int,
                 dtype: torch.dtype = torch.float32) -> Spec:
    """The spec of an ``intNgG`` tensor quantized from ``source`` (the masked, unquantized weight,
    or the dequantized one: re-quantizing it gives the same codes)."""
    from ..operators.groupwise import as_matrix, group_dequantize, group_quantize

    q, scale, live = group_quantize(as_matrix(source), bits, group_size)
    qmax = 2 ** (bits - 1) - 1
    effective = group_dequantize(q, scale, live, group_size, source.shape, dtype)
    return Spec(name, effective, GROUPED, bits, (q.to(torch.int64) + qmax).numpy(), 2 * qmax + 1, qmax,
                scales=scale, group_size=group_size, live=live.numpy())


# -- float bit patterns -----------------------------------------------------------------------


def _float_bits(values: torch.Tensor, dtype: torch.dtype) -> tuple[np.ndarray, int]:
    """Raw bit patterns (as int64) and their width."""
    values = values.to(dtype).contiguous()
    if dtype == torch.float32:
        return values.view(torch.int32).numpy().astype(np.int64) & 0xFFFFFFFF, 32
    if dtype in (torch.float16, torch.bfloat16):
        return values.view(torch.int16).numpy().astype(np.int64) & 0xFFFF, 16
    if dtype == torch.float64:
        return values.view(torch.int64).numpy(), 64
    raise CheckpointError(f"cannot store values of dtype {dtype}")


def _from_bits(raw: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float32:
        return torch.from_numpy(raw.astype(np.uint32).view(np.int32).copy()).view(torch.float32)
    if dtype in (torch.float16, torch.bfloat16):
        return torch.from_numpy(raw.astype(np.uint16).view(np.int16).copy()).view(dtype)
    if dtype == torch.float64:
        return torch.from_numpy(raw.astype(np.int64).copy()).view(torch.float64)
    raise CheckpointError(f"cannot load values of dtype {dtype}")


def _exp_golomb_bits(values: np.ndarray) -> int:
    zig = np.where(values >= 0, 2 * values, -2 * values - 1) + 1
    return int((2 * np.floor(np.log2(zig)).astype(np.int64) + 1).sum())


def _write_exp_golomb(writer: E.BitWriter, values: np.ndarray) -> None:
    zig = (np.where(values >= 0, 2 * values, -2 * values - 1) + 1).astype(np.int64)
    for z in zig.tolist():
        n = z.bit_length() - 1
        writer.write(0, n)
        writer.write(1, 1)
        writer.write(z - (1 << n), n)


def _read_exp_golomb(reader: E.BitReader, count: int) -> np.ndarray:
    out = []
    for _ in range(count):
        n = 0
        while reader.read(1) == 0:
            n += 1
        z = (1 << n) + reader.read(n)
        z -= 1
        out.append(z // 2 if z % 2 == 0 else -(z + 1) // 2)
    return np.array(out, dtype=np.int64)


# -- planning ---------------------------------------------------------------------------------


@dataclass
class Plan:
    bits: int
    constant: bool = False
    rows: np.ndarray | None = None  # bool per row (kept) when the row bitmask is used
    index: int = DENSE
    b: int = 0
    gap_plan: E.StreamPlan | None = None
    gaps: np.ndarray | None = None
    entries: int = 0
    huffman_values: bool = False
    value_plan: E.StreamPlan | None = None
    breakdown: dict[str, int] = field(default_factory=dict)


def _gap_symbols(positions: np.ndarray, b: int) -> np.ndarray:
    """Bounded-gap symbols (fillers ``2^b-1``) of sorted positions."""
    gaps = np.diff(positions, prepend=-1) - 1
    m = (1 << b) - 1
    fillers = gaps // m
    residual = gaps - fillers * m
    count = fillers + 1
    out = np.full(int(count.sum()), m, dtype=np.int64)
    out[np.cumsum(count) - 1] = residual
    return out


def _group_side_bits(spec: Spec) -> int:
    """GROUPED side info before the row bitmask: ``G-1``, the column flag and bitmask."""
    return GROUP_BITS + 1 + (0 if spec.live.all() else spec.live.size)


def _alphabet(spec: Spec, stream: np.ndarray) -> int:
    """Symbols of a coded value stream: codebook streams get the zero symbol only if they use it."""
    if spec.kind == CODEBOOK:
        return spec.alphabet + int(bool((stream == spec.zero_symbol).any()))
    return spec.alphabet


def _value_width(spec: Spec) -> int:
    if spec.kind in CODED:
        return E.width(spec.alphabet)
    return _float_bits(torch.zeros(1), spec.value_dtype)[1] if spec.value_dtype.is_floating_point else 64


def _header_bits(spec: Spec) -> int:
    return 3 + (3 if spec.kind in CODED else 0) + 1


def plan_tensor(spec: Spec, options: Options = Options()) -> Plan:
    """The cheapest allowed layout of ``spec`` and its exact size in bits."""
    t, symbols_all = spec.coded()
    head = _header_bits(spec)
    if not t.is_floating_point():
        bits = head + _exp_golomb_bits(t.reshape(-1).numpy().astype(np.int64))
        return Plan(bits, breakdown={"ints": bits})
    flat = t.reshape(-1)
    numel = flat.numel()
    side = 0
    if spec.kind == CODEBOOK:
        side = 8 + 2 + 1 + spec.centroids.numel() * torch.finfo(spec.centroids.dtype).bits
    elif spec.kind == GROUPED:
        side = _group_side_bits(spec)
    # constant tensors: one value (only for plain floats: codes need their side info anyway)
    if spec.kind not in CODED and numel > 0 and bool((flat == flat[0]).all()):
        width = _value_width(spec)
        return Plan(head + width, constant=True, breakdown={"constants": width, "header": head})
    best: Plan | None = None
    row_options = [False]
    row_flag = 1 if t.dim() >= 2 and t.shape[0] > 1 else 0  # always present: decoding needs no Options
    if options.rows and row_flag:
        row_options.append(True)
    nonzero_all = (flat != 0).numpy()
    for use_rows in row_options:
        if use_rows:
            kept = nonzero_all.reshape(t.shape[0], numel // t.shape[0]).any(axis=1)
            if kept.all():
                continue
            sel = np.repeat(kept, numel // t.shape[0])
            nonzero = nonzero_all[sel]
            symbols = symbols_all[sel] if symbols_all is not None else None
            row_bits = t.shape[0]
            n_scales = int(kept.sum()) if spec.kind == INT else 0
            if spec.kind == GROUPED:
                n_scales = int(kept.sum()) * spec.scales.shape[1]
        else:
            kept = None
            nonzero = nonzero_all
            symbols = symbols_all
            row_bits = 0
            n_scales = (t.shape[0] if t.dim() >= 2 else 1) if spec.kind == INT else 0
            if spec.kind == GROUPED:
                n_scales = spec.scales.numel()
        inner = nonzero.size
        scale_bits = (16 if spec.kind == GROUPED else 32) * n_scales
        fixed = head + row_flag + 2 + row_bits + side + scale_bits
        positions = np.flatnonzero(nonzero)
        for index in options.index_modes():
            if index == DENSE:
                idx_bits, idx_plan = 0, {}
                stream = symbols
            else:
                stream = symbols[positions] if symbols is not None else None
                if index == BITMASK:
                    idx_bits, idx_plan = inner, {}
                else:
                    best_idx = None
                    for b in range(1, options.max_b + 1):
                        if (1 << (b - 1)) > max(inner, 1):
                            break
                        gaps = _gap_symbols(positions, b)
                        if index == RELATIVE:
                            cost, gp = gaps.size * b, None
                        else:
                            gp = E.plan(gaps, 1 << b)
                            cost = gp.bits
                        cost += 4 + E.width(inner + 1)
                        if best_idx is None or cost < best_idx[0]:
                            best_idx = (cost, {"b": b, "gaps": gaps, "gap_plan": gp, "entries": gaps.size})
                    idx_bits, idx_plan = best_idx
            if stream is not None:
                alphabet = _alphabet(spec, stream)
                raw = stream.size * E.width(alphabet)
                vplan = E.plan(stream, alphabet) if options.entropy_values and stream.size else None
                huff = vplan is not None and vplan.bits < raw
                val_bits = 1 + (vplan.bits if huff else raw)
            else:
                count = inner if index == DENSE else positions.size
                val_bits = count * _value_width(spec)
                huff, vplan = False, None
            total = fixed + idx_bits + val_bits
            if best is None or total < best.bits:
                value_table = vplan.table_bits if huff else 0
                gap_table = idx_plan["gap_plan"].table_bits if idx_plan.get("gap_plan") is not None else 0
                columns = side - GROUP_BITS - 1 if spec.kind == GROUPED else 0  # the live-column bitmask
                best = Plan(total, rows=kept, index=index, huffman_values=huff, value_plan=vplan if huff else None,
                            breakdown={"header": head + row_flag + 2 + (side - columns if spec.kind == GROUPED else 0),
                                       "rows": row_bits, "index": idx_bits - gap_table + columns,
                                       "values": val_bits - value_table, "scales": scale_bits,
                                       "codebook": side if spec.kind == CODEBOOK else 0, "tables": value_table + gap_table},
                            **{k: v for k, v in idx_plan.items()})
    if best is None:
        raise CheckpointError(f"{spec.name}: no allowed layout")
    return best


# -- writing / reading ------------------------------------------------------------------------


def _write_tensor(w: E.BitWriter, spec: Spec, plan: Plan, options: Options) -> None:
    start = w.bits
    t, symbols_all = spec.coded()
    w.write(spec.kind, 3)
    if spec.kind in CODED:
        w.write(spec.bits - 1, 3)
    if not t.is_floating_point():
        w.write(0, 1)
        _write_exp_golomb(w, t.reshape(-1).numpy().astype(np.int64))
        return _check(w, start, plan, spec)
    flat = t.reshape(-1)
    w.write(int(plan.constant), 1)
    if plan.constant:
        raw, width = _float_bits(flat[:1], spec.value_dtype)
        w.write(int(raw[0]), width)
        return _check(w, start, plan, spec)
    if t.dim() >= 2 and t.shape[0] > 1:
        w.write(int(plan.rows is not None), 1)
    w.write(plan.index, 2)
    if spec.kind == CODEBOOK:
        w.write(spec.centroids.numel() - 1, 8)
        w.write(CENTROID_CODES[spec.centroids.dtype], 2)
        raw, width = _float_bits(spec.centroids, spec.centroids.dtype)
        w.write_many(raw, width)
    elif spec.kind == GROUPED:
        w.write(spec.group_size - 1, GROUP_BITS)
        w.write(int(not spec.live.all()), 1)
        if not spec.live.all():
            w.write_many(spec.live.astype(np.int64), 1)
    sel = slice(None)
    if plan.rows is not None:
        w.write_many(plan.rows.astype(np.int64), 1)
        sel = np.repeat(plan.rows, flat.numel() // t.shape[0])
    if spec.kind == INT:
        scales = spec.scales.reshape(-1)
        if plan.rows is not None:
            scales = scales[torch.from_numpy(plan.rows)]
        raw, _ = _float_bits(scales, torch.float32)
        w.write_many(raw, 32)
    elif spec.kind == GROUPED:
        scales = spec.scales
        if plan.rows is not None:
            scales = scales[torch.from_numpy(plan.rows)]
        raw, _ = _float_bits(scales.reshape(-1), torch.float16)
        w.write_many(raw, 16)
    nonzero = (flat != 0).numpy()[sel]
    positions = np.flatnonzero(nonzero)
    if plan.index == BITMASK:
        w.write_many(nonzero.astype(np.int64), 1)
    elif plan.index in (RELATIVE, RELATIVE_EC):
        w.write(plan.b - 1, 4)
        w.write(plan.entries, E.width(nonzero.size + 1))
        if plan.index == RELATIVE:
            w.write_many(plan.gaps, plan.b)
        else:
            E.write_stream(w, plan.gaps, 1 << plan.b, plan.gap_plan)
    if symbols_all is not None:
        symbols = symbols_all[sel]
        if plan.index != DENSE:
            symbols = symbols[positions]
        alphabet = _alphabet(spec, symbols)
        w.write(int(plan.huffman_values), 1)
        if spec.kind == CODEBOOK:
            w.write(alphabet - spec.alphabet, 1)
        if plan.huffman_values:
            E.write_stream(w, symbols, alphabet, plan.value_plan)
        else:
            w.write_many(symbols, E.width(alphabet))
    else:
        values = flat[torch.from_numpy(np.asarray(sel))] if plan.rows is not None else flat
        if plan.index != DENSE:
            values = values[torch.from_numpy(positions)]
        raw, width = _float_bits(values, spec.value_dtype)
        w.write_many(raw, width)
    return _check(w, start, plan, spec)


def _check(w: E.BitWriter, start: int, plan: Plan, spec: Spec) -> None:
    if w.bits - start != plan.bits:
        raise AssertionError(f"{spec.name}: wrote {w.bits - start} bits, planned {plan.bits}")


def _read_tensor(r: E.BitReader, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    kind = r.read(3)
    if kind not in KIND_NAMES:
        raise CheckpointError(f"unknown tensor kind {kind}")
    bits = r.read(3) + 1 if kind in CODED else 0
    numel = math.prod(shape)
    if not dtype.is_floating_point:
        r.read(1)
        return torch.from_numpy(_read_exp_golomb(r, numel)).to(dtype).reshape(shape)
    value_dtype = {NATIVE: dtype, FP16: torch.float16, BF16: torch.bfloat16}.get(kind)
    if r.read(1):  # constant
        width = 32 if value_dtype == torch.float32 else 16 if value_dtype in (torch.float16, torch.bfloat16) else 64
        value = _from_bits(np.array([r.read(width)]), value_dtype).to(dtype)
        return value.expand(numel).reshape(shape).clone()
    if kind == GROUPED:
        return _read_grouped(r, shape, dtype, bits)
    use_rows = bool(r.read(1)) if len(shape) >= 2 and shape[0] > 1 else False
    index = r.read(2)
    centroids = None
    if kind == CODEBOOK:
        k = r.read(8) + 1
        cdtype = CENTROID_DTYPES[r.read(2)]
        width = torch.finfo(cdtype).bits
        centroids = _from_bits(r.read_many(k, width), cdtype).to(torch.float32)
    rows = shape[0] if len(shape) >= 1 else 1
    kept = np.ones(rows, dtype=bool)
    if use_rows:
        kept = r.read_many(rows, 1).astype(bool)
    per_row = numel // rows if rows else 0
    inner = int(kept.sum()) * per_row
    scales = None
    if kind == INT:
        n_scales = int(kept.sum()) if use_rows else (rows if len(shape) >= 2 else None)
        if n_scales is None:  # 1-D or scalar: one scale unless one per element was stored (never for 1-D)
            n_scales = 1
        scales = _from_bits(r.read_many(n_scales, 32), torch.float32)
    positions = _read_positions(r, index, inner)
    count = positions.size
    if kind in (INT, CODEBOOK):
        huff = r.read(1)
        alphabet = (2 ** bits - 1) if kind == INT else centroids.numel() + r.read(1)
        symbols = E.read_stream(r, count, alphabet) if huff else r.read_many(count, E.width(alphabet))
    inner_values = torch.zeros(inner, dtype=torch.float32 if kind in (INT, CODEBOOK) else value_dtype)
    if kind == INT:
        qmax = 2 ** (bits - 1) - 1
        q = torch.zeros(inner, dtype=torch.int64)
        q[torch.from_numpy(positions)] = torch.from_numpy(symbols) - qmax
        full_q = torch.zeros(numel, dtype=torch.int64)
        full_q[torch.from_numpy(np.repeat(kept, per_row))] = q
        full_scales = torch.ones(rows, dtype=torch.float32)
        if len(shape) >= 2:
            full_scales[torch.from_numpy(kept)] = scales
            return params.dequantize_int(full_q.reshape(shape), full_scales).to(dtype)
        return params.dequantize_int(full_q.reshape(shape), scales).to(dtype)
    if kind == CODEBOOK:
        table = torch.cat([centroids, torch.zeros(1)])
        inner_values[torch.from_numpy(positions)] = table[torch.from_numpy(symbols)]
    else:
        width = 32 if value_dtype == torch.float32 else 16 if value_dtype in (torch.float16, torch.bfloat16) else 64
        inner_values[torch.from_numpy(positions)] = _from_bits(r.read_many(count, width), value_dtype)
    out = torch.zeros(numel, dtype=inner_values.dtype)
    out[torch.from_numpy(np.repeat(kept, per_row))] = inner_values
    return out.to(dtype).reshape(shape)


def _read_positions(r: E.BitReader, index: int, inner: int) -> np.ndarray:
    """Positions of the coded values among ``inner`` elements, read as ``index`` stores them."""
    if index == DENSE:
        return np.arange(inner)
    if index == BITMASK:
        return np.flatnonzero(r.read_many(inner, 1))
    b = r.read(4) + 1
    entries = r.read(E.width(inner + 1))
    gaps = r.read_many(entries, b) if index == RELATIVE else E.read_stream(r, entries, 1 << b)
    m = (1 << b) - 1
    real = gaps != m
    advance = np.where(real, gaps + 1, m)
    ends = np.cumsum(advance)
    positions = ends[real] - 1
    if positions.size and positions[-1] >= inner:
        raise CheckpointError("relative index runs past the tensor end")
    return positions


def _read_grouped(r: E.BitReader, shape: tuple[int, ...], dtype: torch.dtype, bits: int) -> torch.Tensor:
    """A GROUPED tensor after its kind, bits and constant fields (see the module docstring)."""
    from ..operators.groupwise import group_dequantize

    rows = shape[0] if len(shape) >= 2 else 1
    cols = math.prod(shape) // rows if rows else 0
    use_rows = bool(r.read(1)) if rows > 1 else False
    index = r.read(2)
    group_size = r.read(GROUP_BITS) + 1
    live = r.read_many(cols, 1).astype(bool) if r.read(1) else np.ones(cols, dtype=bool)
    live_cols = int(live.sum())
    groups = math.ceil(live_cols / group_size)
    kept = r.read_many(rows, 1).astype(bool) if use_rows else np.ones(rows, dtype=bool)
    n_kept = int(kept.sum())
    scales = _from_bits(r.read_many(n_kept * groups, 16), torch.float16).float().reshape(n_kept, groups)
    positions = _read_positions(r, index, n_kept * live_cols)
    huff = r.read(1)
    qmax = 2 ** (bits - 1) - 1
    alphabet = 2 * qmax + 1
    symbols = E.read_stream(r, positions.size, alphabet) if huff else r.read_many(positions.size, E.width(alphabet))
    q = torch.zeros(n_kept * live_cols, dtype=torch.int64)
    q[torch.from_numpy(positions)] = torch.from_numpy(symbols) - qmax
    full_q = torch.zeros(rows, live_cols, dtype=torch.int64)
    full_q[torch.from_numpy(kept)] = q.reshape(n_kept, live_cols)
    full_scales = torch.ones(rows, groups, dtype=torch.float32)  # dropped rows: codes 0 (as quantizing them gives)
    full_scales[torch.from_numpy(kept)] = scales
    return group_dequantize(full_q, full_scales, torch.from_numpy(live), group_size, shape, dtype)


# -- the whole file ---------------------------------------------------------------------------


def container_bytes(payload_bytes: int) -> int:
    """Exact size of the safetensors file holding a ``payload_bytes`` blob (header included)."""
    return len(safetensors_bytes({ENTRY: torch.zeros(payload_bytes, dtype=torch.uint8)}))


def _role(spec: Spec) -> str:
    if not spec.effective.is_floating_point():
        return "integers"
    return "weights" if spec.effective.dim() >= 2 else "biases/norms"


@dataclass
class Size:
    """Exact size of a packed file and how its bits split by tensor, role and part."""

    file_bytes: int
    payload_bytes: int
    bits: int
    tensors: dict[str, Plan]
    roles: dict[str, str] = field(default_factory=dict)  # tensor -> "weights" | "biases/norms" | "integers"

    def by_role(self) -> dict[str, dict[str, int]]:
        """Bits by role and part, plus the container (safetensors header, payload header, padding)."""
        out: dict[str, dict[str, int]] = {}
        for name, plan in self.tensors.items():
            role = out.setdefault(self.roles.get(name, "other"), {})
            for key, value in plan.breakdown.items():
                role[key] = role.get(key, 0) + value
        out["container"] = {"safetensors header": 8 * (self.file_bytes - self.payload_bytes),
                            "version and layout hash": HEADER_BITS, "padding": 8 * self.payload_bytes - self.bits}
        return out

    def breakdown(self) -> dict[str, int]:
        """Bits by part (values, index, rows, scales, codebook, tables, header) over all tensors."""
        out: dict[str, int] = {}
        for plan in self.tensors.values():
            for key, value in plan.breakdown.items():
                out[key] = out.get(key, 0) + value
        return out


def packed_size(tensor_specs: list[Spec], options: Options = Options()) -> Size:
    """Exact size of the file :func:`encode` + the container would make, without coding anything."""
    plans = {spec.name: plan_tensor(spec, options) for spec in tensor_specs}
    total = HEADER_BITS + sum(plan.bits for plan in plans.values())
    payload = math.ceil(total / 8)
    return Size(container_bytes(payload), payload, total, plans, {spec.name: _role(spec) for spec in tensor_specs})


def describe(spec: Spec, plan: Plan) -> dict[str, Any]:
    """The manifest's entry for one tensor (shape and dtype are what the decoder needs)."""
    kind = KIND_NAMES[spec.kind] + (str(spec.bits) if spec.kind in CODED else "")
    entry: dict[str, Any] = {"shape": list(spec.effective.shape), "dtype": DTYPE_NAMES[spec.effective.dtype],
                             "kind": kind, "bits": plan.bits}
    if spec.effective.is_floating_point() and not plan.constant:
        entry.update({"index": INDEX_NAMES[plan.index], "rows": plan.rows is not None})
        if plan.index in (RELATIVE, RELATIVE_EC):
            entry["b"] = plan.b
        if spec.kind in CODED:
            entry["entropy_values"] = plan.huffman_values
        if spec.kind == GROUPED:
            entry.update({"group_size": spec.group_size, "scale_dtype": "float16",
                          "live_columns": int(spec.live.sum()), "columns": int(spec.live.size)})
    elif plan.constant:
        entry["constant"] = True
    return entry


def encode(tensor_specs: list[Spec], digest: bytes, options: Options = Options(), size: Size | None = None) -> tuple[bytes, Size]:
    """``(safetensors file bytes, size)``: every tensor in one bit string, ``digest`` (8 bytes of
    the layout hash) in the header. Raises if the written size differs from :func:`packed_size`."""
    w = E.BitWriter()
    w.write(VERSION, VERSION_BITS)
    w.write(int.from_bytes(digest[:8], "little"), DIGEST_BITS)
    size = size if size is not None else packed_size(tensor_specs, options)
    for spec in sorted(tensor_specs, key=lambda item: item.name):  # the decoder's order
        _write_tensor(w, spec, size.tensors[spec.name], options)
    payload = w.getvalue()
    if len(payload) != size.payload_bytes:
        raise AssertionError(f"payload {len(payload)} bytes, planned {size.payload_bytes}")
    blob = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.zeros(0, dtype=torch.uint8)
    data = safetensors_bytes({ENTRY: blob})
    if len(data) != size.file_bytes:
        raise AssertionError(f"file {len(data)} bytes, planned {size.file_bytes}")
    return data, size


def decode(payload: bytes, template: dict[str, tuple[tuple[int, ...], torch.dtype]], digest: bytes) -> dict[str, torch.Tensor]:
    """Tensors of ``template`` (``{name: (shape, dtype)}``, coded in sorted name order); ``digest``
    is the layout hash the payload must carry."""
    r = E.BitReader(payload)
    try:
        version = r.read(VERSION_BITS)
        stored = r.read(DIGEST_BITS)
    except ValueError:
        raise CheckpointError("packed payload shorter than its header") from None
    if version != VERSION:
        raise CheckpointError(f"packed payload version {version}, this condensa reads {VERSION}")
    if stored != int.from_bytes(digest[:8], "little"):
        raise CheckpointError("tensor layout hash mismatch between the manifest and the weights file; the manifest was edited")
    out = {}
    for name in sorted(template):
        shape, dtype = template[name]
        try:
            out[name] = _read_tensor(r, tuple(shape), dtype)
        except CheckpointError as error:
            raise CheckpointError(f"tensor '{name}': {error}") from None
        except DECODE_ERRORS as error:
            raise CheckpointError(f"tensor '{name}' cannot be decoded ({type(error).__name__}: {error})") from None
    if math.ceil(r.pos / 8) != len(payload):
        raise CheckpointError(f"{len(payload) * 8 - r.pos} unused bits at the end of the payload")
    return out


__all__ = ["Options", "Spec", "Size", "quant_plan", "aliases", "specs", "grouped_spec", "plan_tensor", "packed_size", "describe",
           "encode", "decode", "container_bytes", "ENTRY", "VERSION", "DTYPES", "DTYPE_NAMES", "DECODE_ERRORS"]
