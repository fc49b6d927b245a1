"""Weight-only group-wise integer quantization: ``Quantize("int4", group_size=32)``, dtype ``int4g32``.

Round-to-nearest, symmetric, one scale per group of ``group_size`` consecutive inputs of each
output row (the layout int4 inference kernels read, as in GPTQ/AWQ checkpoints). For a weight
viewed as ``[out, in]`` (convolutions and embeddings flattened per output row):

    scale[r, g] = fp16(max_{c in group g} |W[r, c]| / qmax)         qmax = 2^(bits-1) - 1
    q[r, c]     = clamp(round(W[r, c] / scale[r, g]), -qmax, qmax)   (-7..7 for int4)
    W'[r, c]    = q[r, c] * scale[r, g]

* Scales are rounded to fp16 *before* the codes are computed, so ``W'`` is exactly what the
  packed file holds (codes and fp16 scales), and re-quantizing ``W'`` gives ``W'`` again: the
  group maximum has code ``qmax``, and ``qmax * s / qmax`` is exact in fp32 for an fp16 ``s``.
  (Not for groups whose scale is an fp16 subnormal, i.e. largest ``|w|`` below ~4e-4, where
  the rounding error of ``s`` can move the maximum's code; such groups are not expected in
  trained weights.)
* The last group of a row may be shorter when the live column count is not a multiple.
* Dead input columns (zero in every row, e.g. the ``o_proj`` columns of a pruned head) are
  skipped when forming groups: groups run over the live columns only, so surgery that deletes
  dead columns later leaves every group, scale and code as it was (quantize-then-shrink equals
  shrink-then-quantize). A column that only becomes zero by rounding is dropped too and the
  groups are formed again (a fixed point: what makes the quantizer idempotent).

Hand-written: the formula is a few tensor operations; libraries that implement it (e.g.
``torchao``, ``optimum-quanto``) swap modules for their own kernels instead of keeping the
user's module and a straight-through fake quantizer, and store scales their own way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .params import FakeQuantize, group_dtype

SCALE_DTYPE = torch.float16
SCALE_BITS = 16
#: group sizes the packed format can store (``group_size - 1`` in 16 bits)
GROUP_SIZE_MIN, GROUP_SIZE_MAX = 2, 1 << 16
_FP16_MAX = torch.finfo(torch.float16).max


def as_matrix(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` viewed ``[rows, inputs]``: dim 0 is the output row, the rest flattened."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)


def _rtn(compact: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes ``[rows, cols]`` and fp16-valued fp32 scales ``[rows, groups]`` of a live-column matrix."""
    qmax = 2 ** (bits - 1) - 1
    rows, cols = compact.shape
    groups = math.ceil(cols / group_size)
    padded = F.pad(compact.float(), (0, groups * group_size - cols)) if cols % group_size else compact.float()
    blocks = padded.reshape(rows, groups, group_size)
    scale = (blocks.abs().amax(dim=2) / qmax).clamp(max=_FP16_MAX).to(SCALE_DTYPE).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: codes 0, scale 1
    q = torch.clamp(torch.round(blocks / scale.unsqueeze(2)), -qmax, qmax)
    return q.reshape(rows, -1)[:, :cols], scale


def group_quantize(matrix: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(codes [rows, live], scales [rows, groups] (fp32 holding fp16 values), live [inputs] bool)``
    of a ``[rows, inputs]`` matrix; groups run over the live columns (see the module docstring)."""
    matrix = matrix.detach()
    live = (matrix != 0).any(dim=0)
    while True:
        q, scale = _rtn(matrix if bool(live.all()) else matrix[:, live], bits, group_size)
        alive = (q != 0).any(dim=0)
        if bool(alive.all()):
            return q, scale, live
        live = live.clone()
        live[live.clone()] = alive  # a column rounded to zero everywhere: regroup without it


def group_dequantize(q: torch.Tensor, scale: torch.Tensor, live: torch.Tensor, group_size: int,
                     shape: tuple[int, ...] | torch.Size, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The tensor of ``shape`` that codes ``q`` over the ``live`` columns and ``scale`` represent."""
    rows, cols = q.shape
    groups = scale.shape[1]
    padded = F.pad(q.float(), (0, groups * group_size - cols)) if cols % group_size else q.float()
    compact = (padded.reshape(rows, groups, group_size) * scale.float().unsqueeze(2)).reshape(rows, -1)[:, :cols]
    if cols == live.numel():  # every column live (the common case): no scatter
        return compact.reshape(shape).to(dtype)
    full = torch.zeros(rows, live.numel(), dtype=torch.float32, device=q.device)
    full[:, live] = compact
    return full.reshape(shape).to(dtype)


class GroupFakeQuantize(FakeQuantize):
    """Group-wise symmetric round-to-nearest fake quantizer (dtype ``intNgG``), straight-through
    gradient like :class:`~condensa.operators.params.FakeQuantize`."""

    def __init__(self, dtype: str) -> None:
        parsed = group_dtype(dtype)
        if parsed is None:
            raise ValueError(f"group-wise dtype must look like int4g32, got {dtype!r}")
        super().__init__(dtype)
        self.bits, self.group_size = parsed

    def codes(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """See :func:`group_quantize`."""
        return group_quantize(as_matrix(weight), self.bits, self.group_size)

    def quantized(self, weight: torch.Tensor) -> torch.Tensor:
        q, scale, live = self.codes(weight)
        return group_dequantize(q, scale, live, self.group_size, weight.shape, weight.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, group_size={self.group_size}, scale_dtype=fp16"


__all__ = ["GroupFakeQuantize", "group_quantize", "group_dequantize", "as_matrix", "SCALE_BITS",
           "GROUP_SIZE_MIN", "GROUP_SIZE_MAX"]
