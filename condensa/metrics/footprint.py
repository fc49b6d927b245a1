"""Compressed footprint: the exact size of the packed weights file.

A pruned tensor of fp32 zeros saves nothing on disk; what matters is the information it holds.
:func:`footprint` is the exact byte count of the ``model.safetensors`` that
:func:`condensa.export.save` writes for the model (container included; see
:mod:`condensa.packing.layout`: sparse indices, integer / codebook codes, entropy-coded), computed
from histograms without coding anything. It is what searches minimize and what ratios report.

:func:`tensor_cost` costs the simpler fixed-width layouts of format 1 (no entropy coding), per
tensor; it stays as a closed-form reference (benchmarks compare against it):

* ``dense``: ``numel * value_bits``
* ``bitmask``: one bit per element plus the nonzero values
* ``relative``: relative-index (gap) coding as in Deep Compression (Han et al., 2016): each
  nonzero stores its value and the count of zeros before it in ``b`` bits; a run longer than
  ``2^b - 1`` inserts filler entries. ``b`` is chosen per tensor (1..16) to minimize the total.
* ``nm``: N:M semi-structured (every group of ``m`` along the input dim has <= ``n`` nonzeros):
  ``n`` values and ``ceil(log2 m)``-bit positions per group.
* rows that are entirely zero (filter / neuron pruning) are dropped first at one bit per row,
  and the remaining rows are costed with the encodings above.

Integer-quantized tensors add one fp32 scale per output channel. Tensors the strategy did not
touch (biases, norms, buffers) cost their dtype's bits. Hand-written because no library costs
sparse + quantized encodings this way; the export writes exactly these layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..operators.prune import nm_groups

SCALE_BITS = 32


@dataclass(frozen=True)
class TensorCost:
    """Bits of one tensor in its best encoding, and which encoding that is."""

    bits: int
    encoding: str
    value_bits: int
    nnz: int
    numel: int
    index_bits: int = 0  # the ``b`` of relative coding, or log2(m) for N:M
    rows_dropped: int = 0
    nm: tuple[int, int] | None = None


def relative_cost(flat_nonzero: torch.Tensor, numel: int, value_bits: int) -> tuple[int, int]:
    """``(bits, b)`` of relative-index coding for the nonzero positions of a flat tensor."""
    positions = torch.nonzero(flat_nonzero, as_tuple=False).reshape(-1).to(torch.int64)
    nnz = positions.numel()
    if nnz == 0:
        return 0, 1
    gaps = torch.diff(positions, prepend=torch.tensor([-1], dtype=torch.int64)) - 1
    best = None
    for b in range(1, 17):
        fillers = int((gaps >> b).sum())  # a filler entry covers 2^b positions
        bits = (nnz + fillers) * (value_bits + b)
        if best is None or bits < best[0]:
            best = (bits, b)
    return best


def _nm_pattern(tensor: torch.Tensor, nonzero: torch.Tensor, value_bits: int = 32) -> tuple[int, int] | None:
    """The cheapest (n, m) of the common N:M patterns the tensor satisfies, or None.

    A tensor that satisfies 1:8 also satisfies 1:4 (and 2:8 implies 2:4), so the first satisfied
    pattern is not the cheapest one: cost each, ``n * (value_bits + ceil(log2 m)) / m`` bits per
    element, and keep the smallest (ties go to the earlier pattern).
    """
    if tensor.dim() < 2:
        return None
    best = None
    for n, m in ((1, 4), (2, 4), (1, 8), (2, 8), (4, 8)):
        if tensor.shape[1] % m == 0 and bool((nm_groups(nonzero, m).sum(dim=-1) <= n).all()):
            per_element = n * (value_bits + max(1, math.ceil(math.log2(m)))) / m
            if best is None or per_element < best[0]:
                best = (per_element, (n, m))
    return best[1] if best is not None else None


def tensor_cost(tensor: torch.Tensor, value_bits: int, scales: int = 0) -> TensorCost:
    """Cost of ``tensor`` stored with ``value_bits`` per value plus ``scales`` fp32 scales."""
    tensor = tensor.detach()
    numel = tensor.numel()
    nonzero = tensor != 0
    nnz = int(nonzero.sum())
    extra = scales * SCALE_BITS
    options = [TensorCost(numel * value_bits + extra, "dense", value_bits, nnz, numel)]
    if numel == 0 or not tensor.is_floating_point():
        return options[0]
    flat = nonzero.reshape(-1)
    options.append(TensorCost(numel + nnz * value_bits + extra, "bitmask", value_bits, nnz, numel))
    rel_bits, b = relative_cost(flat, numel, value_bits)
    options.append(TensorCost(rel_bits + extra, "relative", value_bits, nnz, numel, index_bits=b))
    nm = _nm_pattern(tensor, nonzero, value_bits)
    if nm is not None:
        n, m = nm
        idx = max(1, math.ceil(math.log2(m)))
        groups = numel // m
        options.append(TensorCost(groups * n * (value_bits + idx) + extra, "nm", value_bits, nnz, numel, idx, nm=nm))
    if tensor.dim() >= 2:
        rows_alive = nonzero.reshape(tensor.shape[0], -1).any(dim=1)
        dropped = int((~rows_alive).sum())
        if dropped:
            kept = tensor.reshape(tensor.shape[0], -1)[rows_alive]
            inner = tensor_cost(kept, value_bits)
            row_scales = int(rows_alive.sum()) if scales else 0
            options.append(
                TensorCost(
                    inner.bits + tensor.shape[0] + row_scales * SCALE_BITS,
                    "rows+" + inner.encoding,
                    value_bits,
                    nnz,
                    numel,
                    inner.index_bits,
                    dropped,
                )
            )
    return min(options, key=lambda c: c.bits)


def dtype_bits(tensor: torch.Tensor) -> int:
    if tensor.dtype == torch.bool:
        return 1
    return torch.finfo(tensor.dtype).bits if tensor.is_floating_point() else torch.iinfo(tensor.dtype).bits


@dataclass
class Footprint:
    """Model footprint: the packed file's bytes, the fp32 reference bytes, and per-tensor bits."""

    bytes: float
    reference_bytes: float
    tensors: dict[str, int]  # bits of each stored tensor (its header, index, side info and values)
    breakdown: dict[str, dict[str, int]] = field(default_factory=dict)  # bits by role and part

    @property
    def compression_ratio(self) -> float:
        return self.reference_bytes / self.bytes if self.bytes else float("inf")


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model stores, with masks and quantization applied, by state-dict name."""
    from ..packing.layout import effective_tensors

    return effective_tensors(model)


def footprint(model: nn.Module, bits: dict[str, int] | None = None, record: Any = None) -> Footprint:
    """Exact size of the packed file of ``model`` (unshrunk: after FilterPrune / NeuronPrune the
    exported file is smaller still, since surgery also removes the next layer's inputs).

    How each tensor is stored comes from the model's quantizers; for a finalized model pass
    ``record`` (or ``bits``, e.g. ``record.bits``: value bits per tensor, < 16 meaning ``intN``).
    """
    from ..packing import layout as packing  # the format both this metric and the exporter use

    if record is None and bits:
        record = {name: {"bits": int(b)} for name, b in bits.items()}
    dtypes = packing.quant_plan(model, record)
    values = model_tensors(model)
    specs = packing.specs(model, dtypes, packing.aliases(model), values)
    size = packing.packed_size(specs)
    reference = 0
    for tensor in values.values():
        reference += tensor.numel() * (32 if tensor.is_floating_point() else dtype_bits(tensor))
    return Footprint(bytes=size.file_bytes, reference_bytes=reference / 8,
                     tensors={name: plan.bits for name, plan in size.tensors.items()}, breakdown=size.by_role())
