"""FLOPs with ``torch.utils.flop_counter``: dense, and effective under sparsity.

Effective FLOPs are what the compressed model would execute: channels that structured surgery
removes are not counted at all (a pruned filter saves its own FLOPs *and* the next layer's input
columns), and each remaining conv/linear layer's FLOPs are scaled by the density of its weight
(what a sparse kernel executes). So for filter pruning the effective count equals the count of
the physically shrunk model (:func:`condensa.surgery.shrink`). Transformers (attention/MLP blocks
of a standard layout) are counted after :func:`condensa.surgery.shrink_transformer` instead, which
removes zero heads and MLP neurons; Torch-Pruning's tracing, behind ``shrink``, does not finish on
a Llama. Both are per forward pass of one batch of ``example_input``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ModelError
from ..operators.select import ROW_TYPES, weight_names
from ..surgery import has_dead_structures, is_transformer, shrink, shrink_transformer


@torch.no_grad()
def _counts(model: nn.Module, example_input: torch.Tensor) -> tuple[float, dict[str, float]]:
    """Total FLOPs and FLOPs per module name (as ``flop_counter`` attributes them)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    try:
        with counter:
            model(example_input)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    per_module = {name: float(sum(counts.get(f"{root}.{name}" if name else root, {}).values()))
                  for name, _ in model.named_modules()}
    return float(sum(counts.get("Global", {}).values())), per_module


def _scaled_by_density(model: nn.Module, total: float, per_module: dict[str, float]) -> float:
    effective = total
    for name, module in model.named_modules():
        names = weight_names(module)
        if not names or isinstance(module, nn.Embedding):
            continue
        tensors = [getattr(module, t) for t in names]
        numel = sum(t.numel() for t in tensors)
        nonzero = sum(int((t != 0).sum()) for t in tensors)
        effective -= per_module.get(name, 0.0) * (1.0 - (nonzero / numel if numel else 1.0))
    return effective


def _has_zero_rows(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, ROW_TYPES) and module.weight.dim() >= 2:
            rows = module.weight.detach().reshape(module.weight.shape[0], -1)
            if bool((rows == 0).all(dim=1).any()):
                return True
    return False


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """``{"flops_dense", "flops_effective"}`` for one forward of ``example_input``."""
    total, per_module = _counts(model, example_input)
    effective = _scaled_by_density(model, total, per_module)
    if is_transformer(model):  # heads / MLP neurons: count the shrunk model (also drops their attention products)
        if has_dead_structures(model):
            small = shrink_transformer(model, example_input, check=False)[0]
            effective = _scaled_by_density(small, *_counts(small, example_input))
    elif _has_zero_rows(model):  # whole channels may be removable: count what surgery leaves
        try:
            small = shrink(model, example_input)
        except ModelError:  # not traceable: the per-layer density figure stands
            small = None
        if small is not None:
            effective = _scaled_by_density(small, *_counts(small, example_input))
    return {"flops_dense": total, "flops_effective": effective}


__all__ = ["count_flops"]
