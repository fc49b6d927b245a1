"""Channel coupling groups: which channels of which layers must be pruned (and removed) together.

Mechanism only, no policy (``FilterPrune`` decides which channels to drop, :mod:`condensa.surgery`
removes them). :func:`channel_groups` gives the full coupling structure from Torch-Pruning's
``DependencyGraph`` (residual additions, concatenations, flatten -> linear, depthwise convs,
squeeze-excitation multiplications). Torch-Pruning is the field's standard for this: it traces the
autograd graph of one forward pass, so it sees every functional op of an arbitrary ``forward``
(which ``torch.fx`` cannot trace through dynamic control flow), and it ships the per-layer
pruning functions that structured surgery needs. One group is a set of (layer, channel-index)
pairs that carry the same feature channel; pruning a channel means removing all of them.
Groups passing through a barrier (:mod:`.barriers`) are reported as blocked; the patch that keeps
Torch-Pruning from aborting on such ops lives in :mod:`.torch_pruning_adapter`.
:func:`following_norms` is the light-weight alternative for per-layer pruning (``torch.fx``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch_pruning as tp
from torch import nn

from ..errors import ModelError
from .barriers import OpRecorder, barrier_reason
from .inputs import CONVS
from .torch_pruning_adapter import SafeMapping, safe_index_mapping

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: what tracing an arbitrary user ``forward`` (torch.fx, Torch-Pruning) raises when it cannot follow it
TRACE_ERRORS = (torch.fx.proxy.TraceError, RuntimeError, TypeError, ValueError, AttributeError, IndexError, KeyError,
                AssertionError, NotImplementedError)


def following_norms(model: nn.Module, layer_names: list[str]) -> dict[str, tuple[str, nn.Module]]:
    """``{layer_name: (norm_name, norm_module)}`` for layers whose sole consumer is a BatchNorm.

    Found with ``torch.fx`` symbolic tracing; models that cannot be traced get no coupling.
    """
    wanted = set(layer_names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = torch.fx.symbolic_trace(model).graph
    except TRACE_ERRORS:  # an untraceable model simply gets no coupling
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
        if isinstance(target, NORMS) and target.num_features == layer.weight.shape[0]:
            found[node.target] = (users[0].target, target)
    return found




@dataclass
class Member:
    """One coupled tensor slice of a group.

    ``kind``: ``"out"`` (output rows of a conv/linear), ``"in"`` (input columns of a
    conv/linear), ``"dw"`` (a depthwise conv: its channel is both input and output), ``"bn"``
    (a BatchNorm), ``"op"`` (a parameter-free op such as add or cat), ``"other"`` (a layer type
    condensa does not prune exactly: LayerNorm, GroupNorm, PReLU, attention, RNN, ...).
    ``idxs[i]`` is the member's channel index that carries the group's root channel ``root_idxs[i]``.
    """

    name: str
    module: Any
    kind: str
    idxs: list[int]
    root_idxs: list[int]
    terminal: bool = False  # the member's output is (part of) the model output

    @property
    def producer(self) -> bool:
        return self.kind in ("out", "gout", "dw", "bn")


@dataclass
class ChannelGroup:
    """Coupled channels: ``size`` root channels of ``root`` and every member that carries them."""

    root: str
    size: int
    members: list[Member]
    blocked: str | None = None  # why the group cannot be pruned/removed exactly
    _root_module: Any = field(default=None, repr=False)
    _root_handler: Any = field(default=None, repr=False)

    def classes(self) -> tuple[list[list[int]], set[int]]:
        """Root channels that can only be removed together, and the roots that cannot be removed.

        A grouped conv (``1 < groups < channels``) must lose the same positions in every one of
        its groups, so the roots at one position form a class; everything else is a singleton.
        A position whose channels are not all in this group is frozen.
        """
        parent = list(range(self.size))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        frozen: set[int] = set()
        for member in self.members:
            if member.kind not in ("gout", "gin"):
                continue
            module = member.module
            channels = module.out_channels if member.kind == "gout" else module.in_channels
            per_group = channels // module.groups
            buckets: dict[int, list[int]] = {}
            for idx, root in zip(member.idxs, member.root_idxs, strict=True):
                if root is not None:
                    buckets.setdefault(idx % per_group, []).append(root)
            for roots in buckets.values():
                if len(roots) != module.groups:
                    frozen.update(roots)
                for r in roots[1:]:
                    parent[find(r)] = find(roots[0])
        classes: dict[int, list[int]] = {}
        for i in range(self.size):
            classes.setdefault(find(i), []).append(i)
        result = list(classes.values())
        frozen_all = {r for c in result if frozen.intersection(c) for r in c}
        return result, frozen_all

    def layers(self) -> list[str]:
        seen: list[str] = []
        for m in self.members:
            if m.kind not in ("op",) and m.name not in seen:
                seen.append(m.name)
        return seen

    def describe(self) -> str:
        names = self.layers()
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
        return f"'{self.root}' [{self.size} channels; {shown}]"


class CouplingGraph:
    """Torch-Pruning ``DependencyGraph`` of ``model`` plus condensa's barrier checks.

    ``model`` must be a plain module (no parametrizations: pass ``params.baked_copy(model)``);
    surgery mutates it through :meth:`prune`. Raises :class:`~condensa.errors.ModelError` when
    the model cannot be traced at all.
    """

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        self.model = model
        self.barriers: dict[Any, str] = {}
        self._recorder = OpRecorder()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.enable_grad(), safe_index_mapping(self.barriers, self._recorder), self._recorder:
                    # a bare tensor is wrapped: Torch-Pruning calls model(*inputs) first, which would feed an
                    # unbatched sample to models that accept one
                    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
                    self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
            except TRACE_ERRORS as error:  # name the model Torch-Pruning cannot trace
                raise ModelError(
                    f"structured surgery: Torch-Pruning cannot trace {type(model).__name__}: "
                    f"{type(error).__name__}: {error}"
                ) from error
        self._names = {module: name for name, module in model.named_modules()}
        # Element-wise ops recorded as barriers too (the index-mapping pass only sees reshape-like nodes).
        for node in self.graph.module2node.values():
            if node in self.barriers or node.type.name not in ("ELEMENTWISE", "RESHAPE"):
                continue
            reason = barrier_reason(self._recorder.ops.get(node.grad_fn), node.type.name)
            if reason is not None:
                self.barriers[node] = reason

    # -- member classification ----------------------------------------------------------------
    def _kind(self, module: Any, handler: Any) -> str:
        name = getattr(handler, "__name__", "")
        if isinstance(module, CONVS):
            if module.groups == module.out_channels and module.out_channels > 1 and module.groups == module.in_channels:
                return "dw"
            if module.groups > 1:  # grouped conv: channels are removed at the same positions in every group
                return "gout" if name == "prune_out_channels" else "gin"
            return "out" if name == "prune_out_channels" else "in"
        if isinstance(module, nn.Linear):
            return "out" if name == "prune_out_channels" else "in"
        if isinstance(module, NORMS):
            return "bn"
        if isinstance(module, nn.Module) and type(module).__module__.startswith(tp.ops.__name__):
            if type(module).__name__ in ("_ElementWiseOp", "_ConcatOp", "_SplitOp", "_ReshapeOp", "_SliceOp"):
                return "op"
        return "other"

    def _group(self, tp_group) -> ChannelGroup:
        members: list[Member] = []
        blocked: str | None = None
        if SafeMapping.failures:
            blocked = f"channels pass through {SafeMapping.failures[0]}"
            SafeMapping.failures.clear()
        for item in tp_group:
            dep, idxs = item.dep, item.idxs
            node = dep.target
            module = node.module
            kind = self._kind(module, dep.handler)
            name = self._names.get(module) if isinstance(module, nn.Module) else None
            label = name if name is not None else f"<{type(module).__name__}>"
            if node in self.barriers and blocked is None:
                near = [self._names.get(n.module) for n in (*node.inputs, *node.outputs)]
                near = [n for n in near if n]
                where = f" next to '{near[0]}'" if near else ""
                blocked = f"channels pass through {self.barriers[node]}{where}"
            terminal = not node.outputs and (kind in ("out", "dw", "bn", "op", "other"))
            members.append(Member(label, module, kind, list(idxs), list(item.root_idxs), terminal))
            if blocked is None and kind == "other":
                blocked = f"layer '{label}' ({type(module).__name__}) cannot have channels removed exactly"
            if blocked is None and terminal and kind != "in":
                blocked = f"'{label}' produces the model output"
        root = tp_group[0].dep.target
        root_name = self._names.get(root.module, f"<{type(root.module).__name__}>")
        size = len(tp_group[0].idxs)
        group = ChannelGroup(root_name, size, members, blocked)
        group._root_module = root.module
        group._root_handler = tp_group[0].dep.handler
        return group

    def groups(self) -> Iterator[ChannelGroup]:
        """Every coupling group rooted at a conv or linear layer (each channel space once)."""
        with warnings.catch_warnings(), safe_index_mapping(self.barriers, self._recorder):
            warnings.simplefilter("ignore")
            SafeMapping.failures.clear()
            for tp_group in self.graph.get_all_groups(root_module_types=(*CONVS, nn.Linear)):
                group = self._group(tp_group)
                SafeMapping.failures.clear()
                yield group

    def prune(self, group: ChannelGroup, root_idxs: list[int]) -> ChannelGroup:
        """Remove ``root_idxs`` of ``group`` from the model; returns the executed group (member
        indices as they were just before removal)."""
        with warnings.catch_warnings(), safe_index_mapping(self.barriers, self._recorder):
            warnings.simplefilter("ignore")
            SafeMapping.failures.clear()
            tp_group = self.graph.get_pruning_group(group._root_module, group._root_handler, list(root_idxs))
            executed = self._group(tp_group)
            if executed.blocked is not None:
                raise RuntimeError(executed.blocked)
            tp_group.prune(record_history=False)
        return executed



def channel_groups(model: nn.Module, example_input: Any) -> list[ChannelGroup]:
    """The coupling groups of a plain ``model`` (no parametrizations: pass
    ``condensa.operators.params.baked_copy(model)``); the model is traced in eval mode, not modified."""
    was_training = model.training
    try:
        return list(CouplingGraph(model.eval(), example_input).groups())
    finally:
        model.train(was_training)


__all__ = ["following_norms", "channel_groups", "ChannelGroup", "Member", "CouplingGraph", "NORMS", "TRACE_ERRORS"]


