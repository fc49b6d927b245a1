"""The one place condensa patches Torch-Pruning's private index-mapping API.

Torch-Pruning builds a coupling group by mapping channel indices through every op between two
layers (``torch_pruning.dependency.index_mapping``). On an op it cannot map exactly (a channel
shuffle, a split next to one) it either raises, aborting the whole analysis, or maps silently
wrong. While condensa traces a model, :func:`safe_index_mapping` replaces
``index_mapping.update_index_mapping`` so that barrier nodes (see :mod:`.barriers`) are skipped,
a node whose update raises becomes a barrier, and every mapping is wrapped so a mapping that
raises later maps to nothing and blocks its group. Everything else stays Torch-Pruning's.

Checked against Torch-Pruning 1.6.1 (the version pinned in ``constraints.txt``; ``pyproject.toml``
allows >=1.6,<1.7). :func:`check_private_api` fails loudly when the private names this module
uses are gone; ``tests/test_surgery.py`` calls it, so an upgrade that changes them breaks a test,
not a user's export.
"""

from __future__ import annotations

import contextlib
from typing import Any

from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping

from .barriers import OpRecorder, barrier_reason

#: private names of ``torch_pruning.dependency.index_mapping`` this adapter relies on
PRIVATE_API = (
    "update_index_mapping", "update_concat_index_mapping", "update_split_index_mapping",
    "update_reshape_index_mapping", "update_unbind_index_mapping", "update_expand_index_mapping",
    "update_slice_index_mapping",
)
#: what Torch-Pruning's index mappings raise on ops they cannot map
MAPPING_ERRORS = (IndexError, KeyError, TypeError, ValueError, RuntimeError, AssertionError)


def check_private_api() -> None:
    """Raise ``RuntimeError`` naming the missing names if Torch-Pruning changed its private API."""
    missing = [name for name in PRIVATE_API if not callable(getattr(index_mapping, name, None))]
    missing += [f"OPTYPE.{t}" for t in ("CONCAT", "SPLIT", "RESHAPE", "UNBIND", "EXPAND", "SLICE")
                if not hasattr(tp_ops.OPTYPE, t)]
    if missing:
        raise RuntimeError(f"Torch-Pruning's private index-mapping API changed (missing: {', '.join(missing)}); "
                           "condensa/coupling/torch_pruning_adapter.py must be updated for this version")


class SafeMapping:
    """Wraps a Torch-Pruning index mapping: a mapping that raises while a group is being built
    (e.g. a split next to a channel shuffle) marks its node as a barrier and maps to nothing."""

    failures: list[str] = []

    def __init__(self, mapping: Any, dep: Any, barriers: dict[Any, str]) -> None:
        self.mapping = mapping
        self.dep = dep
        self.barriers = barriers
        self.reverse = getattr(mapping, "reverse", False)

    def __call__(self, idxs):
        try:
            return self.mapping(idxs)
        except MAPPING_ERRORS as error:  # see the class docstring
            reason = f"an op where Torch-Pruning cannot map channel indices ({type(error).__name__}: {error})"
            for node in (self.dep.source, self.dep.target):
                if node.type.name not in ("CONV", "LINEAR", "BN", "DEPTHWISE_CONV"):
                    self.barriers.setdefault(node, reason)
            SafeMapping.failures.append(reason)
            return []


@contextlib.contextmanager
def safe_index_mapping(barriers: dict[Any, str], recorder: OpRecorder):
    """Run Torch-Pruning's index-mapping update node by node: barrier nodes are skipped and a node
    whose update raises becomes a barrier (instead of aborting the whole analysis)."""
    original = index_mapping.update_index_mapping
    updaters = {
        tp_ops.OPTYPE.CONCAT: index_mapping.update_concat_index_mapping,
        tp_ops.OPTYPE.SPLIT: index_mapping.update_split_index_mapping,
        tp_ops.OPTYPE.RESHAPE: index_mapping.update_reshape_index_mapping,
        tp_ops.OPTYPE.UNBIND: index_mapping.update_unbind_index_mapping,
        tp_ops.OPTYPE.EXPAND: index_mapping.update_expand_index_mapping,
        tp_ops.OPTYPE.SLICE: index_mapping.update_slice_index_mapping,
    }

    def update(graph) -> None:
        _update(graph)
        for node in graph.module2node.values():
            for dep in node.dependencies:
                for i, mapping in enumerate(dep.index_mapping):
                    if mapping is not None and not isinstance(mapping, SafeMapping):
                        dep.index_mapping[i] = SafeMapping(mapping, dep, barriers)

    def _update(graph) -> None:
        for _, node in graph.module2node.items():
            fn = updaters.get(node.type)
            if fn is None:
                continue
            if node in barriers:
                continue
            reason = barrier_reason(recorder.ops.get(node.grad_fn), node.type.name)
            if reason is not None:
                barriers[node] = reason
                continue
            try:
                fn(graph, node)
            except MAPPING_ERRORS as error:  # Torch-Pruning cannot map this op
                barriers[node] = f"Torch-Pruning cannot map channel indices through it ({type(error).__name__}: {error})"

    index_mapping.update_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_index_mapping = original
