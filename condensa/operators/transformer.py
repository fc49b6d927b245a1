"""Transformer-aware structured pruning: whole attention heads (``HeadPrune``) and MLP neurons
(``MLPPrune``), found by layout, masked so that :func:`condensa.surgery.transformer.shrink_transformer`
can delete them exactly.

Layouts are recognized by structure (attribute names), not by class, so every model that follows
one of the three standard layouts works, whatever its class is called:

========== ======================================================= ==============================
layout     attention                                               MLP
========== ======================================================= ==============================
``llama``  ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (grouped KV ``gate_proj``/``up_proj`` ->
           heads: ``k``/``v`` have ``num_key_value_heads``)         ``down_proj`` (also ``up``/``down``
                                                                   without a gate)
``gpt2``   fused ``c_attn`` (q | k | v along its outputs) ->        ``c_fc`` -> ``c_proj``
           ``c_proj``; ``transformers`` ``Conv1D`` (weight
           ``[in, out]``) or ``nn.Linear``
``bert``   ``query``/``key``/``value`` -> ``output.dense`` of the   ``intermediate.dense`` ->
           parent attention block                                  ``output.dense``
========== ======================================================= ==============================

Why hand-written: Torch-Pruning 1.6's ``MetaPruner`` did not finish in 10 minutes on a 4-layer
Llama and raises in ``update_concat_index_mapping`` on GPT-2's fused ``Conv1D``; head structure
(grouped KV heads, a fused q|k|v projection) is not something a channel dependency graph knows.
Masks (not surgery) are what the operators apply, like every other condensa operator: recovery
trains through them, and the masked model equals the shrunk one (a removed head's ``o_proj``
columns and a removed neuron's down-projection column are exactly zero).

Ranking is by weights (data-free, like the other operators): a head scores
``||W_o[:, head]||_F * ||W_v[kv head]||_F`` (what the head can write into the residual stream), a
neuron ``||W_down[:, j]|| * mean_i ||W_in_i[j, :]||``. Heads and neurons already pruned score -1
and rank last, so applying an operator twice gives the same masks. Every layer keeps the same
count (``round(density * heads)``; with grouped KV heads ``round(density * heads per group)`` in
every group), so the shrunk model is expressible by a standard config (``from_pretrained`` works).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LayerSelectionError
from . import params
from .base import Operator, check_density, record_touch
from .prune import keep_count

# -- linear-like layers: nn.Linear ([out, in]) and transformers' Conv1D ([in, out]) ------------


def is_conv1d(module: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D`` (checked by name: no transformers import needed)."""
    return any(c.__name__ == "Conv1D" for c in type(module).__mro__) and hasattr(module, "nf")


def is_linear_like(module: Any) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Module) and is_conv1d(module))


def out_axis(module: nn.Module) -> int:
    """Axis of the weight that indexes output features (0 for Linear, 1 for Conv1D)."""
    return 1 if is_conv1d(module) else 0


def in_axis(module: nn.Module) -> int:
    return 0 if is_conv1d(module) else 1


def out_features(module: nn.Module) -> int:
    return params.raw_tensor(module, "weight").shape[out_axis(module)]


def weight_of(module: nn.Module) -> torch.Tensor:
    """Masked weight as ``[out, in]`` (Conv1D transposed)."""
    w = params.masked_tensor(module, "weight")
    return w.t() if is_conv1d(module) else w


def bias_of(module: nn.Module) -> torch.Tensor | None:
    return params.masked_tensor(module, "bias") if getattr(module, "bias", None) is not None else None


# -- sites ------------------------------------------------------------------------------------


@dataclass
class Proj:
    """One projection: module name, module, and the slice of its outputs (the fused c_attn has
    three) that belongs to the site."""

    name: str
    module: nn.Module
    offset: int = 0  # first output feature of this part (fused projections)


@dataclass
class AttentionSite:
    name: str  # the module holding q/k/v (the one whose head-count attributes change)
    module: nn.Module
    layout: str  # llama | gpt2 | bert
    q: Proj
    k: Proj
    v: Proj
    o: Proj
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def projections(self) -> list[Proj]:
        return [self.q, self.k, self.v, self.o]


@dataclass
class MLPSite:
    name: str
    module: nn.Module
    layout: str
    inputs: list[Proj]  # rows are neurons (gate/up, c_fc, intermediate.dense)
    output: Proj  # columns are neurons (down, c_proj, output.dense)
    width: int


@dataclass
class Sites:
    attention: list[AttentionSite] = field(default_factory=list)
    mlp: list[MLPSite] = field(default_factory=list)


def _child(module: nn.Module, path: str) -> nn.Module | None:
    for part in path.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _int_attr(module: nn.Module, *names: str) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def find_sites(model: nn.Module) -> Sites:
    """Every attention block and MLP of a standard layout in ``model`` (registration order)."""
    sites = Sites()
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        # llama-style attention (also Mistral, Qwen2, OPT's out_proj)
        q, k, v = (_child(module, n) for n in ("q_proj", "k_proj", "v_proj"))
        o = _child(module, "o_proj") or _child(module, "out_proj")
        if all(isinstance(m, nn.Linear) for m in (q, k, v, o)):
            head_dim = _int_attr(module, "head_dim", "head_size")
            if head_dim:
                o_name = "o_proj" if _child(module, "o_proj") is not None else "out_proj"
                sites.attention.append(AttentionSite(
                    name, module, "llama", Proj(prefix + "q_proj", q), Proj(prefix + "k_proj", k), Proj(prefix + "v_proj", v),
                    Proj(prefix + o_name, o), out_features(q) // head_dim, out_features(k) // head_dim, head_dim))
            continue
        # gpt2-style fused attention
        c_attn, c_proj = _child(module, "c_attn"), _child(module, "c_proj")
        if is_linear_like(c_attn) and is_linear_like(c_proj) and not hasattr(module, "q_attn"):
            heads, head_dim = _int_attr(module, "num_heads"), _int_attr(module, "head_dim")
            split = _int_attr(module, "split_size")
            if heads and head_dim and split and out_features(c_attn) == 3 * split == 3 * heads * head_dim:
                sites.attention.append(AttentionSite(
                    name, module, "gpt2", Proj(prefix + "c_attn", c_attn, 0), Proj(prefix + "c_attn", c_attn, split),
                    Proj(prefix + "c_attn", c_attn, 2 * split), Proj(prefix + "c_proj", c_proj), heads, heads, head_dim))
            continue
        # gpt2-style MLP
        c_fc = _child(module, "c_fc")
        if is_linear_like(c_fc) and is_linear_like(c_proj):
            sites.mlp.append(MLPSite(name, module, "gpt2", [Proj(prefix + "c_fc", c_fc)], Proj(prefix + "c_proj", c_proj),
                                     out_features(c_fc)))
            continue
        # llama-style MLP (SwiGLU gate/up -> down, or up -> down)
        up, down, gate = _child(module, "up_proj"), _child(module, "down_proj"), _child(module, "gate_proj")
        if isinstance(up, nn.Linear) and isinstance(down, nn.Linear):
            inputs = ([Proj(prefix + "gate_proj", gate)] if isinstance(gate, nn.Linear) else []) + [Proj(prefix + "up_proj", up)]
            sites.mlp.append(MLPSite(name, module, "llama", inputs, Proj(prefix + "down_proj", down), out_features(up)))
            continue
        # bert-style: attention.self.{query,key,value} -> attention.output.dense
        selfattn, out = _child(module, "self"), _child(module, "output.dense")
        if selfattn is not None and isinstance(out, nn.Linear):
            qb, kb, vb = (_child(selfattn, n) for n in ("query", "key", "value"))
            heads, head_dim = _int_attr(selfattn, "num_attention_heads"), _int_attr(selfattn, "attention_head_size")
            if all(isinstance(m, nn.Linear) for m in (qb, kb, vb)) and heads and head_dim:
                sp = f"{prefix}self."
                sites.attention.append(AttentionSite(
                    f"{prefix}self", selfattn, "bert", Proj(sp + "query", qb), Proj(sp + "key", kb), Proj(sp + "value", vb),
                    Proj(prefix + "output.dense", out), heads, out_features(kb) // head_dim, head_dim))
                continue
        # bert-style MLP: layer.intermediate.dense -> layer.output.dense
        inter = _child(module, "intermediate.dense")
        if isinstance(inter, nn.Linear) and isinstance(out, nn.Linear) and _child(module, "attention") is not None:
            sites.mlp.append(MLPSite(name, module, "bert", [Proj(prefix + "intermediate.dense", inter)],
                                     Proj(prefix + "output.dense", out), out_features(inter)))
    return sites


# -- masks ------------------------------------------------------------------------------------


def _feature_mask(module: nn.Module, keep: torch.Tensor, axis_out: bool) -> torch.Tensor:
    """Full-shape weight mask keeping output (``axis_out``) or input features ``keep`` (bool)."""
    weight = params.raw_tensor(module, "weight")
    axis = out_axis(module) if axis_out else in_axis(module)
    shape = [1, 1]
    shape[axis] = -1
    return keep.to(weight.device).reshape(shape).expand_as(weight).clone()


def _mask_outputs(proj: Proj, keep: torch.Tensor, touched: dict, label: str) -> None:
    """Mask output features ``[offset, offset + len(keep))`` of ``proj`` where ``keep`` is False."""
    module = proj.module
    full = torch.ones(out_features(module), dtype=torch.bool)
    full[proj.offset : proj.offset + len(keep)] = keep
    params.set_mask(module, "weight", _feature_mask(module, full, True))
    record_touch(touched, proj.name, "weight", label)
    if getattr(module, "bias", None) is not None:
        params.set_mask(module, "bias", full.to(params.raw_tensor(module, "bias").device))
        record_touch(touched, proj.name, "bias", label)


def _mask_inputs(proj: Proj, keep: torch.Tensor, touched: dict, label: str) -> None:
    params.set_mask(proj.module, "weight", _feature_mask(proj.module, keep, False))
    record_touch(touched, proj.name, "weight", label)


def _rows(proj: Proj, count: int) -> torch.Tensor:
    """``[count, in]`` rows (output features) of a projection's part."""
    return weight_of(proj.module)[proj.offset : proj.offset + count].float()


def head_scores(site: AttentionSite) -> torch.Tensor:
    """``[num_heads]`` importance: ``||W_o[:, head]|| * ||W_v[kv head]||``."""
    d, g = site.head_dim, site.group
    o_cols = weight_of(site.o.module).float()[:, : site.num_heads * d]
    o_norm = o_cols.reshape(o_cols.shape[0], site.num_heads, d).pow(2).sum(dim=(0, 2)).sqrt()
    v_rows = _rows(site.v, site.num_kv_heads * d).reshape(site.num_kv_heads, -1).pow(2).sum(dim=1).sqrt()
    return (o_norm * v_rows.repeat_interleave(g)).cpu()


def heads_alive(site: AttentionSite) -> torch.Tensor:
    d = site.head_dim
    o_cols = weight_of(site.o.module)[:, : site.num_heads * d]
    return (o_cols.reshape(o_cols.shape[0], site.num_heads, d) != 0).any(dim=2).any(dim=0).cpu()


def keep_heads(site: AttentionSite, density: float) -> torch.Tensor:
    """Bool ``[num_heads]``: ``round(density * heads)`` heads (multi-head attention), or the same
    number of query heads in every KV group (grouped KV heads)."""
    g = site.group
    scores = torch.where(heads_alive(site), head_scores(site), torch.full((site.num_heads,), -1.0))
    keep = torch.zeros(site.num_heads, dtype=torch.bool)
    if g == 1:
        keep[torch.topk(scores, keep_count(density, site.num_heads)).indices] = True
        return keep
    per_group = keep_count(density, g)
    for group in range(site.num_kv_heads):
        block = scores[group * g : (group + 1) * g]
        top = torch.topk(block, per_group).indices + group * g
        keep[top] = True
    return keep


def apply_head_mask(site: AttentionSite, keep: torch.Tensor, touched: dict, label: str = "head") -> None:
    """Zero the q rows and o columns of dropped heads, and k/v rows of KV heads all of whose
    query heads are dropped."""
    d, g = site.head_dim, site.group
    q_keep = keep.repeat_interleave(d)
    kv_keep = keep.reshape(site.num_kv_heads, g).any(dim=1).repeat_interleave(d)
    _mask_outputs(site.q, q_keep, touched, label)
    _mask_outputs(site.k, kv_keep, touched, label)
    _mask_outputs(site.v, kv_keep, touched, label)
    o_keep = torch.ones(params.raw_tensor(site.o.module, "weight").shape[in_axis(site.o.module)], dtype=torch.bool)
    o_keep[: site.num_heads * d] = q_keep
    _mask_inputs(site.o, o_keep, touched, label)


def neuron_scores(site: MLPSite) -> torch.Tensor:
    out_cols = weight_of(site.output.module).float()[:, : site.width]
    out_norm = out_cols.pow(2).sum(dim=0).sqrt()
    in_norm = torch.stack([_rows(p, site.width).pow(2).sum(dim=1).sqrt() for p in site.inputs]).mean(dim=0)
    return (out_norm * in_norm).cpu()


def neurons_alive(site: MLPSite) -> torch.Tensor:
    return (weight_of(site.output.module)[:, : site.width] != 0).any(dim=0).cpu()


def keep_neurons(site: MLPSite, density: float, multiple_of: int = 1) -> torch.Tensor:
    count = keep_count(density, site.width)
    if multiple_of > 1:
        count = min(site.width, max(multiple_of, int(round(count / multiple_of)) * multiple_of))
    scores = torch.where(neurons_alive(site), neuron_scores(site), torch.full((site.width,), -1.0))
    keep = torch.zeros(site.width, dtype=torch.bool)
    keep[torch.topk(scores, count).indices] = True
    return keep


def apply_neuron_mask(site: MLPSite, keep: torch.Tensor, touched: dict, label: str = "mlp") -> None:
    for proj in site.inputs:
        _mask_outputs(proj, keep, touched, label)
    _mask_inputs(site.output, keep, touched, label)


def _selected(sites: list, layers: tuple, exclude: tuple, what: str) -> list:
    """The sites whose module name matches a ``layers`` glob (all when empty) and no ``exclude`` glob."""

    def hit(name: str, patterns: tuple) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or name.startswith(p.rstrip("*").rstrip(".") + ".") for p in patterns)

    chosen = [s for s in sites if (not layers or hit(s.name, layers)) and not hit(s.name, exclude)]
    if not sites:
        raise LayerSelectionError(f"{what}: the model has no attention/MLP block of a known layout (llama: q/k/v/o_proj, "
                                  "gate/up/down_proj; gpt2: c_attn/c_proj/c_fc; bert: query/key/value, intermediate/output)")
    if not chosen:
        raise LayerSelectionError(f"{what}: no block selected (layers={list(layers)}, exclude={list(exclude)}); blocks: "
                                  f"{', '.join(s.name for s in sites[:8])}")
    return chosen


def _check_globs(op: Operator) -> None:
    for field_name in ("layers", "exclude"):
        for pattern in getattr(op, field_name):
            if not isinstance(pattern, str):
                raise ConfigError(f"{type(op).__name__}.{field_name} must be globs on attention/MLP module names "
                                  f"(e.g. 'model.layers.0.*'), got {pattern!r}")


@dataclass(frozen=True)
class HeadPrune(Operator):
    """Prune whole attention heads: keep ``round(density * heads)`` heads in every selected
    attention block (with grouped KV heads: ``round(density * heads per KV group)`` per group,
    at least one), ranked by ``||W_o[:, head]|| * ||W_v[kv head]||``.

    ``layers``/``exclude``: globs on the attention module's name (empty = all blocks).
    """

    density: Any = 0.5
    layers: Any = ()
    exclude: Any = ()

    label = "head"
    tunable = ("density",)

    def validate(self) -> None:
        check_density(self, self.density)
        _check_globs(self)

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        for site in _selected(find_sites(model).attention, self.layers, self.exclude, "HeadPrune"):
            apply_head_mask(site, keep_heads(site, self.density), touched, self.label)


@dataclass(frozen=True)
class MLPPrune(Operator):
    """Prune MLP neurons (the hidden units between the up and down projections): keep
    ``round(density * width)`` in every selected MLP (a multiple of ``multiple_of``), ranked by
    ``||W_down[:, j]|| * mean ||W_in[j, :]||``; gate, up and down are masked together."""

    density: Any = 0.5
    layers: Any = ()
    exclude: Any = ()
    multiple_of: int = 1

    label = "mlp"
    tunable = ("density",)

    def validate(self) -> None:
        check_density(self, self.density)
        _check_globs(self)
        if isinstance(self.multiple_of, bool) or not isinstance(self.multiple_of, int) or self.multiple_of < 1:
            raise ConfigError(f"MLPPrune.multiple_of must be an integer >= 1, got {self.multiple_of!r}")

    def _apply(self, model: nn.Module, touched: dict[str, list[str]]) -> None:
        for site in _selected(find_sites(model).mlp, self.layers, self.exclude, "MLPPrune"):
            apply_neuron_mask(site, keep_neurons(site, self.density, self.multiple_of), touched, self.label)


__all__ = ["HeadPrune", "MLPPrune", "find_sites", "AttentionSite", "MLPSite", "is_conv1d", "out_axis", "in_axis"]
