"""Parameter density: fraction of nonzero weights per compressible layer and overall."""

from __future__ import annotations

from torch import nn

from ..operators.select import weight_names


def layer_densities(model: nn.Module) -> dict[str, float]:
    """``{"module.tensor": nonzero fraction}`` for every compressible weight tensor."""
    out = {}
    for name, module in model.named_modules():
        for tensor_name in weight_names(module):
            tensor = getattr(module, tensor_name).detach()
            out[f"{name}.{tensor_name}" if name else tensor_name] = float((tensor != 0).float().mean())
    return out


def overall_density(model: nn.Module) -> float:
    """Nonzero fraction over all compressible weights (the figure the paper's 'density' means)."""
    total = nonzero = 0
    for _, module in model.named_modules():
        for tensor_name in weight_names(module):
            tensor = getattr(module, tensor_name).detach()
            total += tensor.numel()
            nonzero += int((tensor != 0).sum())
    return nonzero / total if total else 1.0
