"""Layer selection: which modules (and which of their tensors) an operator touches.

A pattern is one of:

* an ``nn.Module`` subclass, or the name of one (``"Conv2d"``, ``"Linear"``): matches by type;
* a glob on the module's qualified name (``"features.*"``, ``"fc"``);
* ``"@first"`` / ``"@last"``: the first / last module of the candidate set in registration order
  (first and last layers are commonly left uncompressed).

``exclude`` uses the same patterns. A pattern the user wrote that matches nothing is an error,
because a typo would otherwise silently compress nothing.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

from torch import nn

from ..errors import LayerSelectionError

Pattern = str | type

WEIGHTED_TYPES: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.LSTM,
    nn.GRU,
    nn.RNN,
    nn.Embedding,
)

CONV_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: layers with output rows (filters / neurons) and an input dimension: structured and N:M pruning
ROW_TYPES: tuple[type, ...] = (nn.Linear, *CONV_TYPES)

_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9_]*$")


def weight_names(module: nn.Module) -> list[str]:
    """Names of the compressible weight tensors of a module (biases and norms are left alone)."""
    if isinstance(module, nn.RNNBase):
        # ``_flat_weights_names`` still lists weights that a mask or quantizer parametrizes (they
        # are no longer direct parameters then, and ``named_parameters`` would miss them)
        names = getattr(module, "_flat_weights_names", None) or [n for n, _ in module.named_parameters(recurse=False)]
        return [name for name in names if name.startswith("weight_")]
    if isinstance(module, WEIGHTED_TYPES):
        return ["weight"]
    return []


def _type_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _is_type_pattern(pattern: Pattern, all_type_names: set[str]) -> bool:
    if isinstance(pattern, type):
        return True
    return bool(_CLASS_NAME.match(pattern)) and (pattern in all_type_names or hasattr(nn, pattern))


def _matches(
    name: str, module: nn.Module, pattern: Pattern, all_type_names: set[str], ordered: Sequence[str]
) -> bool:
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    if pattern == "@first":
        return bool(ordered) and name == ordered[0]
    if pattern == "@last":
        return bool(ordered) and name == ordered[-1]
    if _is_type_pattern(pattern, all_type_names):
        return pattern in _type_names(module)
    return fnmatch.fnmatchcase(name, pattern)


def pattern_repr(pattern: Pattern) -> str:
    return pattern.__name__ if isinstance(pattern, type) else str(pattern)


def select_layers(
    model: nn.Module,
    layers: Iterable[Pattern],
    exclude: Iterable[Pattern] = (),
    *,
    supported: tuple[type, ...] = WEIGHTED_TYPES,
    operator: str = "operator",
    strict: bool = True,
) -> dict[str, nn.Module]:
    """Return ``{qualified_name: module}`` of the modules an operator should touch.

    ``strict``: every explicit pattern must match at least one module; a selected module that is
    not of a ``supported`` type is an error naming the layer.
    """
    layers = list(layers)
    exclude = list(exclude)
    modules = dict(model.named_modules())
    all_type_names: set[str] = set()
    for module in modules.values():
        all_type_names |= _type_names(module)
    candidates = [name for name, module in modules.items() if weight_names(module)]
    if not candidates:
        raise LayerSelectionError(
            f"{operator}: the model has no compressible layers (supported: "
            f"{', '.join(t.__name__ for t in WEIGHTED_TYPES)})"
        )

    selected: dict[str, nn.Module] = {}
    for pattern in layers:
        hits = [
            name
            for name, module in modules.items()
            # the root is matched only when it is itself a weighted layer (a bare nn.Linear model)
            if (name or weight_names(module)) and _matches(name, module, pattern, all_type_names, candidates)
        ]
        if not hits and strict and not isinstance(pattern, type):
            raise LayerSelectionError(
                f"{operator}: layer pattern '{pattern_repr(pattern)}' matched no module; "
                f"compressible layers are: {', '.join(candidates[:12])}{' ...' if len(candidates) > 12 else ''}"
            )
        contributed = 0
        for name in hits:
            # A name glob may hit a container (e.g. 'features'): take its weighted children.
            module = modules[name]
            if weight_names(module):
                selected[name] = module
                contributed += 1
            else:
                for child_name, child in module.named_modules(prefix=name):
                    if weight_names(child):
                        selected[child_name] = child
                        contributed += 1
        if hits and not contributed and strict:
            first = hits[0]
            raise LayerSelectionError(
                f"{operator}: layer '{first}' ({type(modules[first]).__name__}) is not supported; "
                f"allowed types: {', '.join(t.__name__ for t in supported)}"
            )
    ordered = [name for name in candidates if name in selected]
    for pattern in exclude:
        # ``ordered`` is the selection before any exclusion, so '@first'/'@last' keep their meaning
        # whatever other exclude patterns removed; names removed earlier are skipped.
        hits = [
            name
            for name in ordered
            if name in selected and _matches(name, selected[name], pattern, all_type_names, ordered)
        ]
        hits += [
            child
            for name, module in modules.items()
            if name and not weight_names(module) and _matches(name, module, pattern, all_type_names, ordered)
            for child in ordered
            if child.startswith(name + ".")
        ]
        # '@first'/'@last' may hit nothing when earlier exclude patterns removed that layer; any
        # other pattern (including a misspelt '@frist') that excludes nothing is a typo
        if not hits and strict and pattern not in ("@first", "@last"):
            raise LayerSelectionError(
                f"{operator}: exclude pattern '{pattern_repr(pattern)}' matched no selected layer"
            )
        for name in hits:
            selected.pop(name, None)
    ordered = [name for name in candidates if name in selected]
    for name in ordered:
        if not isinstance(selected[name], supported):
            raise LayerSelectionError(
                f"{operator}: layer '{name}' ({type(selected[name]).__name__}) is not supported; "
                f"allowed types: {', '.join(t.__name__ for t in supported)}; exclude it or narrow 'layers'"
            )
    if not ordered:
        raise LayerSelectionError(
            f"{operator}: no layer selected (layers={[pattern_repr(p) for p in layers]}, "
            f"exclude={[pattern_repr(p) for p in exclude]})"
        )
    return {name: selected[name] for name in ordered}
