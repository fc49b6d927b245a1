"""Weight quantization: fp16, bf16, or symmetric per-output-channel integers (int8, int4, ...).

The model keeps computing in fp32 with dequantized values ("fake quantization" with a
straight-through gradient), so recovery can fine-tune through it and every accuracy figure is the
accuracy of the stored low-precision weights. Export stores the integer codes and the fp32
per-channel scales; with ``group_size`` (``Quantize("int4", group_size=32)``, dtype ``int4g32``)
one fp16 scale per group of inputs of each row instead (:mod:`.groupwise`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..knobs import Choice, is_open
from . import params
from .base import Operator
from .select import select_layers, weight_names

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU, nn.RNN, nn.Embedding)
DTYPES = ("int8", "int7", "int6", "int5", "int4", "int3", "int2", "fp16", "bf16")


@dataclass(frozen=True)
class Quantize(Operator):
    """Quantize weights to ``dtype`` (one of int8..int2, fp16, bf16); may be a ``Choice`` knob.

    ``bits`` (an integer 2..8, or an integer ``Range``/``Choice`` knob) sets ``dtype`` to ``int<bits>``.
    ``group_size`` (integer dtypes only; may be a ``Choice`` knob, e.g. of 32, 64, 128): one fp16
    scale per ``group_size`` consecutive inputs of each output row instead of one fp32 scale per
    row; the record labels such tensors ``int4g32``."""

    dtype: Any = "int8"
    layers: Any = QUANTIZABLE
    exclude: Any = ()
    bits: Any = None
    group_size: Any = None

    label = "quantize"
    tunable = ("dtype", "bits", "group_size")

    def __post_init__(self) -> None:
        if self.bits is not None:
            from .codebook import _check_bits

            object.__setattr__(self, "bits", _check_bits(self, self.bits, 2, 8))
            if not is_open(self.bits):
                object.__setattr__(self, "dtype", f"int{int(self.bits)}")
        super().__post_init__()

    def validate(self) -> None:
        values = self.dtype.options if isinstance(self.dtype, Choice) else (self.dtype,)
        if is_open(self.dtype) and not isinstance(self.dtype, Choice):
            raise ConfigError(f"Quantize.dtype must be a dtype name or a choice of them; allowed: {list(DTYPES)}")
        for value in values:
            if not params.is_quant_dtype(value):
                raise ConfigError(f"Quantize.dtype must be one of {list(DTYPES)}, got {value!r}")
        self._check_group_size(values)

    def _check_group_size(self, dtypes: tuple) -> None:
        from .groupwise import GROUP_SIZE_MAX, GROUP_SIZE_MIN

        size = self.group_size
        if size is None:
            return
        allowed = f"null or an integer in [{GROUP_SIZE_MIN}, {GROUP_SIZE_MAX}] (e.g. 32, 64, 128)"
        if is_open(size) and not isinstance(size, Choice):
            raise ConfigError(f"Quantize.group_size knob must be a choice, e.g. {{choice: [32, 64, 128]}}; got {size.describe()}")
        for value in size.options if isinstance(size, Choice) else (size,):
            if isinstance(value, bool) or not isinstance(value, int) or not GROUP_SIZE_MIN <= value <= GROUP_SIZE_MAX:
                raise ConfigError(f"Quantize.group_size must be {allowed}, got {value!r}")
        floats = [d for d in dtypes if d in params.FLOAT_DTYPES]
        if floats:
            raise ConfigError(f"Quantize.group_size applies to integer dtypes (int2..int8), not {floats[0]}; "
                              "drop group_size or use an int dtype")

    def stored_dtype(self) -> str:
        """The dtype name the tensors get: ``int8``, ``fp16``, or ``int4g32`` with a group size."""
        dtype = f"int{int(self.bits)}" if self.bits is not None else self.dtype
        return dtype if self.group_size is None else f"{dtype}g{int(self.group_size)}"

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, supported=QUANTIZABLE, operator="Quantize")
        for module_name, module in selected.items():
            for tensor_name in weight_names(module):
                dtype = self.stored_dtype()
                params.set_quant(module, tensor_name, dtype)
                key = f"{module_name}.{tensor_name}" if module_name else tensor_name
                touched.setdefault(key, []).append(dtype)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.bits is None:  # configs and journals written before ``bits`` existed keep their fingerprint
            del out["Quantize"]["bits"]
        if self.group_size is None:  # likewise for ``group_size``
            del out["Quantize"]["group_size"]
        return out


__all__ = ["Quantize", "DTYPES"]
