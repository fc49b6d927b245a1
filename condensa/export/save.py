"""``save``: write a compressed model as a packed, verifiable checkpoint folder.

Every tensor is stored in the encoding :func:`condensa.metrics.tensor_cost` picks (see
:mod:`.packing`), so the file is as small as the footprint metric says. After FilterPrune /
NeuronPrune the model is first shrunk physically (:mod:`condensa.surgery`) and the smaller
tensors are stored. Steps: shrink -> encode -> write weights -> ONNX (optional) -> manifest last.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .. import io as files
from ..coupling import infer_example_input
from ..errors import ModelError
from ..metrics.footprint import model_tensors
from ..operators import params
from ..surgery import ShrinkReport, shrink_with_report
from ..versions import versions
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, ONNX, WEIGHTS, factory_spec, layout_hash, sha256
from .onnx import export_onnx
from .packing import Encoded, encode_tensor


def _strategy_names(strategy: Any) -> set[str]:
    if strategy is None:
        return set()
    text = json.dumps(files.jsonable(strategy.to_dict() if hasattr(strategy, "to_dict") else strategy))
    return {name for name in ("FilterPrune", "NeuronPrune") if name in text}


def _record_bits(record: Any) -> dict[str, int]:
    if record is None:
        return {}
    if hasattr(record, "bits"):
        return dict(record.bits)
    if isinstance(record, dict):
        return {name: entry["bits"] for name, entry in record.items()
                if isinstance(entry, dict) and isinstance(entry.get("bits"), int)}
    return {}


def _has_zero_rows(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            weight = module.weight
            if weight.dim() >= 2 and bool((weight.detach().reshape(weight.shape[0], -1) == 0).all(dim=1).any()):
                return True
    return False


def _aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: canonical}`` for tensors registered under several names (tied weights)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        key = id(tensor)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _quant_plan(model: nn.Module, record: Any) -> dict[str, str]:
    """``{tensor: dtype}`` of quantized tensors: from the model's quantizers, else the record."""
    dtypes = dict(params.quant_dtypes(model))
    state = dict(model.state_dict())
    for name, bits in _record_bits(record).items():
        if name in dtypes or name not in state:
            continue
        tensor = state[name]
        if not tensor.is_floating_point() or bits >= torch.finfo(tensor.dtype).bits:
            continue
        if bits < 16:
            dtypes[name] = f"int{bits}"
        elif torch.equal(tensor.to(torch.float16).to(tensor.dtype), tensor):
            dtypes[name] = "fp16"
        else:
            dtypes[name] = "bf16"
    return dtypes


def _int_codes(model: nn.Module, name: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and scales exactly as the model's ``FakeQuantize`` computes them."""
    module_name, _, tensor_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if params.get_quant(module, tensor_name) is not None:
        source = params.masked_tensor(module, tensor_name)
    else:  # already finalized: re-derive the codes from the dequantized values
        source = getattr(module, tensor_name).detach()
    return params.quantize_int(source, bits)


class _Pools:
    """Streams of at least ``NAMED_MIN_BYTES`` become their own safetensors entry (``name``,
    ``name:index``, ``name:scales``); smaller ones are concatenated into one ``__pool__.<dtype>``
    entry per dtype, so the per-entry header (~90 bytes) stays below 1% of the file."""

    NAMED_MIN_BYTES = 16384

    def __init__(self) -> None:
        self.named: dict[str, torch.Tensor] = {}
        self.pooled: dict[str, list[torch.Tensor]] = {}
        self.sizes: dict[str, int] = {}

    def put(self, key: str, value: torch.Tensor) -> dict[str, Any]:
        if value.numel() * value.element_size() >= self.NAMED_MIN_BYTES:
            self.named[key] = value.contiguous()
            return {"key": key}
        dtype = str(value.dtype).replace("torch.", "")
        pool = f"__pool__.{dtype}"
        offset = self.sizes.get(pool, 0)
        self.pooled.setdefault(pool, []).append(value.reshape(-1))
        self.sizes[pool] = offset + value.numel()
        return {"pool": pool, "offset": offset, "count": int(value.numel()), "shape": list(value.shape)}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.named)
        for pool, parts in self.pooled.items():
            out[pool] = torch.cat(parts).contiguous()
        return out


@dataclass
class _Shrunk:
    """The model to store (shrunk or a plain copy) and what surgery did."""

    base: nn.Module
    report: ShrinkReport | None
    info: dict[str, Any]


def _shrink(model: nn.Module, strategy: Any, example_input: torch.Tensor | None, surgery: bool | str,
            round_to: int | None) -> _Shrunk:
    """Step 1: physically remove pruned channels when the strategy is structured (or asked to)."""
    structured = _strategy_names(strategy)
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


def _encode(model: nn.Module, shrunk: _Shrunk, quant: dict[str, str], name: str, tensor: torch.Tensor) -> Encoded:
    """Step 2 for one tensor: integer codes + scales, a 16-bit float, or the tensor's own dtype."""
    dtype = quant.get(name)
    if dtype is not None and dtype.startswith("int"):
        bits = int(dtype[3:])
        codes, scales = _int_codes(model, name, bits)
        if shrunk.report is not None:
            codes = shrunk.report.select(name, codes)
            scales = scales[shrunk.report.kept_rows(name, scales.numel())]
        effective = params.dequantize_int(codes, scales).to(tensor.dtype)
        encoded = encode_tensor(effective, codes=codes, scales=scales, value_dtype=f"qint{bits}")
    elif dtype in ("fp16", "bf16"):
        low = torch.float16 if dtype == "fp16" else torch.bfloat16
        effective = tensor.detach().to(low).to(tensor.dtype)
        encoded = encode_tensor(effective, value_dtype="float16" if dtype == "fp16" else "bfloat16")
    else:
        encoded = encode_tensor(tensor.detach())
    encoded.meta["quantized"] = dtype
    return encoded


def _int_bits(quantized: dict[str, str | None]) -> list[int]:
    """The integer widths among ``{tensor: dtype}`` (``int8`` -> 8), for QDQ in ONNX."""
    return sorted({int(d[3:]) for d in quantized.values() if isinstance(d, str) and d.startswith("int")})


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
) -> dict[str, Any]:
    """Write a packed checkpoint of the compressed ``model`` into ``path_dir``; returns the manifest.

    ``model`` is the in-memory compressed model (with condensa's masks/quantizers, or finalized
    with ``record`` giving the quantized bits). ``model_factory`` (a spec such as ``"resnet18"`` or
    ``"pkg.mod:fn"``, an importable callable, or ``{"name", "kwargs"}``) and ``model_kwargs`` let
    :func:`~condensa.export.load` rebuild the architecture. ``surgery``: ``"auto"`` shrinks the
    model when the strategy has FilterPrune/NeuronPrune (or, with no strategy, when a layer has
    all-zero rows) and stores it unshrunk if surgery is impossible (the reason is recorded);
    ``True`` requires it; ``False`` never shrinks. ``example_input`` drives surgery and the ONNX
    check (guessed from the first layer when ``None``).
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

        quant = _quant_plan(model, record)
        aliases = _aliases(shrunk.base)
        pools = _Pools()
        layout: dict[str, dict] = {}
        payload = theory_bits = 0
        for name, tensor in shrunk.base.state_dict().items():
            if name in aliases:
                continue
            encoded = _encode(model, shrunk, quant, name, tensor)
            encoded.meta["streams"] = {suffix: pools.put(name + suffix, value) for suffix, value in encoded.entries.items()}
            layout[name] = encoded.meta
            payload += encoded.payload_bytes
            theory_bits += encoded.theory_bits

        layout_sha = layout_hash(layout, aliases, shrunk.info.get("widths", {}))
        data = safetensors_bytes(pools.tensors(), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                                            "layout_sha256": layout_sha})
        files.atomic_write_bytes(path_dir / WEIGHTS, data)
        written: dict[str, Any] = {WEIGHTS: {"bytes": len(data), "sha256": sha256(data)}}
        if onnx:
            written[ONNX] = _onnx_entry(shrunk.base, example_input, path_dir, _int_bits(quant))
        if ONNX not in written or "error" in written[ONNX]:
            (path_dir / ONNX).unlink(missing_ok=True)  # never leave a stale ONNX file next to a new checkpoint

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
            "size": {"file_bytes": len(data), "payload_bytes": payload, "theoretical_bytes": theory_bits / 8,
                     "fp32_bytes": reference_bytes},
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
    ``model.onnx`` of ``model`` (the checkpoint as :func:`~condensa.export.load` rebuilt it);
    returns the new manifest, written last."""
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
    out = {**manifest, "files": written, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "versions": versions()}
    files.atomic_write_json(path_dir / MANIFEST, out)
    return out


__all__ = ["save", "republish"]
