"""Unstructured pruning operators: magnitude (global or per layer), block, and N:M.

All rank by magnitude of the current *masked* weights, so applying an operator twice gives the
same mask (idempotent), and composing two different pruning operators (N:M then Prune) ANDs their
masks. ``Compose`` refuses the same pruning operator twice on one tensor (two Prune densities on
one weight: the masks AND, so one density would silently not count).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LayerSelectionError
from . import params
from .base import Operator, check_choice, check_density, record_touch
from .select import ROW_TYPES, WEIGHTED_TYPES, select_layers, weight_names


def keep_count(density: float, total: int) -> int:
    return max(1, min(total, int(round(density * total))))


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
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
    prunes = True
    tunable = ("density",)

    def validate(self) -> None:
        check_density(self, self.density)
        check_choice(self, "scope", self.scope, ("global", "layer"))

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        selected = select_layers(model, self.layers, self.exclude, operator="Prune")
        tensors = [(mn, m, tn) for mn, m in selected.items() for tn in weight_names(m)]
        if self.scope == "layer":
            for module_name, module, tensor_name in tensors:
                scores = params.masked_tensor(module, tensor_name).abs()
                params.set_mask(module, tensor_name, topk_mask(scores, keep_count(self.density, scores.numel())))
                record_touch(touched, module_name, tensor_name, "prune")
            return
        scores = [params.masked_tensor(m, tn).abs().reshape(-1).float() for _, m, tn in tensors]
        flat = torch.cat([s.cpu() for s in scores])
        mask = topk_mask(flat, keep_count(self.density, flat.numel()))
        offset = 0
        for (module_name, module, tensor_name), score in zip(tensors, scores):
            shape = params.raw_tensor(module, tensor_name).shape
            params.set_mask(module, tensor_name, mask[offset : offset + score.numel()].reshape(shape))
            offset += score.numel()
            record_touch(touched, module_name, tensor_name, "prune")


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
    prunes = True
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
        check_density(self, self.density)
        check_choice(self, "scope", self.scope, ("global", "layer"))
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
            keep = topk_mask(flat, keep_count(self.density, flat.numel()))
            masks, offset = [], 0
            for e in entries:
                masks.append(keep[offset : offset + e[3].numel()].reshape(e[3].shape))
                offset += e[3].numel()
        else:
            masks = [topk_mask(e[3], keep_count(self.density, e[3].numel())) for e in entries]
        for (module_name, module, shape, _, shape2d), block_mask in zip(entries, masks):
            params.set_mask(module, "weight", self._expand(block_mask, shape2d, shape))
            record_touch(touched, module_name, "weight", "block")


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
    prunes = True

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
            record_touch(touched, module_name, "weight", f"nm{self.n}:{self.m}")


def density_of(tensor: torch.Tensor) -> float:
    return float((tensor != 0).float().mean()) if tensor.numel() else 1.0


def is_nm_sparse(tensor: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` along the input dimension has at most ``n`` nonzeros."""
    if tensor.dim() < 2 or tensor.shape[1] % m:
        return False
    return bool(((nm_groups(tensor, m) != 0).sum(dim=-1) <= n).all())


__all__ = ["Prune", "BlockPrune", "NMPrune", "nm_groups", "nm_ungroup", "is_nm_sparse", "density_of"]
