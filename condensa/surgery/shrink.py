"""Structured surgery: physically remove pruned channels, giving a smaller ordinary module.

After ``FilterPrune`` / ``NeuronPrune`` the model still has its full width; masked channels are
zero but still computed. :func:`shrink` deletes them and everything coupled to them (the
following BatchNorm, the next layer's input columns, the other branches of a residual addition,
slices of a concatenation, the columns of a linear layer after a flatten, depthwise convs), so
the result is an ordinary ``nn.Module`` of the same class with smaller layers, which runs faster
on any hardware and exports to ONNX as is.

The coupling analysis and the per-layer removal functions come from Torch-Pruning's
``DependencyGraph`` (see :mod:`condensa.coupling` for why): it is the field's standard
tool for exactly this and handles the graph patterns above out of the box.

**Equality guarantee.** In the masked model a channel can only be removed without changing the
outputs if it is zero *everywhere* it flows. A residual addition couples the output channels of
several convs across blocks, so one conv's zero row is not enough: the identity path still
carries that channel. :func:`shrink` therefore removes a channel only when every producing member
of its coupling group provably outputs zero for it (conv/linear row and bias zero; BatchNorm
``beta == 0`` and ``gamma == 0`` or ``running_mean == 0``), and then verifies the outputs on the
example input (``allclose``; a failure raises :class:`~condensa.errors.ModelError` naming the group
that changed them). ``FilterPrune`` (``coupled=True``, the default) ranks and masks whole coupling
groups so that every channel it prunes is removable; masks from other sources (per-layer
``FilterPrune(coupled=False)``, unstructured pruning that happened to empty a row) are removed
exactly where that is safe and left in place otherwise.

Grouped convs (``1 < groups < channels``, e.g. RegNet) lose the same positions in every group,
so ``groups`` is preserved. Groups that cannot be mapped exactly (a channel shuffle or other
channel-mixing reshape, layer types without an exact removal rule such as LayerNorm/GroupNorm)
are left at full width; their pruned channels stay zero and are listed in
:attr:`ShrinkReport.skipped` (or raise with ``strict=True``, naming the layers).

Coverage (``FilterPrune(0.5, exclude=())``, random weights; ``benchmarks/speedup.py``):

==================== ======= =========================================================
digits_cnn           full    conv-BN-pool, flatten -> linear
resnet18, resnet50   full    residual additions across blocks
mobilenet_v2         full    depthwise convs, inverted residuals
mobilenet_v3_small   full    squeeze-excitation (hardsigmoid x features)
vgg11_bn             full    flatten -> linear (25088 inputs)
densenet121          full    concatenations
efficientnet_b0      full    squeeze-excitation, SiLU
regnet_y_400mf       full    grouped convs, squeeze-excitation
shufflenet_v2_x1_0   partial the 6 groups whose channels cross ``channel_shuffle`` stay full
                             width; branch-internal channels are removed
==================== ======= =========================================================
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..coupling import CONVS, NORMS, TRACE_ERRORS, ChannelGroup, CouplingGraph, infer_example_input
from ..errors import ModelError
from ..operators.params import baked_copy

_WIDTH_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")


class KeptIndices:
    """What both surgery reports offer the exporter: which original indices each tensor kept
    (``self.keep``: tensor -> dim -> kept indices), to slice integer codes and scales alike."""

    keep: dict[str, dict[int, list[int]]]

    def select(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Slice an original-shaped tensor (e.g. integer codes) the way ``name`` was shrunk."""
        for dim, idx in sorted(self.keep.get(name, {}).items()):
            tensor = tensor.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=tensor.device))
        return tensor

    def kept_rows(self, name: str, rows: int) -> torch.Tensor:
        """Original row (dim 0) indices of tensor ``name`` after surgery."""
        idx = self.keep.get(name, {}).get(0)
        return torch.arange(rows) if idx is None else torch.as_tensor(idx, dtype=torch.long)


@dataclass
class ShrinkReport(KeptIndices):
    """What :func:`shrink_with_report` did.

    ``removed``: channels removed per group root; ``skipped``: ``(group, reason)`` for groups
    that hold zero channels which could not be removed; ``widths``: the changed constructor
    attributes of every resized module (``{"layer1.0.conv1": {"out_channels": 32}}``);
    ``keep``: for every resized tensor, the original indices kept along each dim;
    ``max_abs_diff``: output difference on the example input (masked vs shrunk).
    """

    removed: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    widths: dict[str, dict[str, int]] = field(default_factory=dict)
    keep: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    channels_before: int = 0
    channels_after: int = 0

    @property
    def applied(self) -> bool:
        return bool(self.removed)


# -- dead-channel analysis --------------------------------------------------------------------


def _is_zero(tensor: torch.Tensor | None, index: int) -> bool:
    return tensor is None or bool((tensor[index] == 0).all())


def _member_dead(module: nn.Module, kind: str, idx: int) -> bool:
    """Does this producer output exactly zero on channel ``idx`` (given zero input there)?"""
    if kind in ("out", "gout", "dw"):
        return _is_zero(module.weight, idx) and _is_zero(module.bias, idx)
    if kind == "bn":
        weight = module.weight if module.affine else None
        bias = module.bias if module.affine else None
        if not _is_zero(bias, idx):
            return False
        mean = module.running_mean if module.track_running_stats else None
        return weight is not None and _is_zero(weight, idx) or mean is None or _is_zero(mean, idx)
    return True


@torch.no_grad()
def dead_channels(group: ChannelGroup) -> list[int]:
    """Root channel indices of ``group`` that every producing member outputs as exact zero."""
    dead = [True] * group.size
    for member in group.members:
        if not member.producer:
            continue
        for idx, root in zip(member.idxs, member.root_idxs, strict=True):
            if root is None or not dead[root]:
                continue
            if not _member_dead(member.module, member.kind, idx):
                dead[root] = False
    return [i for i, d in enumerate(dead) if d]


def _plan(group: ChannelGroup, dead: list[int], round_to: int | None) -> list[int]:
    """Which dead channels to remove: every removable class of dead channels, keeping the width a
    multiple of ``round_to`` (where the classes allow) and at least one channel."""
    size = group.size
    dead_set = set(dead)
    classes, frozen = group.classes()
    removable = [sorted(c) for c in classes if not frozen.intersection(c) and dead_set.issuperset(c)]
    removable.sort(key=lambda c: c[0])
    alive = size - sum(len(c) for c in removable)
    target = alive
    if round_to and round_to > 1:
        target = min(size, int(math.ceil(alive / round_to)) * round_to)
    target = max(target, min(size, round_to or 1), 1)
    remove: list[int] = []
    for cls in removable:
        if size - len(remove) - len(cls) >= target:
            remove.extend(cls)
    return sorted(remove)


# -- helpers ----------------------------------------------------------------------------------


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    if hasattr(out, "_fields"):
        return [t for v in out for t in _flat_outputs(v)]
    return []


@torch.no_grad()
def _outputs(model: nn.Module, example_input: Any) -> list[torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        if isinstance(example_input, dict):
            out = model(**example_input)
        elif isinstance(example_input, (list, tuple)):
            out = model(*example_input)
        else:
            out = model(example_input)
    finally:
        model.train(was_training)
    return [t.detach().float() for t in _flat_outputs(out)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[float, float]:
    """``(max abs diff, allowed)``; inf when the output structure differs."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        return math.inf, 0.0
    diff = max((float((x - y).abs().max()) for x, y in zip(a, b, strict=False) if x.numel()), default=0.0)
    scale = max((float(x.abs().max()) for x in a if x.numel()), default=0.0)
    return diff, 1e-4 * scale + 1e-30


def _widths(module: nn.Module) -> dict[str, int]:
    return {a: int(getattr(module, a)) for a in _WIDTH_ATTRS if isinstance(getattr(module, a, None), int)}


def _tensor_keep(name: str, module: nn.Module, keep_out: list[int] | None, keep_in: list[int] | None,
                 full_out: int, full_in: int, groups: int) -> dict[str, dict[int, list[int]]]:
    out: dict[str, dict[int, list[int]]] = {}
    changed_out = keep_out is not None and len(keep_out) != full_out
    changed_in = keep_in is not None and len(keep_in) != full_in
    prefix = f"{name}." if name else ""
    if isinstance(module, NORMS):
        if changed_out:
            for t in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, t, None) is not None:
                    out[prefix + t] = {0: list(keep_out)}
        return out
    weight: dict[int, list[int]] = {}
    if changed_out:
        weight[0] = list(keep_out)
        if getattr(module, "bias", None) is not None:
            out[prefix + "bias"] = {0: list(keep_out)}
    if changed_in and groups == 1:
        weight[1] = list(keep_in)
    elif changed_in and full_in != groups:  # grouped conv: dim 1 holds the positions within a group
        per_group = full_in // groups
        weight[1] = [k % per_group for k in keep_in[: len(keep_in) // groups]]
    if weight:
        out[prefix + "weight"] = weight
    return out


# -- surgery ----------------------------------------------------------------------------------


def shrink_with_report(
    model: nn.Module,
    example_input: Any = None,
    *,
    round_to: int | None = None,
    strict: bool = False,
    check: bool = True,
) -> tuple[nn.Module, ShrinkReport]:
    """Remove every removable zero channel; returns ``(shrunk copy, report)``.

    ``model`` is not modified (it may still carry condensa's masks/quantizers; the copy has them
    baked in). ``example_input`` drives the tracing (guessed from the first layer when ``None``).
    ``round_to=8`` keeps every resized width a multiple of 8 (zero channels are kept to pad).
    ``strict``: raise when a group holding zero channels cannot be shrunk instead of skipping it.
    ``check``: verify the outputs against ``model`` on ``example_input``.
    """
    if example_input is None:
        example_input = infer_example_input(model)
        if example_input is None:
            raise ModelError(
                f"structured surgery: cannot guess an input for {type(model).__name__}; pass example_input"
            )
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ModelError(f"structured surgery: round_to must be a positive integer, got {round_to!r}")
    work = baked_copy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = CouplingGraph(work, example_input)
        groups = list(graph.groups())
    modules = dict(work.named_modules())
    before = {name: _widths(m) for name, m in modules.items()}
    full_out = {name: m.weight.shape[0] for name, m in modules.items()
                if isinstance(m, (*CONVS, nn.Linear, *NORMS)) and getattr(m, "weight", None) is not None}
    for name, m in modules.items():
        if isinstance(m, NORMS) and m.weight is None:
            full_out[name] = m.num_features
    full_in = {name: m.weight.shape[1] * (m.groups if isinstance(m, CONVS) else 1)
               for name, m in modules.items() if isinstance(m, (*CONVS, nn.Linear))}
    conv_groups = {name: m.groups for name, m in modules.items() if isinstance(m, CONVS)}

    report = ShrinkReport()
    plan: list[tuple[ChannelGroup, list[int]]] = []
    for group in groups:
        dead = dead_channels(group)
        report.channels_before += group.size
        if group.blocked is not None:
            report.channels_after += group.size
            if dead:
                reason = group.blocked
                if strict:
                    raise ModelError(
                        f"structured surgery: cannot remove the {len(dead)} zero channel(s) of group "
                        f"{group.describe()}: {reason}"
                    )
                report.skipped.append((group.describe(), reason))
            continue
        remove = _plan(group, dead, round_to)
        report.channels_after += group.size - len(remove)
        if remove:
            plan.append((group, remove))

    keep_out = {name: list(range(n)) for name, n in full_out.items()}
    keep_in = {name: list(range(n)) for name, n in full_in.items()}
    for group, remove in plan:
        try:
            executed = graph.prune(group, remove)
        except TRACE_ERRORS as error:  # name the group Torch-Pruning failed on
            raise ModelError(
                f"structured surgery: removing channels of group {group.describe()} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        report.removed[group.root] = len(remove)
        for member in executed.members:
            drop = set(member.idxs)
            if member.kind in ("out", "gout", "dw", "bn") and member.name in keep_out:
                keep_out[member.name] = [k for j, k in enumerate(keep_out[member.name]) if j not in drop]
            elif member.kind in ("in", "gin") and member.name in keep_in:
                keep_in[member.name] = [k for j, k in enumerate(keep_in[member.name]) if j not in drop]

    for name, module in work.named_modules():
        if name in keep_out or name in keep_in:
            report.keep.update(_tensor_keep(name, module, keep_out.get(name), keep_in.get(name),
                                            full_out.get(name, -1), full_in.get(name, -1),
                                            conv_groups.get(name, 1)))
        after = _widths(module)
        changed = {a: v for a, v in after.items() if before.get(name, {}).get(a) != v}
        if changed:
            report.widths[name] = after

    if check:
        reference = _outputs(model, example_input)
        diff, allowed, failure = _compare(reference, work, example_input)
        report.max_abs_diff = diff
        if not diff <= allowed:
            culprit = _find_culprit(model, example_input, plan, reference)
            what = f"fails to run ({failure})" if failure else f"changed the outputs (max abs diff {diff:.3g})"
            raise ModelError(
                f"structured surgery: the shrunk {type(model).__name__} {what}; {culprit}. Exclude these layers "
                "from FilterPrune/NeuronPrune, or export without surgery"
            )
    return work, report


def _compare(reference: list[torch.Tensor], model: nn.Module, example_input: Any) -> tuple[float, float, str | None]:
    try:
        got = _outputs(model, example_input)
    except TRACE_ERRORS as error:  # e.g. a hard-coded view no longer fits
        return math.inf, 0.0, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    diff, allowed = _max_diff(reference, got)
    return diff, allowed, None


def _find_culprit(model: nn.Module, example_input: Any, plan: list[tuple[ChannelGroup, list[int]]],
                  reference: list[torch.Tensor]) -> str:
    """Replay the plan group by group to name the first group whose removal changes outputs."""
    try:
        work = baked_copy(model).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = CouplingGraph(work, example_input)
            groups = {g.root: g for g in graph.groups()}
        for group, remove in plan:
            graph.prune(groups[group.root], remove)
            diff, allowed, failure = _compare(reference, work, example_input)
            if not diff <= allowed:
                return (f"removing channels of group {group.describe()} breaks the model: the forward uses them in a "
                        "way the dependency graph does not see (e.g. a hard-coded shape) or they are not zero everywhere")
    except (*TRACE_ERRORS, ModelError) as error:  # best effort diagnosis
        return f"could not isolate the group ({type(error).__name__}: {error})"
    return "no single group is responsible"


def shrink(model: nn.Module, example_input: Any = None, round_to: int | None = None) -> nn.Module:
    """The masked ``model`` with its removable zero channels physically removed (a copy).

    Outputs equal the masked model's (verified on ``example_input``); see
    :func:`shrink_with_report` for options and the report of what was removed or skipped.
    """
    return shrink_with_report(model, example_input, round_to=round_to)[0]


def apply_widths(model: nn.Module, widths: dict[str, dict[str, int]], shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Resize the modules of a freshly built ``model`` to the widths recorded by surgery.

    Sets the constructor attributes in ``widths`` and replaces every parameter/buffer named in
    ``shapes`` whose shape differs by an uninitialized tensor of the recorded shape (the caller
    loads the values next). Raises :class:`ModelError` naming the module when one is missing.
    """
    modules = dict(model.named_modules())
    for name, attrs in widths.items():
        module = modules.get(name)
        if module is None:
            raise ModelError(f"surgery widths: the rebuilt model has no module '{name}' (different architecture?)")
        for attr, value in attrs.items():
            if not hasattr(module, attr):
                raise ModelError(f"surgery widths: module '{name}' ({type(module).__name__}) has no attribute '{attr}'")
            setattr(module, attr, int(value))
    for full, shape in shapes.items():
        module_name, _, tensor_name = full.rpartition(".")
        module = modules.get(module_name)
        if module is None:
            continue
        current = module._parameters.get(tensor_name)
        if current is not None:
            if tuple(current.shape) != tuple(shape):
                module._parameters[tensor_name] = nn.Parameter(
                    torch.empty(shape, dtype=current.dtype, device=current.device), requires_grad=current.requires_grad
                )
            continue
        buffer = module._buffers.get(tensor_name)
        if buffer is not None and tuple(buffer.shape) != tuple(shape):
            module._buffers[tensor_name] = torch.empty(shape, dtype=buffer.dtype, device=buffer.device)
    return model


__all__ = ["shrink", "shrink_with_report", "ShrinkReport", "dead_channels", "apply_widths"]
