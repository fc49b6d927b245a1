"""Weight sharing (Deep Compression's trained quantization) and small-tensor precision.

``Codebook(bits=b)`` clusters the nonzero weights of each selected tensor with 1-D k-means into
``2^b`` centroids (linear initialization between min and max, as Han et al. found best). The
tensor then *is* ``centroids[codes]`` at the mask's positions: a :class:`SharedWeights`
parametrization holds the centroids as a trainable parameter (recovery fine-tunes them: each
centroid receives the summed gradient of its weights) and the codes as a buffer. By default the
gradient also passes straight through to the underlying weights and every weight is re-assigned
to its nearest centroid in each forward (``fixed_codes=False``); Deep Compression's fixed codes
(``fixed_codes=True``) do not recover one-shot pruning to a few percent. Compose it after pruning:
``Compose([Prune(0.03), Codebook(bits=4)])``; ``bits`` may be an integer knob. Footprint and
export store ``b``-bit codes (entropy-coded) plus the table of centroids actually used.

``QuantizeAux(dtype, fold_norm=True)`` stores what the weight operators leave alone -- biases and
BatchNorm parameters -- in ``fp16``/``bf16``/``intN`` (see its docstring for the BatchNorm fold,
done after recovery by :meth:`QuantizeAux.finish`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..knobs import Choice, Range, is_open
from . import params
from .base import Operator
from .quantize import QUANTIZABLE
from .select import select_layers, weight_names

CENTROID_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def kmeans1d(values: torch.Tensor, k: int, iterations: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids, codes)`` of 1-D k-means on ``values`` with linear initialization.

    Deterministic. With at most ``k`` distinct values the centroids are exactly those values
    (so re-clustering an already shared tensor reproduces it bit for bit). Empty clusters keep
    their previous centroid. Centroids come back sorted ascending.
    """
    values = values.detach().reshape(-1).to(torch.float64)
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    distinct, inverse = torch.unique(values, return_inverse=True)
    if distinct.numel() <= k:
        return distinct, inverse
    lo, hi = float(values.min()), float(values.max())
    centroids = torch.linspace(lo, hi, k, dtype=torch.float64)
    for _ in range(iterations):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        codes = torch.bucketize(values, bounds)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, values)
        counts = torch.bincount(codes, minlength=k).to(torch.float64)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    centroids, _ = torch.sort(centroids)
    codes = torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)
    return centroids, codes


class SharedWeights(params.FakeQuantize):
    """``w -> centroids[codes] * mask``: weight sharing with trainable centroids.

    A :class:`~condensa.operators.params.FakeQuantize` subclass so the rest of the library sees a
    quantizer (``get_quant``, ``quant_dtypes``: dtype ``cbN``, ``N`` bits) and orders it after the
    mask. Centroids are rounded to ``centroid_dtype`` in the forward (straight-through), which is
    what the export stores.

    ``fixed_codes=True`` is Deep Compression's fine-tuning: codes stay as clustered and only the
    centroids learn (each gets the summed gradient of its weights). ``fixed_codes=False`` (default)
    also passes the gradient straight through to the underlying weights and re-assigns every
    weight to its nearest centroid in each forward, so pruned-then-shared weights can still move
    during recovery (one-shot pruning to a few percent needs that; with fixed codes the digits CNN
    does not recover). ``codes`` always holds the assignment of the last forward.
    """

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, bits: int,
                 centroid_dtype: str = "fp16", fixed_codes: bool = False) -> None:
        nn.Module.__init__(self)
        self.dtype = f"cb{bits}"
        self.bits = bits
        self.centroid_dtype = centroid_dtype
        self.fixed_codes = fixed_codes
        if centroids.numel() == 0:
            centroids = torch.zeros(1, device=codes.device)
        self.centroids = nn.Parameter(centroids.detach().to(torch.float32).clone())
        self.register_buffer("codes", codes.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.bool))
        # flat positions of the shared (nonzero) weights: the forward works on these only
        self.register_buffer("positions", torch.nonzero(mask.reshape(-1)).reshape(-1), persistent=False)

    def stored_centroids(self) -> torch.Tensor:
        """The centroid values as stored (rounded to ``centroid_dtype``), fp32, straight-through."""
        c = self.centroids
        low = CENTROID_DTYPES[self.centroid_dtype]
        return c + (c.detach().to(low).to(c.dtype) - c.detach())

    def _assign_values(self, values: torch.Tensor) -> torch.Tensor:
        sorted_values, order = torch.sort(self.stored_centroids().detach())
        return order[torch.bucketize(values.detach().to(sorted_values.dtype), (sorted_values[1:] + sorted_values[:-1]) / 2)]

    def assign(self, weight: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid codes of ``weight`` (0 where masked; ties to the lower centroid value)."""
        codes = torch.zeros(weight.numel(), dtype=torch.int64, device=weight.device)
        codes[self.positions] = self._assign_values(weight.reshape(-1)[self.positions])
        return codes.reshape(weight.shape)

    def quantized(self, weight: torch.Tensor) -> torch.Tensor:
        return self.forward(weight).detach()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.reshape(-1)
        picked = flat.index_select(0, self.positions)
        if self.fixed_codes:
            codes = self.codes.reshape(-1).index_select(0, self.positions)
        else:
            codes = self._assign_values(picked)
            with torch.no_grad():
                self.codes.reshape(-1).index_copy_(0, self.positions, codes)
        shared = self.stored_centroids().gather(0, codes).to(weight.dtype)
        if not self.fixed_codes:
            shared = shared + (picked - picked.detach())
        return flat.new_zeros(flat.shape).scatter(0, self.positions, shared).reshape(weight.shape)

    def extra_repr(self) -> str:
        return (f"dtype={self.dtype}, centroids={self.centroids.numel()}, centroid_dtype={self.centroid_dtype}, "
                f"fixed_codes={self.fixed_codes}")


def attach(module: nn.Module, name: str, bits: int, centroid_dtype: str = "fp16", fixed_codes: bool = False) -> SharedWeights:
    """Cluster the current (masked) tensor and attach :class:`SharedWeights` in the quantizer slot."""
    existing = params.get_quant(module, name)
    current = getattr(module, name).detach()  # effective value (after mask and any quantizer)
    mask = params.get_mask(module, name)
    nonzero = current != 0 if mask is None else (mask & (current != 0))
    centroids, codes_nz = kmeans1d(current[nonzero], 1 << bits)
    centroids = centroids.to(torch.float32).to(CENTROID_DTYPES[centroid_dtype]).to(torch.float32)
    codes = torch.zeros(current.shape, dtype=torch.int64, device=current.device)
    codes[nonzero] = codes_nz.to(current.device)
    if isinstance(existing, SharedWeights) and existing.bits == bits and torch.equal(existing.codes, codes) \
            and torch.equal(existing.stored_centroids().detach(), centroids.to(current.device)):
        return existing
    shared = SharedWeights(centroids.to(current.device), codes, nonzero, bits, centroid_dtype, fixed_codes)
    params._reattach(module, name, mask, shared)
    if not fixed_codes:
        # the raw weights feed the straight-through path: start them at their shared values
        with torch.no_grad():
            params.raw_tensor(module, name).copy_(shared.stored_centroids().detach()[codes] * nonzero)
    return shared


def _check_bits(op: Operator, value: Any, low: int = 1, high: int = 8) -> Any:
    if isinstance(value, Range):
        if value.low < low or value.high > high:
            raise ConfigError(f"{type(op).__name__}.bits range must lie in [{low}, {high}], got {value.describe()}")
        return value if value.integer else Range(value.low, value.high, value.log, True)
    if isinstance(value, Choice):
        for option in value.options:
            _check_bits(op, option, low, high)
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{type(op).__name__}.bits must be an integer in [{low}, {high}], got {value!r}")
    return value


@dataclass(frozen=True)
class Codebook(Operator):
    """Weight sharing: ``2^bits`` k-means centroids per tensor, trainable during recovery."""

    bits: Any = 4
    layers: Any = QUANTIZABLE
    exclude: Any = ()
    centroid_dtype: str = "fp16"
    fixed_codes: bool = False

    label = "codebook"
    tunable = ("bits",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits(self, self.bits) if is_open(self.bits) else self.bits)
        super().__post_init__()

    def validate(self) -> None:
        if not is_open(self.bits):
            _check_bits(self, self.bits)
        if self.centroid_dtype not in CENTROID_DTYPES:
            raise ConfigError(f"Codebook.centroid_dtype must be one of {list(CENTROID_DTYPES)}, got {self.centroid_dtype!r}")

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, supported=QUANTIZABLE, operator="Codebook")
        for module_name, module in selected.items():
            for tensor_name in weight_names(module):
                attach(module, tensor_name, int(self.bits), self.centroid_dtype, self.fixed_codes)
                key = f"{module_name}.{tensor_name}" if module_name else tensor_name
                touched.setdefault(key, []).append(f"cb{int(self.bits)}")


# -- biases and norm parameters -----------------------------------------------------------------

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _frozen_norm_hook(module: nn.Module, inputs: Any) -> None:
    module.training = False  # a folded norm normalizes with its constants, in training too


def fold_norm(module: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold running statistics into the affine parameters (see the module docstring); idempotent."""
    with torch.no_grad():
        scale = params.raw_tensor(module, "weight") / torch.sqrt(module.running_var + module.eps)
        shift = params.raw_tensor(module, "bias") - module.running_mean * scale
        params.raw_tensor(module, "weight").copy_(scale)
        params.raw_tensor(module, "bias").copy_(shift)
        module.running_mean.zero_()
        one = torch.ones_like(module.running_var)
        module.running_var.copy_(one - module.eps)
        if not torch.equal(module.running_var + module.eps, one):
            raise AssertionError("1 - eps + eps != 1 in this dtype")  # never seen for fp32 eps=1e-5
    if _frozen_norm_hook not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_frozen_norm_hook)


@dataclass(frozen=True)
class QuantizeAux(Operator):
    """Biases and norm parameters in ``dtype`` (``fp16``, ``bf16`` or ``int2``..``int8``, one scale
    per tensor). Biases are quantized at apply time (recovery trains through them).

    ``fold_norm=True``: BatchNorm layers recover as usual (batch statistics, running averages);
    :meth:`finish` (after recovery) folds each one's statistics into its affine parameters, pins
    ``mean = 0``, ``var = 1 - eps`` and freezes them, then quantizes the folded parameters
    (post-training): two stored values per channel instead of four. Folding at apply time and
    recovering with frozen statistics was measured to lose ~11 points on the digits CNN after
    pruning to 3%, so the fold waits for the end. ``fold_norm=False``: the BatchNorm affine
    parameters are quantized at apply time and the running statistics are stored as they are.
    """

    dtype: Any = "fp16"
    fold_norm: bool = True
    biases: bool = True
    norms: bool = True

    label = "aux"
    tunable = ("dtype",)

    def validate(self) -> None:
        values = self.dtype.options if isinstance(self.dtype, Choice) else (self.dtype,)
        for value in values:
            if not params.is_quant_dtype(value):
                raise ConfigError(f"QuantizeAux.dtype must be fp16, bf16 or int2..int8, got {value!r}")

    def _targets(self, model: nn.Module, norms: bool, biases: bool):
        for module_name, module in model.named_modules():
            if isinstance(module, NORM_TYPES):
                if norms and module.affine:
                    yield module_name, module, ["weight", "bias"]
            elif biases and isinstance(module, nn.RNNBase):
                names = [n for n in getattr(module, "_flat_weights_names", []) if n.startswith("bias")]
                if names:
                    yield module_name, module, names
            elif biases and isinstance(module, QUANTIZABLE) and isinstance(getattr(module, "bias", None), torch.Tensor):
                yield module_name, module, ["bias"]

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        for module_name, module, names in self._targets(model, self.norms and not self.fold_norm, self.biases):
            for tensor_name in names:
                params.set_quant(module, tensor_name, self.dtype)
                key = f"{module_name}.{tensor_name}" if module_name else tensor_name
                touched.setdefault(key, []).append(self.dtype)

    def finish(self, model: nn.Module) -> None:
        if not (self.norms and self.fold_norm):
            return
        for _, module, names in self._targets(model, True, False):
            if module.track_running_stats and module.running_var is not None:
                fold_norm(module)
            for tensor_name in names:
                params.set_quant(module, tensor_name, self.dtype)


__all__ = ["Codebook", "QuantizeAux", "SharedWeights", "kmeans1d", "attach", "fold_norm"]
