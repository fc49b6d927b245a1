"""Channel coupling: which channels of which layers must be pruned (and removed) together.

Mechanism only, no policy. Two tools:

* :func:`following_norms` - the BatchNorm that directly follows a layer (``torch.fx``; used by
  the per-layer mode of ``FilterPrune``).
* :func:`channel_groups` - the full coupling structure from Torch-Pruning's ``DependencyGraph``
  (residual additions, concatenations, flatten -> linear, depthwise convs, squeeze-excitation
  multiplications). Torch-Pruning is the field's standard for this: it traces the autograd graph
  of one forward pass, so it sees every functional op of an arbitrary ``forward`` (which
  ``torch.fx`` cannot trace through dynamic control flow), and it ships the per-layer pruning
  functions that structured surgery needs. One group is a set of (layer, channel-index) pairs
  that carry the same feature channel; pruning a channel means removing all of them.

Torch-Pruning treats any op it does not know as element-wise. Before trusting a group we check
the ops it passes through: a reshape other than a flatten into ``[batch, -1]``, a transpose or
permute that moves the channel dim (a channel shuffle, as in ShuffleNet), or an op that changes
the channel count becomes a *barrier*; groups touching a barrier are reported as blocked instead
of being pruned wrongly (the remaining groups are still usable). Index-mapping failures inside
Torch-Pruning on such ops are caught the same way (Torch-Pruning 1.6 crashes on ShuffleNet's
channel shuffle otherwise).
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def following_norms(model: nn.Module, layer_names: list[str]) -> dict[str, tuple[str, nn.Module]]:
    """``{layer_name: (norm_name, norm_module)}`` for layers whose sole consumer is a BatchNorm.

    Found with ``torch.fx`` symbolic tracing; models that cannot be traced get no coupling.
    """
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


# -- example inputs ---------------------------------------------------------------------------

_SPATIAL_CANDIDATES = {1: (64, 32, 128, 16, 256, 8), 2: (32, 64, 8, 16, 28, 224, 96, 128, 299), 3: (16, 8, 32)}


def infer_example_input(model: nn.Module) -> torch.Tensor | None:
    """A small random input the model accepts, guessed from its first layer, or ``None``.

    Channels / features come from the first conv, linear or embedding layer (registration order);
    conv models try a few spatial sizes (small first) until a forward pass succeeds. Pass an
    explicit ``example_input`` / ``input_shape`` where this guess is wrong or slow.
    """
    first = next((m for m in model.modules() if isinstance(m, (*_CONVS, nn.Linear, nn.Embedding))), None)
    if first is None:
        return None
    try:
        param = next(model.parameters())
        device, dtype = param.device, param.dtype if param.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    candidates: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(0)
    if isinstance(first, _CONVS):
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
            except Exception:  # noqa: BLE001 - wrong guess, try the next size
                continue
    finally:
        model.train(was_training)
    return None


# -- dependency groups ------------------------------------------------------------------------


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


_PERMUTING = {"transpose", "swapaxes", "swapdims", "permute", "movedim", "moveaxis", "t", "channel_shuffle",
              "pixel_shuffle", "pixel_unshuffle"}
_RESHAPING = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "unsqueeze", "squeeze"}


def _moves_channel_dim(name: str, args: tuple, kwargs: dict, ndim: int) -> bool:
    def norm(d: int) -> int:
        return d % ndim if ndim else d

    try:
        if name in ("transpose", "swapaxes", "swapdims"):
            dims = [a for a in args[1:3]] or [kwargs.get("dim0"), kwargs.get("dim1")]
            a, b = norm(int(dims[0])), norm(int(dims[1]))
            return a != b and 1 in (a, b)
        if name == "permute":
            perm = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
            return norm(int(perm[1])) != 1
        if name in ("movedim", "moveaxis"):
            src, dst = args[1], args[2]
            src = [src] if isinstance(src, int) else list(src)
            dst = [dst] if isinstance(dst, int) else list(dst)
            return any(norm(s) == 1 or norm(d) == 1 for s, d in zip(src, dst, strict=False) if norm(s) != norm(d))
    except Exception:  # noqa: BLE001 - unknown signature: assume the worst
        return True
    return True  # t, channel_shuffle, pixel_shuffle: always move channels


class _OpRecorder(TorchFunctionMode):
    """Records ``grad_fn -> (op name, input shape, output shape, moves channels)`` during tracing."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[Any, tuple[str, tuple, tuple, bool]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            first = args[0] if args else None
            if isinstance(out, torch.Tensor) and out.grad_fn is not None and isinstance(first, torch.Tensor):
                name = getattr(func, "__name__", str(func)).rstrip("_")
                moved = name in _PERMUTING and _moves_channel_dim(name, args, kwargs, first.dim())
                self.ops[out.grad_fn] = (name, tuple(first.shape), tuple(out.shape), moved)
        except Exception:  # noqa: BLE001 - recording must never break the forward
            pass
        return out


def _barrier_reason(record: tuple[str, tuple, tuple, bool] | None, tp_type: str) -> str | None:
    if record is None:
        return None
    name, shape_in, shape_out, moved = record
    if moved:
        return f"'{name}' moves the channel dimension (e.g. a channel shuffle)"
    if name in _RESHAPING or tp_type == "RESHAPE":
        if shape_in == shape_out:
            return None
        if len(shape_in) >= 2 and shape_out == (shape_in[0], math.prod(shape_in[1:])):
            return None  # flatten into [batch, features]: Torch-Pruning maps these indices
        if len(shape_in) >= 2 and len(shape_out) >= 2 and shape_in[:2] == shape_out[:2]:
            return None  # batch and channel dims untouched (e.g. flattening spatial dims)
        return f"'{name}' reshapes {list(shape_in)} -> {list(shape_out)} across the channel dimension"
    if tp_type == "ELEMENTWISE" and len(shape_in) >= 2 and len(shape_out) >= 2 and shape_in[1] != shape_out[1]:
        if shape_in[1] == 1 or shape_out[0] != shape_in[0]:
            return None  # broadcasting a [*, 1, ...] operand, or not a channel op
        return f"'{name}' changes the channel count {shape_in[1]} -> {shape_out[1]}"
    return None


class _SafeMapping:
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
        except Exception as error:  # noqa: BLE001 - see class docstring
            reason = f"an op where Torch-Pruning cannot map channel indices ({type(error).__name__}: {error})"
            for node in (self.dep.source, self.dep.target):
                if node.type.name not in ("CONV", "LINEAR", "BN", "DEPTHWISE_CONV"):
                    self.barriers.setdefault(node, reason)
            _SafeMapping.failures.append(reason)
            return []


@contextlib.contextmanager
def _safe_index_mapping(barriers: dict[Any, str], recorder: _OpRecorder):
    """Run Torch-Pruning's index-mapping update node by node: barrier nodes are skipped and a node
    whose update raises becomes a barrier (instead of aborting the whole analysis)."""
    from torch_pruning import ops as tp_ops
    from torch_pruning.dependency import index_mapping

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
                    if mapping is not None and not isinstance(mapping, _SafeMapping):
                        dep.index_mapping[i] = _SafeMapping(mapping, dep, barriers)

    def _update(graph) -> None:
        for _, node in graph.module2node.items():
            fn = updaters.get(node.type)
            if fn is None:
                continue
            if node in barriers:
                continue
            reason = _barrier_reason(recorder.ops.get(node.grad_fn), node.type.name)
            if reason is not None:
                barriers[node] = reason
                continue
            try:
                fn(graph, node)
            except Exception as error:  # noqa: BLE001 - Torch-Pruning cannot map this op
                barriers[node] = f"Torch-Pruning cannot map channel indices through it ({type(error).__name__}: {error})"

    index_mapping.update_index_mapping = update
    try:
        yield
    finally:
        index_mapping.update_index_mapping = original


class CouplingGraph:
    """Torch-Pruning ``DependencyGraph`` of ``model`` plus condensa's barrier checks.

    ``model`` must be a plain module (no parametrizations: pass ``finalize(deepcopy(model))``);
    surgery mutates it through :meth:`prune`. Raises :class:`~condensa.errors.ModelError` when
    the model cannot be traced at all.
    """

    def __init__(self, model: nn.Module, example_input: Any) -> None:
        import torch_pruning as tp

        from ..errors import ModelError

        self.model = model
        self.barriers: dict[Any, str] = {}
        self._recorder = _OpRecorder()
        self._tp = tp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with torch.enable_grad(), _safe_index_mapping(self.barriers, self._recorder), self._recorder:
                    # a bare tensor is wrapped: Torch-Pruning calls model(*inputs) first, which would feed an
                    # unbatched sample to models that accept one
                    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else example_input
                    self.graph = tp.DependencyGraph().build_dependency(model, example_inputs=inputs, verbose=False)
            except Exception as error:  # noqa: BLE001 - report which model/op failed
                raise ModelError(
                    f"structured surgery: Torch-Pruning cannot trace {type(model).__name__}: "
                    f"{type(error).__name__}: {error}"
                ) from error
        self._names = {module: name for name, module in model.named_modules()}
        # Element-wise ops recorded as barriers too (the index-mapping pass only sees reshape-like nodes).
        for node in self.graph.module2node.values():
            if node in self.barriers or node.type.name not in ("ELEMENTWISE", "RESHAPE"):
                continue
            reason = _barrier_reason(self._recorder.ops.get(node.grad_fn), node.type.name)
            if reason is not None:
                self.barriers[node] = reason

    # -- member classification ----------------------------------------------------------------
    def _kind(self, module: Any, handler: Any) -> str:
        tp = self._tp
        name = getattr(handler, "__name__", "")
        if isinstance(module, _CONVS):
            if module.groups == module.out_channels and module.out_channels > 1 and module.groups == module.in_channels:
                return "dw"
            if module.groups > 1:  # grouped conv: channels are removed at the same positions in every group
                return "gout" if name == "prune_out_channels" else "gin"
            return "out" if name == "prune_out_channels" else "in"
        if isinstance(module, nn.Linear):
            return "out" if name == "prune_out_channels" else "in"
        if isinstance(module, _NORMS):
            return "bn"
        if isinstance(module, nn.Module) and type(module).__module__.startswith(tp.ops.__name__):
            if type(module).__name__ in ("_ElementWiseOp", "_ConcatOp", "_SplitOp", "_ReshapeOp", "_SliceOp"):
                return "op"
        return "other"

    def _group(self, tp_group) -> ChannelGroup:
        members: list[Member] = []
        blocked: str | None = None
        if _SafeMapping.failures:
            blocked = f"channels pass through {_SafeMapping.failures[0]}"
            _SafeMapping.failures.clear()
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
        with warnings.catch_warnings(), _safe_index_mapping(self.barriers, self._recorder):
            warnings.simplefilter("ignore")
            _SafeMapping.failures.clear()
            for tp_group in self.graph.get_all_groups(root_module_types=(*_CONVS, nn.Linear)):
                group = self._group(tp_group)
                _SafeMapping.failures.clear()
                yield group

    def prune(self, group: ChannelGroup, root_idxs: list[int]) -> ChannelGroup:
        """Remove ``root_idxs`` of ``group`` from the model; returns the executed group (member
        indices as they were just before removal)."""
        with warnings.catch_warnings(), _safe_index_mapping(self.barriers, self._recorder):
            warnings.simplefilter("ignore")
            _SafeMapping.failures.clear()
            tp_group = self.graph.get_pruning_group(group._root_module, group._root_handler, list(root_idxs))
            executed = self._group(tp_group)
            if executed.blocked is not None:
                raise RuntimeError(executed.blocked)
            tp_group.prune(record_history=False)
        return executed


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with condensa's masks and quantizers baked in (``finalize``).

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized<Class>``
    class with the original, and ``remove_parametrizations`` deletes the property from that
    class, which would break the original model. Each parametrized module of the copy therefore
    gets its own class before finalizing.
    """
    from torch.nn.utils import parametrize

    from . import params

    replica = copy.deepcopy(model)
    for module in replica.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, namespace)
    return params.finalize(replica)


def channel_groups(model: nn.Module, example_input: Any) -> list[ChannelGroup]:
    """The coupling groups of ``model`` (analysed on a plain copy; ``model`` is not modified)."""
    plain = plain_copy(model).eval()
    return list(CouplingGraph(plain, example_input).groups())


__all__ = ["following_norms", "plain_copy", "infer_example_input", "channel_groups", "ChannelGroup", "Member", "CouplingGraph"]
