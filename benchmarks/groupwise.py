"""Group-wise int4 vs per-channel int4 / int8: bits per weight and whole-model footprint.

Part 1, one Linear weight (random weights: PyTorch's default uniform init, and Gaussian ones,
closer to trained weights), per quantization:

* ``fixed``     bits per weight of the tensor in the fixed-width layout (dense codes, raw scales, no
                entropy coding): ``bits + scale bits / inputs per scale``
* ``packed``    bits per weight as the packed file stores it (cheapest layout, entropy-coded codes),
                i.e. what the footprint metric counts for that tensor
* ``rel. error``  ``||W - Q(W)|| / ||W||`` of the Gaussian weight: what the extra scale bits buy

Part 2, ``char_gpt`` (random init; every Linear and Embedding weight quantized, biases and norms
left fp32): the footprint metric (exact bytes of the packed file) and the ratio to fp32.

    python benchmarks/groupwise.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condensa import Quantize  # noqa: E402
from condensa.metrics.footprint import footprint  # noqa: E402
from condensa.models.registry import build_model  # noqa: E402
from condensa.packing import layout as packing  # noqa: E402

SCHEMES = {
    "int8 per-channel": Quantize("int8"),
    "int4 per-channel": Quantize("int4"),
    "int4 g32": Quantize("int4", group_size=32),
    "int4 g64": Quantize("int4", group_size=64),
    "int4 g128": Quantize("int4", group_size=128),
}
FIXED = packing.Options(index=("dense",), rows=False, entropy_values=False)


def weight_bits(layer: nn.Module, op: Quantize) -> tuple[float, float, float]:
    """``(fixed-width bits, packed bits)`` per weight of ``layer.weight`` under ``op``, and the
    relative error of the quantized weight."""
    model, _ = op.apply(layer)
    spec = next(s for s in packing.specs(model) if s.name == "weight")
    numel = spec.effective.numel()
    error = float((spec.effective - layer.weight.detach()).norm() / layer.weight.detach().norm())
    return packing.plan_tensor(spec, FIXED).bits / numel, packing.plan_tensor(spec).bits / numel, error


def linear_table(out_features: int, in_features: int) -> None:
    torch.manual_seed(0)
    uniform = nn.Linear(in_features, out_features)
    gaussian = nn.Linear(in_features, out_features)
    with torch.no_grad():
        gaussian.weight.normal_(0, 0.02)
    print(f"\nLinear weight [{out_features}, {in_features}] (bits per weight)")
    print(f"{'scheme':<18} {'fixed':>7} {'packed (uniform init)':>22} {'packed (Gaussian)':>18} {'rel. error (Gaussian)':>22}")
    for name, op in SCHEMES.items():
        fixed, packed_uniform, _ = weight_bits(uniform, op)
        _, packed_gaussian, error = weight_bits(gaussian, op)
        print(f"{name:<18} {fixed:7.3f} {packed_uniform:22.3f} {packed_gaussian:18.3f} {error:22.4f}")


def char_gpt_table() -> None:
    model = build_model("char_gpt")
    quantized = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding)))
    total = sum(p.numel() for p in model.parameters())
    print(f"\nchar_gpt (random init, {total:,} parameters, {quantized:,} in Linear/Embedding weights)")
    print(f"{'scheme':<18} {'footprint B':>12} {'vs fp32':>8} {'bits/quantized weight':>22} {'CPU s':>6}")
    fp32 = None
    for name, op in SCHEMES.items():
        start = time.process_time()
        compressed, record = op.apply(model)
        size = footprint(compressed)
        seconds = time.process_time() - start
        fp32 = size.reference_bytes
        bits = sum(size.tensors[key] for key in record.layers) / quantized
        print(f"{name:<18} {size.bytes:12,.0f} {size.compression_ratio:7.2f}x {bits:22.3f} {seconds:6.2f}")
    print(f"{'fp32':<18} {fp32:12,.0f} {1:7.2f}x")


if __name__ == "__main__":
    torch.set_num_threads(1)
    linear_table(512, 128)
    linear_table(128, 512)
    char_gpt_table()
