"""Structured pruning: whole output channels (FilterPrune) or linear neurons (NeuronPrune).

Channels are ranked per coupling group (:mod:`condensa.coupling`) so that every pruned channel is
zero everywhere it flows and :mod:`condensa.surgery` can remove it without changing the outputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..coupling import channel_groups, following_norms, infer_example_input
from ..errors import ConfigError, ModelError
from . import params
from .base import Operator, check_choice, check_density, record_touch
from .prune import keep_count, topk_mask
from .select import CONV_TYPES, ROW_TYPES, select_layers


def row_scores(weight: torch.Tensor, criterion: str) -> torch.Tensor:
    """Norm of each output channel/row (dim 0) of a weight tensor."""
    rows = weight.reshape(weight.shape[0], -1).float()
    return rows.abs().sum(dim=1) if criterion == "l1" else rows.pow(2).sum(dim=1).sqrt()


@dataclass(frozen=True)
class FilterPrune(Operator):
    """Structured pruning of whole output channels (conv filters / linear output rows).

    ``coupled=True`` (default): channels are ranked and removed per *coupling group* found by
    Torch-Pruning's dependency graph (:func:`condensa.coupling.channel_groups`): the
    output channels of convs joined by a residual addition, the slices of a concatenation, a
    depthwise conv and its producer, etc. A channel's score is the sum of the ``l1``/``l2`` row norms
    of every producing conv/linear in its group; each group keeps ``round(density * channels)``
    channels; every member is masked (conv/linear rows and biases, BatchNorm weight and bias), so a
    pruned channel is exactly zero everywhere it flows and ``condensa.surgery.shrink`` can delete it
    without changing the outputs. A group is pruned only if all its producing conv/linear layers
    are selected; groups that reach the model output, or pass through ops Torch-Pruning cannot map
    exactly (channel shuffles, grouped convs, LayerNorm/GroupNorm, ...), are left dense. The model
    is traced with one forward pass of an input of ``input_shape`` (guessed from the first layer
    when ``None``); if it cannot be traced, the per-layer mode below is used with a warning.

    ``coupled=False``: each selected layer keeps ``round(density * out_channels)`` of its own
    channels, and the BatchNorm directly following it is masked too
    (:func:`condensa.coupling.following_norms`). Channels coupled through a residual
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
        check_density(self, self.density)
        check_choice(self, "criterion", self.criterion, ("l1", "l2"))
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
                return channel_groups(params.baked_copy(model), example)
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
            kept = topk_mask(class_scores, keep_count(self.density, len(classes)))
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
            record_touch(touched, module_name, tensor_name, self.label)

    def _apply_per_layer(self, model: nn.Module, selected: dict[str, nn.Module], touched) -> None:
        norms = following_norms(model, list(selected))
        for module_name, module in selected.items():
            weight = params.masked_tensor(module, "weight")
            scores = row_scores(weight, self.criterion)
            alive = params.get_mask(module, "weight")
            if alive is not None:  # channels pruned earlier stay pruned and rank last
                scores = torch.where(alive.reshape(alive.shape[0], -1).any(dim=1), scores, torch.full_like(scores, -1.0))
            keep = topk_mask(scores, keep_count(self.density, scores.numel()))
            params.set_mask(module, "weight", keep.reshape((-1,) + (1,) * (weight.dim() - 1)).expand_as(weight).clone())
            record_touch(touched, module_name, "weight", self.label)
            if getattr(module, "bias", None) is not None:
                params.set_mask(module, "bias", keep.clone())
                record_touch(touched, module_name, "bias", self.label)
            norm = norms.get(module_name)
            if norm is not None:
                for tensor_name in ("weight", "bias"):
                    if getattr(norm[1], tensor_name, None) is not None:
                        params.set_mask(norm[1], tensor_name, keep.clone())
                        record_touch(touched, norm[0], tensor_name, self.label)


@dataclass(frozen=True)
class NeuronPrune(FilterPrune):
    """Structured pruning of linear-layer neurons (output rows), ranked by row norm.

    The same mechanism as :class:`FilterPrune` aimed at ``nn.Linear`` layers by default.
    """

    layers: Any = (nn.Linear,)
    criterion: str = "l2"

    label = "neuron"


__all__ = ["FilterPrune", "NeuronPrune", "row_scores"]
