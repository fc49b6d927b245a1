"""A small random input a model accepts, guessed from its first layer.

Tracing (coupling groups, surgery checks, ONNX export) needs one forward pass; users who do not
say what their model eats get a guess here, and can always pass an explicit example instead.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: what a forward pass raises when the guessed input has the wrong shape or dtype
WRONG_INPUT = (RuntimeError, ValueError, TypeError, IndexError)

_SPATIAL_CANDIDATES = {1: (64, 32, 128, 16, 256, 8), 2: (32, 64, 8, 16, 28, 224, 96, 128, 299), 3: (16, 8, 32)}


def infer_example_input(model: nn.Module) -> torch.Tensor | None:
    """A small random input the model accepts, guessed from its first layer, or ``None``.

    Channels / features come from the first conv, linear or embedding layer (registration order);
    conv models try a few spatial sizes (small first) until a forward pass succeeds. Pass an
    explicit ``example_input`` / ``input_shape`` where this guess is wrong or slow.
    """
    first = next((m for m in model.modules() if isinstance(m, (*CONVS, nn.Linear, nn.Embedding))), None)
    if first is None:
        return None
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    candidates: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(0)
    if isinstance(first, CONVS):
        dims = 1 if isinstance(first, nn.Conv1d) else 3 if isinstance(first, nn.Conv3d) else 2
        for size in _SPATIAL_CANDIDATES[dims]:
            candidates.append(torch.randn(1, first.in_channels, *([size] * dims), generator=generator))
    elif isinstance(first, nn.Linear):
        candidates.append(torch.randn(1, first.in_features, generator=generator))
    else:
        candidates.append(torch.zeros(1, 16, dtype=torch.long))
    was_training = model.training
    model.eval()
    try:
        for x in candidates:
            x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model(x)
                return x
            except WRONG_INPUT:  # a wrong guess: try the next size
                continue
    finally:
        model.train(was_training)
    return None


# -- dependency groups ------------------------------------------------------------------------
