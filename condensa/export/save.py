"""``save``: write a compressed model as a packed, verifiable checkpoint folder.

Every tensor is stored in the cheapest layout of the packed format (:mod:`condensa.packing`: sparse
indices, integer or codebook codes, entropy-coded), and the file is exactly as large as the
footprint metric says (:func:`condensa.metrics.footprint` computes the same size without
writing). After FilterPrune / NeuronPrune the model is first shrunk physically
(:mod:`condensa.surgery`) and the smaller tensors are stored (the file is then smaller than the
footprint, which costs the unshrunk model). Transformers (attention/MLP blocks of a standard
layout) are shrunk by :func:`condensa.surgery.shrink_transformer` instead: zero attention heads
and MLP neurons (``HeadPrune`` / ``MLPPrune``) are removed and the head counts and HF config
updated. Steps: shrink -> encode -> write weights -> ONNX (optional) -> ``hf/`` (optional: a
Hugging Face folder ``from_pretrained`` reads) -> manifest last.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io as files
from ..coupling import infer_example_input
from ..errors import ModelError
from ..metrics.footprint import model_tensors
from ..operators import params
from ..packing import layout as packing
from ..surgery import (
    ShrinkReport,
    TransformerShrinkReport,
    has_dead_structures,
    is_transformer,
    shrink_transformer,
    shrink_with_report,
)
from ..versions import versions
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, ONNX, WEIGHTS, factory_spec, layout_hash, sha256
from .onnx import export_onnx

#: subfolder with a plain Hugging Face copy (config.json + model.safetensors) of a transformer
HF_FOLDER = "hf"
STRUCTURED = ("FilterPrune", "NeuronPrune", "HeadPrune", "MLPPrune")


def _strategy_names(strategy: Any) -> set[str]:
    if strategy is None:
        return set()
    text = json.dumps(files.jsonable(strategy.to_dict() if hasattr(strategy, "to_dict") else strategy))
    return {name for name in STRUCTURED if name in text}


def _has_zero_rows(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            weight = module.weight
            if weight.dim() >= 2 and bool((weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1).any()):
                return True
    return False


@dataclass
class _Shrunk:
    """The model to store (shrunk or a plain copy) and what surgery did."""

    base: nn.Module
    report: ShrinkReport | TransformerShrinkReport | None
    info: dict[str, Any]


def _shrink(model: nn.Module, strategy: Any, example_input: torch.Tensor | None, surgery: bool | str,
            round_to: int | None) -> _Shrunk:
    """Step 1: physically remove pruned channels when the strategy is structured (or asked to)."""
    structured = _strategy_names(strategy)
    if is_transformer(model):  # heads and MLP neurons; Torch-Pruning's tracing does not finish on these models
        return _shrink_transformer(model, example_input, surgery, bool(structured) or (strategy is None and has_dead_structures(model)))
    want = surgery is True or (surgery == "auto" and (bool(structured) or (strategy is None and _has_zero_rows(params.baked_copy(model)))))
    report: ShrinkReport | None = None
    note = None
    if want:
        if example_input is None:
            if surgery is True:
                raise ModelError("surgery needs an example_input (it could not be guessed)")
            note = "no example input to trace the model"
        else:
            try:
                base, report = shrink_with_report(model, example_input, round_to=round_to)
            except ModelError as error:
                if surgery is True:
                    raise
                note = str(error)
                report = None
    if report is None or not report.applied:
        base = params.baked_copy(model).eval()
        if report is not None and not report.applied:
            note = note or "no removable channels"
            report = None
    info: dict[str, Any] = {"applied": report is not None}
    if report is not None:
        info.update({
            "round_to": round_to, "widths": report.widths, "removed": report.removed,
            "skipped": [list(s) for s in report.skipped], "channels_before": report.channels_before,
            "channels_after": report.channels_after, "max_abs_diff": report.max_abs_diff,
        })
    elif note:
        info["reason"] = note
    return _Shrunk(base, report, info)


def _shrink_transformer(model: nn.Module, example_input: Any, surgery: bool | str, structured: bool) -> _Shrunk:
    """Step 1 for transformers: remove zero attention heads and MLP neurons
    (:func:`~condensa.surgery.shrink_transformer`; outputs checked on ``example_input``)."""
    if not (surgery is True or (surgery == "auto" and structured)):
        return _Shrunk(params.baked_copy(model).eval(), None, {"applied": False})
    try:
        base, report = shrink_transformer(model, example_input)
    except ModelError as error:
        if surgery is True:
            raise
        return _Shrunk(params.baked_copy(model).eval(), None, {"applied": False, "reason": str(error)})
    if not report.applied:
        if surgery is True:
            raise ModelError("transformer surgery: no zero attention head or MLP neuron to remove")
        return _Shrunk(base, None, {"applied": False, "reason": "no zero attention head or MLP neuron (all layers keep "
                                                                 "the widest layer's count: uniform widths)"})
    info = {"applied": True, "kind": "transformer", "widths": report.widths, "heads": report.heads,
            "kv_heads": report.kv_heads, "neurons": report.neurons, "config": report.config,
            "config_expressible": report.config_expressible, "config_error": report.config_error,
            "params_before": report.params_before,
            "params_after": report.params_after, "max_abs_diff": report.max_abs_diff}
    return _Shrunk(base, report, info)


def _hf_entry(base: nn.Module, path_dir: Path, surgery_info: dict[str, Any]) -> dict[str, Any] | None:
    """Step 5: ``hf/`` (``config.json`` + plain dequantized ``model.safetensors``) for a Hugging
    Face model whose config describes the stored architecture; ``None`` for other models. GPT-2
    and BERT configs derive ``head_dim = hidden / heads``, so after head pruning no config can
    describe them: the entry says why, and the packed checkpoint is the only artifact."""
    shutil.rmtree(path_dir / HF_FOLDER, ignore_errors=True)  # never leave a stale copy next to a new checkpoint
    if not hasattr(base, "save_pretrained") or getattr(base, "config", None) is None:
        return None
    if surgery_info.get("config_expressible") is False:
        why = surgery_info.get("config_error") or ("fewer heads of the same size in a layout whose config derives "
                                                   "head_dim = hidden / heads")
        return {"error": f"no Hugging Face config describes the shrunk model ({why}); condensa.export.load rebuilds it"}
    from ..models.hf import save_hf  # imports transformers: only for Hugging Face models

    try:
        folder = save_hf(base, path_dir / HF_FOLDER)
    except Exception as error:  # noqa: BLE001 - the packed checkpoint is valid without it
        shutil.rmtree(path_dir / HF_FOLDER, ignore_errors=True)
        return {"error": f"{type(error).__name__}: {error}"}
    listing = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p.read_bytes())} for p in sorted(folder.iterdir()) if p.is_file()}
    return {"folder": HF_FOLDER, "from_pretrained": True, "files": listing}


class _GroupsChanged(ModelError):
    """Surgery removed nonzero input columns of a group-wise quantized tensor."""


def _specs(model: nn.Module, shrunk: _Shrunk, quant: dict[str, str], skip: dict[str, str]) -> list[packing.Spec]:
    """Step 2: what each tensor is stored as. Unshrunk: the caller's model itself (its quantizers
    give the exact codes). Shrunk: the smaller copy, but integer codes and scales are the original
    ones, sliced as surgery sliced the tensor (re-quantizing a sliced row could pick another scale).
    Group-wise tensors cannot be sliced along their inputs (groups would move), so they are
    re-quantized after surgery, which gives the same values when the removed input columns were
    zero (groups skip dead columns); otherwise :class:`_GroupsChanged`."""
    if shrunk.report is None:
        return packing.specs(model, quant, skip)
    out = packing.specs(shrunk.base, quant, skip)
    for i, spec in enumerate(out):
        if spec.kind not in (packing.INT, packing.GROUPED):
            continue
        module_name, _, tensor_name = spec.name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        source = (params.masked_tensor(module, tensor_name) if params.get_quant(module, tensor_name) is not None
                  else getattr(module, tensor_name).detach())
        if spec.kind == packing.GROUPED:
            original = packing.grouped_spec(spec.name, source.cpu(), spec.bits, spec.group_size, spec.effective.dtype)
            if not torch.equal(shrunk.report.select(spec.name, original.effective), spec.effective):
                raise _GroupsChanged(f"{spec.name}: surgery removes nonzero input columns of a group-wise quantized "
                                     "tensor, which would regroup it")
            continue
        q, scale = params.quantize_int(source.cpu(), spec.bits)
        q = shrunk.report.select(spec.name, q)
        if scale.numel() > 1:
            scale = scale[shrunk.report.kept_rows(spec.name, scale.numel())]
        out[i] = packing.int_spec(spec.name, q, scale, spec.bits, spec.effective.dtype)
    return out


def _int_bits(quantized: dict[str, str | None]) -> list[int]:
    """The integer widths among ``{tensor: dtype}`` (``int8`` -> 8), for QDQ in ONNX."""
    return sorted({int(d[3:]) for d in quantized.values() if isinstance(d, str) and params.is_quant_dtype(d)
                   and d.startswith("int")})  # group-wise (int4g32) tensors stay dequantized fp32 in ONNX


def _onnx_entry(base: nn.Module, example_input: Any, path_dir: Path, int_bits: list[int]) -> dict[str, Any]:
    """Step 4: ``model.onnx``, or why there is none (the packed checkpoint is valid without it)."""
    if not isinstance(example_input, torch.Tensor):
        return {"error": "no tensor example_input to export with"}
    try:
        return export_onnx(base, example_input, path_dir / ONNX, int_bits=int_bits)
    except ModelError as error:  # both exporters failed, or onnxruntime cannot run the file
        return {"error": f"{type(error).__name__}: {error}"}


def save(
    model: nn.Module,
    path_dir: str | Path,
    *,
    strategy: Any = None,
    record: Any = None,
    knobs: dict | None = None,
    metrics: dict | None = None,
    model_factory: str | Callable[..., nn.Module] | dict | None = None,
    model_kwargs: dict | None = None,
    example_input: torch.Tensor | None = None,
    onnx: bool = True,
    surgery: bool | str = "auto",
    round_to: int | None = None,
    options: packing.Options | None = None,
    hf: bool = False,
) -> dict[str, Any]:
    """Write a packed checkpoint of the compressed ``model`` into ``path_dir``; returns the manifest.

    ``model`` is the in-memory compressed model (with condensa's masks/quantizers, or finalized
    with ``record`` giving the quantized bits). ``model_factory`` (a spec such as ``"resnet18"`` or
    ``"pkg.mod:fn"``, an importable callable, or ``{"name", "kwargs"}``) and ``model_kwargs`` let
    :func:`~condensa.export.load` rebuild the architecture. ``surgery``: ``"auto"`` shrinks the
    model when the strategy has FilterPrune/NeuronPrune/HeadPrune/MLPPrune (or, with no strategy,
    when a layer has all-zero rows, or a transformer a zero head or MLP neuron; transformers always
    go through :func:`~condensa.surgery.shrink_transformer`) and stores it unshrunk if surgery is
    impossible (the reason is recorded);
    ``True`` requires it; ``False`` never shrinks. ``example_input`` drives surgery and the ONNX
    check (guessed from the first layer when ``None``). ``options`` restricts the layouts the
    encoder may pick (benchmarks compare encodings; default: the cheapest per tensor, which is what
    the footprint metric sizes); the decoder needs none. ``hf``: also write ``hf/``, a Hugging Face
    folder of the (shrunk) model that ``from_pretrained`` reads, when its config can describe it.
    """
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    spec, kwargs = factory_spec(model_factory, model_kwargs)
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()  # never move the caller's model
    was_training = model.training
    model.eval()
    try:
        if example_input is None:
            example_input = infer_example_input(model)
        elif isinstance(example_input, torch.Tensor):
            example_input = example_input.detach().cpu()
        shrunk = _shrink(model, strategy, example_input, surgery, round_to)

        quant = packing.quant_plan(model, record)
        aliases = packing.aliases(shrunk.base)
        try:
            tensor_specs = _specs(model, shrunk, quant, aliases)
        except _GroupsChanged as error:
            if surgery is True:
                raise
            shrunk = _Shrunk(params.baked_copy(model).eval(), None, {"applied": False, "reason": str(error)})
            aliases = packing.aliases(shrunk.base)
            tensor_specs = _specs(model, shrunk, quant, aliases)
        options = options or packing.Options()
        size = packing.packed_size(tensor_specs, options)
        layout = {spec.name: {**packing.describe(spec, size.tensors[spec.name]), "quantized": quant.get(spec.name)}
                  for spec in tensor_specs}
        layout_sha = layout_hash(layout, aliases, shrunk.info.get("widths", {}))
        data, size = packing.encode(tensor_specs, bytes.fromhex(layout_sha), options, size=size)
        files.atomic_write_bytes(path_dir / WEIGHTS, data)
        written: dict[str, Any] = {WEIGHTS: {"bytes": len(data), "sha256": sha256(data)}}
        if onnx:
            written[ONNX] = _onnx_entry(shrunk.base, example_input, path_dir, _int_bits(quant))
        if ONNX not in written or "error" in written[ONNX]:
            (path_dir / ONNX).unlink(missing_ok=True)  # never leave a stale ONNX file next to a new checkpoint
        hf_info = _hf_entry(shrunk.base, path_dir, shrunk.info) if hf else None
        if hf_info is not None:
            written[HF_FOLDER] = hf_info

        reference_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                              for t in model_tensors(model).values())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"factory": spec, "kwargs": files.jsonable(kwargs), "class": f"{type(model).__module__}.{type(model).__qualname__}"},
            "strategy": files.jsonable(strategy.to_dict() if hasattr(strategy, "to_dict") else strategy),
            "knobs": files.jsonable(knobs),
            "metrics": files.jsonable(metrics),
            "record": files.jsonable(record.to_dict() if hasattr(record, "to_dict") else record),
            "surgery": files.jsonable(shrunk.info),
            "example_input": ({"shape": list(example_input.shape), "dtype": str(example_input.dtype).replace("torch.", "")}
                              if isinstance(example_input, torch.Tensor) else None),
            "size": {"file_bytes": len(data), "payload_bytes": size.payload_bytes, "payload_bits": size.bits,
                     "fp32_bytes": reference_bytes, "compression_ratio": reference_bytes / len(data),
                     "bits_by_part": size.breakdown(), "bits_by_role": size.by_role()},
            "content_hash": written[WEIGHTS]["sha256"],
            "files": written,
            "layout_sha256": layout_sha,
            "aliases": aliases,
            "tensors": layout,
            "versions": versions(),
        }
        files.atomic_write_json(path_dir / MANIFEST, manifest)  # last: its presence marks a complete checkpoint
        return manifest
    finally:
        model.train(was_training)


def republish(source: Path, path_dir: Path, model: nn.Module, example_input: torch.Tensor | None,
              manifest: dict[str, Any]) -> dict[str, Any]:
    """Copy the packed checkpoint in ``source`` (a run folder) to ``path_dir`` byte for byte and add
    ``model.onnx`` of ``model`` (the checkpoint as :func:`~condensa.export.load` rebuilt it) and,
    for a Hugging Face model, ``hf/`` (see :func:`save`); returns the new manifest, written last."""
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    weights = (Path(source) / WEIGHTS).read_bytes()
    if sha256(weights) != manifest["files"][WEIGHTS]["sha256"]:
        raise ModelError(f"{source / WEIGHTS} changed while it was being exported")
    files.atomic_write_bytes(path_dir / WEIGHTS, weights)
    written = {WEIGHTS: dict(manifest["files"][WEIGHTS])}
    if example_input is not None:
        quantized = {name: meta.get("quantized") for name, meta in manifest["tensors"].items()}
        written[ONNX] = _onnx_entry(model.eval(), example_input.detach().cpu(), path_dir, _int_bits(quantized))
    if ONNX not in written or "error" in written[ONNX]:
        (path_dir / ONNX).unlink(missing_ok=True)
    hf_info = _hf_entry(model, path_dir, manifest.get("surgery") or {})
    if hf_info is not None:
        written[HF_FOLDER] = hf_info
    out = {**manifest, "files": written, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "versions": versions()}
    files.atomic_write_json(path_dir / MANIFEST, out)
    return out


__all__ = ["save", "republish", "HF_FOLDER"]
