"""Head and neuron surgery for transformers: delete the attention heads and MLP neurons that
``HeadPrune`` / ``MLPPrune`` (or anything else) zeroed, and update the head counts the forward
uses, so the model really shrinks and runs faster.

Exactness: a query head is removed only when its ``o_proj`` columns (``c_proj`` rows in GPT-2's
``Conv1D`` layout) are all zero, so it contributes nothing; a KV head only when every query head
of its group goes; an MLP neuron only when its down-projection column is zero. Outputs are then
compared with the masked model on an example input (max abs diff in the report).

Uniform widths (default): every layer keeps the same number of heads, KV heads and neurons
(layers with more zeros keep some dead ones, which still contribute exactly zero), so the shrunk
architecture is a plain config: for the llama layout ``num_attention_heads``,
``num_key_value_heads``, ``head_dim`` and ``intermediate_size`` are rewritten and
``from_pretrained`` of a saved copy rebuilds it. GPT-2 and BERT configs cannot express fewer heads
of the same size (they derive ``head_dim = hidden / heads``); their MLP width can
(``n_inner`` / ``intermediate_size``), and :attr:`TransformerShrinkReport.config_expressible`
says whether the config describes the result (also False when transformers' own config validation
refuses it: Llama configs require ``hidden_size % num_attention_heads == 0`` even with an explicit
``head_dim``, so 3 of 4 heads at hidden size 32 has no config). Either way :func:`condensa.surgery.apply_widths`
rebuilds the shrunk model from a fresh one and the recorded widths (layer sizes and the head-count
attributes the forward reads), and :func:`apply_config` the config fields.

Why hand-written rather than Torch-Pruning (which :func:`condensa.surgery.shrink` uses for CNNs):
measured with Torch-Pruning 1.6.1 and transformers 5.24, its ``MetaPruner`` had not returned after
300 s on a 2-layer tiny Llama, and on GPT-2 it removed nothing (``Conv1D`` is opaque to it) or
raised in ``update_concat_index_mapping`` on the fused ``c_attn``; a channel dependency graph
knows nothing of heads or grouped KV heads either. ``transformers.pytorch_utils.prune_linear_layer``
slices ``nn.Linear`` only (its ``Conv1D`` counterpart was removed in transformers 5), so
:func:`slice_layer` does both layouts in place; it is index_select on two tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..operators.params import baked_copy
from ..operators.transformer import (
    AttentionSite,
    find_sites,
    heads_alive,
    in_axis,
    is_conv1d,
    neurons_alive,
    out_axis,
)
from ..outputs import logits_of
from .shrink import KeptIndices


@dataclass
class TransformerShrinkReport(KeptIndices):
    heads: dict[str, list[int]] = field(default_factory=dict)  # attention module -> kept query heads
    kv_heads: dict[str, list[int]] = field(default_factory=dict)
    neurons: dict[str, int] = field(default_factory=dict)  # mlp module -> kept width
    widths: dict[str, dict[str, int]] = field(default_factory=dict)  # module -> changed attributes
    keep: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # tensor -> dim -> kept indices
    config: dict[str, int] = field(default_factory=dict)  # config fields rewritten
    config_expressible: bool = True
    config_error: str | None = None  # why the rewritten config is refused (e.g. 3 heads for hidden size 32)
    max_abs_diff: float = 0.0
    params_before: int = 0
    params_after: int = 0

    @property
    def applied(self) -> bool:
        return bool(self.keep)


# -- slicing ----------------------------------------------------------------------------------


def slice_layer(module: nn.Module, out_idx: list[int] | None = None, in_idx: list[int] | None = None) -> dict[int, list[int]]:
    """Keep output features ``out_idx`` and input features ``in_idx`` of an ``nn.Linear`` or a
    ``Conv1D`` in place (same module object); returns ``{weight dim: kept indices}``."""
    keep: dict[int, list[int]] = {}
    weight = module.weight.detach()
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
    if out_idx is not None:
        axis = out_axis(module)
        weight = weight.index_select(axis, torch.as_tensor(out_idx, device=weight.device))
        if bias is not None:
            bias = bias.index_select(0, torch.as_tensor(out_idx, device=bias.device))
        keep[axis] = list(out_idx)
    if in_idx is not None:
        axis = in_axis(module)
        weight = weight.index_select(axis, torch.as_tensor(in_idx, device=weight.device))
        keep[axis] = list(in_idx)
    module.weight = nn.Parameter(weight.contiguous(), requires_grad=module.weight.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias.contiguous(), requires_grad=module.bias.requires_grad)
    if is_conv1d(module):
        module.nx, module.nf = weight.shape
    else:
        module.out_features, module.in_features = weight.shape
    return keep


def _record_keep(report: TransformerShrinkReport, name: str, module: nn.Module, keep: dict[int, list[int]],
                 out_changed: bool) -> None:
    if keep:
        report.keep[f"{name}.weight"] = keep
    if out_changed and getattr(module, "bias", None) is not None:
        report.keep[f"{name}.bias"] = {0: keep[out_axis(module)]}


def _width_attrs(module: nn.Module) -> dict[str, int]:
    if is_conv1d(module):
        return {"nf": module.nf, "nx": module.nx}
    return {"out_features": module.out_features, "in_features": module.in_features}


# -- planning ---------------------------------------------------------------------------------


def _head_plan(site: AttentionSite, kv_keep: int, per_group: int) -> tuple[list[int], list[int]]:
    """``(kept query heads, kept kv heads)``: groups with live heads first, then dead padding."""
    alive = heads_alive(site).reshape(site.num_kv_heads, site.group)
    live_groups = [g for g in range(site.num_kv_heads) if bool(alive[g].any())]
    dead_groups = [g for g in range(site.num_kv_heads) if g not in live_groups]
    groups = sorted((live_groups + dead_groups)[:kv_keep])
    heads = []
    for g in groups:
        live = [i for i in range(site.group) if bool(alive[g, i])]
        dead = [i for i in range(site.group) if not bool(alive[g, i])]
        heads += [g * site.group + i for i in sorted((live + dead)[:per_group])]
    return heads, groups


def _needs(site: AttentionSite) -> tuple[int, int]:
    alive = heads_alive(site).reshape(site.num_kv_heads, site.group)
    live_groups = int(alive.any(dim=1).sum())
    per_group = int(alive.sum(dim=1).max())
    return max(1, live_groups), max(1, per_group)


def _set_attrs(module: nn.Module, values: dict[str, int], report: TransformerShrinkReport, name: str) -> None:
    changed = {}
    for attr, value in values.items():
        if hasattr(module, attr) and getattr(module, attr) != value:
            setattr(module, attr, value)
            changed[attr] = value
    if changed:
        report.widths.setdefault(name, {}).update(changed)


def _example_for(model: nn.Module) -> torch.Tensor:
    vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if vocab is None:
        raise ModelError("transformer surgery: pass example_input (no embedding layer to guess token ids from)")
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def shrink_transformer(model: nn.Module, example_input: Any = None, *, uniform: bool = True, check: bool = True,
                       atol: float = 1e-4) -> tuple[nn.Module, TransformerShrinkReport]:
    """Remove every zero head and MLP neuron; returns ``(shrunk plain copy, report)``.

    ``model`` is not modified (masks and quantizers are baked into the copy). ``uniform`` keeps
    every layer at the same counts (see the module docstring). ``check`` compares logits with
    ``model`` on ``example_input`` (token ids; guessed from the embedding when ``None``) and
    raises :class:`~condensa.errors.ModelError` when they differ by more than ``atol`` relative
    to the largest logit.
    """
    work = baked_copy(model).eval()
    report = TransformerShrinkReport(params_before=sum(p.numel() for p in work.parameters()))
    sites = find_sites(work)

    needs = {s.name: _needs(s) for s in sites.attention}
    widths = {s.name: max(1, int(neurons_alive(s).sum())) for s in sites.mlp}
    if uniform and needs:
        kv_all, per_all = max(n[0] for n in needs.values()), max(n[1] for n in needs.values())
        needs = {k: (kv_all, per_all) for k in needs}
    if uniform and widths:
        widths = dict.fromkeys(widths, max(widths.values()))

    heads_changed = mlp_changed = False
    for site in sites.attention:
        kv_keep, per_group = needs[site.name]
        if kv_keep == site.num_kv_heads and per_group == site.group:
            continue
        heads, kv = _head_plan(site, kv_keep, per_group)
        d = site.head_dim
        q_rows = [h * d + i for h in heads for i in range(d)]
        kv_rows = [g * d + i for g in kv for i in range(d)]
        if site.layout == "gpt2":  # fused q | k | v
            split = site.num_heads * d
            rows = q_rows + [split + r for r in kv_rows] + [2 * split + r for r in kv_rows]
            _record_keep(report, site.q.name, site.q.module, slice_layer(site.q.module, out_idx=rows), True)
        else:
            for proj, rows in ((site.q, q_rows), (site.k, kv_rows), (site.v, kv_rows)):
                _record_keep(report, proj.name, proj.module, slice_layer(proj.module, out_idx=rows), True)
        o_in = params_in(site.o.module)
        o_keep = q_rows + list(range(site.num_heads * d, o_in))
        _record_keep(report, site.o.name, site.o.module, slice_layer(site.o.module, in_idx=o_keep), False)
        n_heads = len(heads)
        attrs = {"num_key_value_groups": per_group, "num_heads": n_heads, "num_attention_heads": n_heads,
                 "num_key_value_heads": len(kv), "all_head_size": n_heads * d}
        if site.layout == "gpt2":
            attrs["split_size"] = n_heads * d
        _set_attrs(site.module, attrs, report, site.name)
        report.heads[site.name] = heads
        report.kv_heads[site.name] = kv
        heads_changed = True
        for proj in {p.name: p for p in site.projections()}.values():
            report.widths[proj.name] = _width_attrs(proj.module)

    for site in sites.mlp:
        width = widths[site.name]
        if width == site.width:
            continue
        alive = neurons_alive(site)
        live = [j for j in range(site.width) if bool(alive[j])]
        dead = [j for j in range(site.width) if not bool(alive[j])]
        keep = sorted((live + dead)[:width])
        for proj in site.inputs:
            _record_keep(report, proj.name, proj.module, slice_layer(proj.module, out_idx=keep), True)
            report.widths[proj.name] = _width_attrs(proj.module)
        _record_keep(report, site.output.name, site.output.module, slice_layer(site.output.module, in_idx=keep), False)
        report.widths[site.output.name] = _width_attrs(site.output.module)
        _set_attrs(site.module, {"intermediate_size": width}, report, site.name)
        report.neurons[site.name] = width
        mlp_changed = True

    _update_config(work, sites, needs, widths, heads_changed, mlp_changed, uniform, report)
    report.params_after = sum(p.numel() for p in work.parameters())
    if check and report.applied:
        x = example_input if example_input is not None else _example_for(work)
        reference, got = _logits(model, x), _logits(work, x)
        if reference.shape != got.shape:
            raise ModelError(f"transformer surgery changed the output shape {list(reference.shape)} -> {list(got.shape)}")
        report.max_abs_diff = float((reference - got).abs().max())
        scale = float(reference.abs().max()) or 1.0
        if not report.max_abs_diff <= atol * scale:
            raise ModelError(f"transformer surgery changed the outputs (max abs diff {report.max_abs_diff:.3g}); the "
                             "removed heads/neurons were not zero everywhere they flow")
    return work, report


def is_transformer(model: nn.Module) -> bool:
    """True when ``model`` has an attention block or MLP of a standard layout: its structured
    surgery is :func:`shrink_transformer` (Torch-Pruning's tracing does not finish on these)."""
    sites = find_sites(model)
    return bool(sites.attention or sites.mlp)


def has_dead_structures(model: nn.Module) -> bool:
    """True when ``model`` has an attention head or MLP neuron of a standard layout that is zero
    (what :func:`shrink_transformer` would remove)."""
    sites = find_sites(model)
    return (any(not bool(heads_alive(s).all()) for s in sites.attention)
            or any(not bool(neurons_alive(s).all()) for s in sites.mlp))


def runnable(model: nn.Module, example_input: Any = None) -> nn.Module:
    """The plain module a compressed model runs as: shrunk when it has zero heads or MLP neurons
    of a standard layout (what latency must be measured on), else a baked copy."""
    if has_dead_structures(model):
        shrunk, report = shrink_transformer(model, example_input, check=False)
        if report.applied:
            return shrunk
    return baked_copy(model).eval()


def params_in(module: nn.Module) -> int:
    return module.weight.shape[in_axis(module)]


def _logits(model: nn.Module, x: Any) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        out = model(**x) if isinstance(x, dict) else model(x)
    finally:
        model.train(was)
    return logits_of(out).detach().float()


def _update_config(work: nn.Module, sites, needs, widths, heads_changed: bool, mlp_changed: bool, uniform: bool,
                   report: TransformerShrinkReport) -> None:
    config = getattr(work, "config", None)
    if config is None or not (heads_changed or mlp_changed):
        return
    if not uniform:
        report.config_expressible = False
        return
    layouts = {s.layout for s in sites.attention} | {s.layout for s in sites.mlp}
    changes: dict[str, int] = {}
    if heads_changed:
        site = sites.attention[0]
        kv_keep, per_group = needs[site.name]
        if layouts == {"llama"} and hasattr(config, "num_key_value_heads"):
            changes.update({"num_attention_heads": kv_keep * per_group, "num_key_value_heads": kv_keep,
                            "head_dim": site.head_dim})
        else:
            report.config_expressible = False  # GPT-2 / BERT derive head_dim = hidden / heads
    if mlp_changed:
        width = next(iter(widths.values()))
        for key in ("intermediate_size", "n_inner", "ffn_dim"):
            if hasattr(config, key) or (key == "n_inner" and "gpt2" in layouts):
                changes[key] = width
                break
    for key, value in changes.items():
        setattr(config, key, value)
    report.config = changes
    validate = getattr(config, "validate", None)  # transformers 5 configs check themselves, e.g. hidden % heads == 0
    if report.config_expressible and callable(validate):
        try:
            validate()
        except Exception as error:  # noqa: BLE001 - any refusal means no plain config describes the result
            report.config_expressible = False
            report.config_error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1].strip()}"


def apply_config(model: nn.Module, changes: dict[str, int]) -> nn.Module:
    """Write the config fields :func:`shrink_transformer` rewrote into a rebuilt model's config
    (``load`` resizes the layers with :func:`condensa.surgery.apply_widths`; this makes
    ``model.config`` describe them again, so ``save_pretrained`` of the loaded model is right)."""
    config = getattr(model, "config", None)
    if changes and config is None:
        raise ModelError(f"transformer surgery: the rebuilt {type(model).__name__} has no config to set {sorted(changes)} on")
    for key, value in (changes or {}).items():
        setattr(config, key, int(value))
    return model


__all__ = ["shrink_transformer", "TransformerShrinkReport", "slice_layer", "apply_config", "runnable", "has_dead_structures",
           "is_transformer"]
