"""Pruning operators: unstructured, filter/neuron (structured), block, and N:M.

All rank by magnitude of the current *masked* weights, so applying an operator twice gives the
same mask (idempotent), and composing two pruning operators ANDs their masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LayerSelectionError
from ..knobs import is_open
from . import params
from .base import Operator
from .select import WEIGHTED_TYPES, select_layers, weight_names

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
ROW_TYPES = (nn.Linear,) + CONV_TYPES


def _check_density(op: Operator, value: Any) -> None:
    if is_open(value):
        if value.low <= 0 or value.high > 1:  # type: ignore[union-attr]
            raise ConfigError(f"{type(op).__name__}.density range must lie in (0, 1], got {value.describe()}")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{type(op).__name__}.density must be a number in (0, 1], got {value!r}")


def _check_choice(op: Operator, field_name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{type(op).__name__}.{field_name} must be one of {list(allowed)}, got {value!r}")


def _record(touched: dict[str, list[str]], module_name: str, tensor_name: str, label: str) -> None:
    touched.setdefault(f"{module_name}.{tensor_name}" if module_name else tensor_name, []).append(label)


def _keep_count(density: float, total: int) -> int:
    return max(1, min(total, int(round(density * total))))


def _topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping exactly ``keep`` largest entries of ``scores`` (ties broken by index)."""
    flat = scores.reshape(-1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[torch.topk(flat, keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


@dataclass(frozen=True)
class Prune(Operator):
    """Unstructured magnitude pruning to ``density`` (fraction of weights kept).

    ``scope="global"``: one threshold across all selected tensors (layers with small weights are
    pruned harder, as in Condensa); ``scope="layer"``: every tensor keeps ``density`` of its own.
    """

    density: Any = 0.1
    layers: Any = WEIGHTED_TYPES
    exclude: Any = ()
    scope: str = "global"

    label = "prune"
    tunable = ("density",)

    def validate(self) -> None:
        _check_density(self, self.density)
        _check_choice(self, "scope", self.scope, ("global", "layer"))

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, operator="Prune")
        tensors = [(mn, m, tn) for mn, m in selected.items() for tn in weight_names(m)]
        if self.scope == "layer":
            for module_name, module, tensor_name in tensors:
                scores = params.masked_tensor(module, tensor_name).abs()
                params.set_mask(module, tensor_name, _topk_mask(scores, _keep_count(self.density, scores.numel())))
                _record(touched, module_name, tensor_name, "prune")
            return
        scores = [params.masked_tensor(m, tn).abs().reshape(-1).float() for _, m, tn in tensors]
        flat = torch.cat([s.cpu() for s in scores])
        mask = _topk_mask(flat, _keep_count(self.density, flat.numel()))
        offset = 0
        for (module_name, module, tensor_name), score in zip(tensors, scores):
            shape = params.raw_tensor(module, tensor_name).shape
            params.set_mask(module, tensor_name, mask[offset : offset + score.numel()].reshape(shape))
            offset += score.numel()
            _record(touched, module_name, tensor_name, "prune")


def row_scores(weight: torch.Tensor, criterion: str) -> torch.Tensor:
    """Norm of each output channel/row (dim 0) of a weight tensor."""
    rows = weight.reshape(weight.shape[0], -1).float()
    return rows.abs().sum(dim=1) if criterion == "l1" else rows.pow(2).sum(dim=1).sqrt()


@dataclass(frozen=True)
class FilterPrune(Operator):
    """Structured pruning of whole output channels (conv filters / linear output rows).

    ``coupled=True`` (default): channels are ranked and removed per *coupling group* found by
    Torch-Pruning's dependency graph (:func:`condensa.operators.coupling.channel_groups`): the
    output channels of convs joined by a residual addition, the slices of a concatenation, a
    depthwise conv and its producer, etc. A channel's score is the sum of the ``l1``/``l2`` row norms
    of every producing conv/linear in its group; each group keeps ``round(density * channels)``
    channels; every member is masked (conv/linear rows and biases, BatchNorm weight and bias), so a
    pruned channel is exactly zero everywhere it flows and ``condensa.export.shrink`` can delete it
    without changing the outputs. A group is pruned only if all its producing conv/linear layers
    are selected; groups that reach the model output, or pass through ops Torch-Pruning cannot map
    exactly (channel shuffles, grouped convs, LayerNorm/GroupNorm, ...), are left dense. The model
    is traced with one forward pass of an input of ``input_shape`` (guessed from the first layer
    when ``None``); if it cannot be traced, the per-layer mode below is used with a warning.

    ``coupled=False``: each selected layer keeps ``round(density * out_channels)`` of its own
    channels, and the BatchNorm directly following it is masked too
    (:func:`condensa.operators.coupling.following_norms`). Channels coupled through a residual
    addition then generally stay nonzero on another branch, so surgery can remove fewer of them.

    ``exclude=("@last",)`` by default leaves the last *selected* layer dense (for NeuronPrune the
    classifier, whose rows are the classes); in coupled mode groups reaching the model output are
    skipped anyway, so ``exclude=()`` is safe there (``schemes/filter.py`` uses it).
    """

    density: Any = 0.5
    layers: Any = CONV_TYPES
    exclude: Any = ("@last",)
    criterion: str = "l1"
    coupled: bool = True
    input_shape: Any = None

    label = "filter"
    tunable = ("density",)
    supported = ROW_TYPES

    def __post_init__(self) -> None:
        if isinstance(self.input_shape, list):
            object.__setattr__(self, "input_shape", tuple(self.input_shape))
        super().__post_init__()

    def validate(self) -> None:
        _check_density(self, self.density)
        _check_choice(self, "criterion", self.criterion, ("l1", "l2"))
        if not isinstance(self.coupled, bool):
            raise ConfigError(f"{type(self).__name__}.coupled must be true or false, got {self.coupled!r}")
        shape = self.input_shape
        if shape is not None and not (
            isinstance(shape, tuple) and shape and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise ConfigError(f"{type(self).__name__}.input_shape must be a list of positive integers, got {shape!r}")

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, supported=self.supported, operator=type(self).__name__)
        if self.coupled:
            groups = self._groups(model)
            if groups is not None:
                self._apply_coupled(model, selected, groups, touched)
                return
        self._apply_per_layer(model, selected, touched)

    def _groups(self, model: nn.Module):
        import warnings

        from ..errors import ModelError
        from .coupling import channel_groups, infer_example_input

        if self.input_shape is not None:
            try:
                param = next(model.parameters())
                device = param.device
            except StopIteration:
                device = torch.device("cpu")
            example = torch.randn(self.input_shape, generator=torch.Generator().manual_seed(0)).to(device)
        else:
            example = infer_example_input(model)
        if example is None:
            warnings.warn(
                f"{type(self).__name__}: cannot guess an input for {type(model).__name__} to trace its channel "
                "coupling; pruning each layer on its own (set input_shape to enable coupled pruning)",
                stacklevel=4,
            )
            return None
        try:
            with torch.enable_grad():
                return channel_groups(model, example)
        except ModelError as error:
            warnings.warn(f"{type(self).__name__}: {error}; pruning each layer on its own", stacklevel=4)
            return None

    def _apply_coupled(self, model: nn.Module, selected: dict[str, nn.Module], groups, touched) -> None:
        modules = dict(model.named_modules())
        selected_names = set(selected)
        masks: dict[tuple[str, str], torch.Tensor] = {}

        def drop(module_name: str, tensor_name: str, index: list[int]) -> None:
            key = (module_name, tensor_name)
            if key not in masks:
                masks[key] = torch.ones(params.raw_tensor(modules[module_name], tensor_name).shape, dtype=torch.bool)
            masks[key][index] = False

        for group in groups:
            if group.blocked is not None:
                continue
            weighted = [m for m in group.members if m.kind in ("out", "gout", "dw")]
            if not weighted or any(m.name not in selected_names for m in weighted):
                continue
            scores = torch.zeros(group.size)
            alive = torch.zeros(group.size, dtype=torch.bool)
            for member in weighted:
                module = modules[member.name]
                weight = params.masked_tensor(module, "weight")
                rows = row_scores(weight, self.criterion).cpu()
                mask = params.get_mask(module, "weight")
                row_alive = mask.reshape(mask.shape[0], -1).any(dim=1).cpu() if mask is not None else torch.ones(len(rows), dtype=torch.bool)
                idx = torch.as_tensor(member.idxs, dtype=torch.long)
                root = torch.as_tensor(member.root_idxs, dtype=torch.long)
                scores.index_add_(0, root, rows[idx])
                alive[root] |= row_alive[idx]
            # a grouped conv loses the same positions in every group: rank classes of channels
            classes, frozen = group.classes()
            classes = [c for c in classes if not frozen.intersection(c)]
            if not classes:
                continue
            class_scores = torch.stack([scores[c].sum() for c in classes])
            class_alive = torch.stack([alive[c].any() for c in classes])
            # channels pruned earlier in every member stay pruned and rank last
            class_scores = torch.where(class_alive, class_scores, torch.full_like(class_scores, -1.0))
            kept = _topk_mask(class_scores, _keep_count(self.density, len(classes)))
            keep = torch.ones(group.size, dtype=torch.bool)
            for cls, k in zip(classes, kept.tolist(), strict=True):
                if not k:
                    keep[cls] = False
            for member in group.members:
                if member.kind not in ("out", "gout", "dw", "bn"):
                    continue
                index = [i for i, r in zip(member.idxs, member.root_idxs, strict=True) if r is not None and not keep[r]]
                if not index:
                    continue
                for tensor_name in ("weight", "bias"):
                    if getattr(modules[member.name], tensor_name, None) is not None:
                        drop(member.name, tensor_name, index)
        for (module_name, tensor_name), mask in masks.items():
            module = modules[module_name]
            params.set_mask(module, tensor_name, mask)
            _record(touched, module_name, tensor_name, self.label)

    def _apply_per_layer(self, model: nn.Module, selected: dict[str, nn.Module], touched) -> None:
        from .coupling import following_norms

        norms = following_norms(model, list(selected))
        for module_name, module in selected.items():
            weight = params.masked_tensor(module, "weight")
            scores = row_scores(weight, self.criterion)
            alive = params.get_mask(module, "weight")
            if alive is not None:  # channels pruned earlier stay pruned and rank last
                scores = torch.where(alive.reshape(alive.shape[0], -1).any(dim=1), scores, torch.full_like(scores, -1.0))
            keep = _topk_mask(scores, _keep_count(self.density, scores.numel()))
            params.set_mask(module, "weight", keep.reshape((-1,) + (1,) * (weight.dim() - 1)).expand_as(weight).clone())
            _record(touched, module_name, "weight", self.label)
            if getattr(module, "bias", None) is not None:
                params.set_mask(module, "bias", keep.clone())
                _record(touched, module_name, "bias", self.label)
            norm = norms.get(module_name)
            if norm is not None:
                for tensor_name in ("weight", "bias"):
                    if getattr(norm[1], tensor_name, None) is not None:
                        params.set_mask(norm[1], tensor_name, keep.clone())
                        _record(touched, norm[0], tensor_name, self.label)


@dataclass(frozen=True)
class NeuronPrune(FilterPrune):
    """Structured pruning of linear-layer neurons (output rows), ranked by row norm.

    The same mechanism as :class:`FilterPrune` aimed at ``nn.Linear`` layers by default.
    """

    layers: Any = (nn.Linear,)
    criterion: str = "l2"

    label = "neuron"


@dataclass(frozen=True)
class BlockPrune(Operator):
    """Prune ``block_size`` blocks of the weight viewed as a 2-D ``[out, in * kernel]`` matrix.

    ``block_size`` is ``(rows, cols)`` or an int meaning ``(1, cols)``; blocks are ranked by their
    L2 norm, globally across the selected layers or per layer. Edge blocks may be smaller.
    Blocks map onto block-sparse kernels (e.g. 1x4 or 4x4 tiles).
    """

    density: Any = 0.25
    block_size: Any = (1, 4)
    layers: Any = ROW_TYPES
    exclude: Any = ()
    scope: str = "layer"

    label = "block"
    tunable = ("density",)

    def __post_init__(self) -> None:
        size = self.block_size
        if isinstance(size, int) and not isinstance(size, bool):
            size = (1, size)
        if isinstance(size, list):
            size = tuple(size)
        object.__setattr__(self, "block_size", size)
        super().__post_init__()

    def validate(self) -> None:
        _check_density(self, self.density)
        _check_choice(self, "scope", self.scope, ("global", "layer"))
        size = self.block_size
        if not (isinstance(size, tuple) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size)):
            raise ConfigError(f"BlockPrune.block_size must be a positive int or [rows, cols], got {size!r}")

    def _block_scores(self, weight: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        rows, cols = self.block_size
        matrix = weight.reshape(weight.shape[0], -1).float()
        out, inp = matrix.shape
        padded = torch.nn.functional.pad(matrix, (0, (-inp) % cols, 0, (-out) % rows))
        blocks = padded.reshape(padded.shape[0] // rows, rows, padded.shape[1] // cols, cols)
        return blocks.pow(2).sum(dim=(1, 3)).sqrt(), (out, inp)

    def _expand(self, block_mask: torch.Tensor, shape2d: tuple[int, int], shape: torch.Size) -> torch.Tensor:
        rows, cols = self.block_size
        full = block_mask.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)
        return full[: shape2d[0], : shape2d[1]].reshape(shape)

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, supported=ROW_TYPES, operator="BlockPrune")
        entries = []
        for module_name, module in selected.items():
            weight = params.masked_tensor(module, "weight")
            scores, shape2d = self._block_scores(weight)
            entries.append((module_name, module, weight.shape, scores, shape2d))
        if self.scope == "global":
            flat = torch.cat([e[3].reshape(-1) for e in entries])
            keep = _topk_mask(flat, _keep_count(self.density, flat.numel()))
            masks, offset = [], 0
            for e in entries:
                masks.append(keep[offset : offset + e[3].numel()].reshape(e[3].shape))
                offset += e[3].numel()
        else:
            masks = [_topk_mask(e[3], _keep_count(self.density, e[3].numel())) for e in entries]
        for (module_name, module, shape, _, shape2d), block_mask in zip(entries, masks):
            params.set_mask(module, "weight", self._expand(block_mask, shape2d, shape))
            _record(touched, module_name, "weight", "block")


def nm_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View ``weight`` as ``[..., groups, m]`` with groups running along the input dimension.

    Linear ``[out, in]`` groups consecutive inputs; conv ``[out, in, *k]`` groups input channels
    at each kernel position (the layout sparse tensor cores use after channels-last).
    """
    if weight.dim() == 2:
        return weight.reshape(weight.shape[0], weight.shape[1] // m, m)
    moved = weight.movedim(1, -1)  # [out, *k, in]
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_ungroup(groups: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return groups.reshape(shape)
    moved_shape = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return groups.reshape(moved_shape).movedim(-1, 1)


@dataclass(frozen=True)
class NMPrune(Operator):
    """N:M semi-structured sparsity: keep the ``n`` largest of every ``m`` consecutive weights
    along the input dimension (2:4 runs on sparse tensor cores). The input dimension of each
    selected layer must be divisible by ``m``; exclude layers where it is not (often the first).
    """

    n: int = 2
    m: int = 4
    layers: Any = ROW_TYPES
    exclude: Any = ()

    label = "nm"

    def validate(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 1 <= self.n < self.m):
            raise ConfigError(f"NMPrune needs integers 1 <= n < m, got n={self.n!r} m={self.m!r}")

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, supported=ROW_TYPES, operator="NMPrune")
        for module_name, module in selected.items():
            weight = params.masked_tensor(module, "weight")
            if weight.shape[1] % self.m:
                raise LayerSelectionError(
                    f"NMPrune: layer '{module_name}' has input dimension {weight.shape[1]}, not divisible by "
                    f"m={self.m}; add it to 'exclude'"
                )
            groups = nm_groups(weight.abs(), self.m)
            top = torch.topk(groups, self.n, dim=-1).indices
            keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
            params.set_mask(module, "weight", nm_ungroup(keep, weight.shape))
            _record(touched, module_name, "weight", f"nm{self.n}:{self.m}")


def density_of(tensor: torch.Tensor) -> float:
    return float((tensor != 0).float().mean()) if tensor.numel() else 1.0


def is_nm_sparse(tensor: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` along the input dimension has at most ``n`` nonzeros."""
    if tensor.dim() < 2 or tensor.shape[1] % m:
        return False
    return bool(((nm_groups(tensor, m) != 0).sum(dim=-1) <= n).all())


__all__ = ["Prune", "FilterPrune", "NeuronPrune", "BlockPrune", "NMPrune", "row_scores"]
