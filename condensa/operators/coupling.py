"""Which normalization layer directly follows a pruned layer (mechanism only, no policy).

Found with ``torch.fx`` symbolic tracing: a BatchNorm/LayerNorm-free ``call_module`` node whose
only input is the layer's output. Zeroing the matching BatchNorm channels makes a pruned filter
output exactly zero, which structured surgery relies on. Models that cannot be traced (dynamic
control flow) fall back to "no coupling", which is still correct for masking.
"""

from __future__ import annotations

import warnings

import torch.fx
from torch import nn

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def following_norms(model: nn.Module, layer_names: list[str]) -> dict[str, tuple[str, nn.Module]]:
    """``{layer_name: (norm_name, norm_module)}`` for layers whose sole consumer is a BatchNorm."""
    wanted = set(layer_names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models simply get no coupling
        return {}
    modules = dict(model.named_modules())
    found: dict[str, tuple[str, nn.Module]] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted:
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        target = modules.get(users[0].target)
        layer = modules[node.target]
        if isinstance(target, _NORMS) and target.num_features == layer.weight.shape[0]:
            found[node.target] = (users[0].target, target)
    return found
