"""FLOPs with ``torch.utils.flop_counter``: dense, and effective under weight sparsity.

Effective FLOPs scale each conv/linear layer's FLOPs by the density of its weight: what a
sparse kernel (or structured surgery) would execute. Both are per forward pass of one batch of
``example_input``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..operators.select import weight_names


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """``{"flops_dense", "flops_effective"}`` for one forward of ``example_input``."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=None)
    with counter:
        model(example_input)
    model.train(was_training)
    counts = counter.get_flop_counts()
    total = float(sum(counts.get("Global", {}).values()))
    effective = total
    root = type(model).__name__
    for name, module in model.named_modules():
        names = weight_names(module)
        if not names or isinstance(module, nn.Embedding):
            continue
        layer_flops = float(sum(counts.get(f"{root}.{name}" if name else root, {}).values()))
        tensors = [getattr(module, t) for t in names]
        numel = sum(t.numel() for t in tensors)
        nonzero = sum(int((t != 0).sum()) for t in tensors)
        effective -= layer_flops * (1.0 - (nonzero / numel if numel else 1.0))
    return {"flops_dense": total, "flops_effective": effective}
