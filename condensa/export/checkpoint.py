"""Packed, verifiable checkpoints: ``model.safetensors`` + ``manifest.json`` (+ ``model.onnx``).

``save`` writes every tensor in the encoding :func:`condensa.metrics.tensor_cost` picks (see
:mod:`condensa.export.packing`), so the file is as small as the footprint metric says; after
FilterPrune/NeuronPrune the model is first shrunk physically (:mod:`condensa.export.surgery`) and
the smaller tensors are stored. ``manifest.json`` records how to rebuild the model (factory spec
and kwargs, surgery widths), every tensor's encoding and shape, the strategy, knobs, record and
metrics, library versions, and SHA-256 hashes of the files. All writes are atomic; the manifest
is written last, so a folder with a manifest is complete.

``load`` reads only safetensors and JSON: nothing is ever unpickled, since unpickling a file can
run arbitrary code. A changed byte fails the hash check, a truncated file is reported as such,
and a pickle checkpoint (``.pt``/``.pth``/``.pkl``/``.bin``/``.ckpt``, or a file starting with
pickle or zip magic bytes) is refused with instructions to convert it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import io
import json
import os
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io as _atomic
from ..errors import CheckpointError, ModelError
from ..metrics.footprint import model_tensors
from ..operators import params
from ..operators.coupling import infer_example_input, plain_copy
from .packing import decode_tensor, encode_tensor
from .surgery import ShrinkReport, apply_widths, shrink_with_report

FORMAT = "condensa-packed"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
ONNX = "model.onnx"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar")
_SUFFIXES = ("", ":index", ":scales")

HOW_TO_CONVERT = (
    "condensa never unpickles files, because loading a pickle can execute arbitrary code. Convert it "
    "once, in an environment you trust: `sd = torch.load(path, map_location='cpu', weights_only=True)` then "
    "`safetensors.torch.save_file(sd, 'model.safetensors')` (use it as model.checkpoint), or load it into "
    "the model and write a packed export with `condensa.export.save(model, out_dir, model_factory=...)`"
)


# -- small helpers ----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode("utf-8")


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def versions() -> dict[str, str]:
    """Versions of the libraries that wrote (or must read) the checkpoint."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("condensa", "torch", "torchvision", "torch-pruning", "safetensors", "numpy", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return out


def _factory_spec(model_factory: Any, model_kwargs: dict | None) -> tuple[str | None, dict]:
    kwargs = dict(model_kwargs or {})
    if model_factory is None:
        return None, kwargs
    if isinstance(model_factory, dict):
        spec = model_factory.get("name") or model_factory.get("factory")
        kwargs = {**dict(model_factory.get("kwargs") or {}), **kwargs}
        return (str(spec) if spec else None), kwargs
    if isinstance(model_factory, str):
        return model_factory, kwargs
    if callable(model_factory):
        module = getattr(model_factory, "__module__", None)
        qualname = getattr(model_factory, "__qualname__", "")
        if module and qualname and "<" not in qualname and module != "__main__":
            return f"{module}:{qualname}", kwargs
        return None, kwargs
    raise ModelError(f"model_factory must be a spec string, a callable or {{name, kwargs}}, got {model_factory!r}")


def _strategy_names(strategy: Any) -> set[str]:
    if strategy is None:
        return set()
    text = json.dumps(_jsonable(strategy.to_dict() if hasattr(strategy, "to_dict") else strategy))
    return {name for name in ("FilterPrune", "NeuronPrune") if name in text}


def _record_bits(record: Any) -> dict[str, int]:
    if record is None:
        return {}
    if hasattr(record, "bits"):
        return dict(record.bits)
    if isinstance(record, dict):
        out = {}
        for name, entry in record.items():
            if isinstance(entry, dict) and isinstance(entry.get("bits"), int):
                out[name] = entry["bits"]
        return out
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


def _streams(name: str, meta: dict, stored: dict[str, torch.Tensor], used: set[str]) -> dict[str, torch.Tensor]:
    streams = meta.get("streams")
    if not isinstance(streams, dict):
        raise CheckpointError(f"manifest entry of '{name}' has no streams")
    out = {}
    for suffix, where in streams.items():
        if suffix not in _SUFFIXES or not isinstance(where, dict):
            raise CheckpointError(f"manifest entry of '{name}' has a bad stream {suffix!r}")
        if "key" in where:
            if where["key"] not in stored:
                raise CheckpointError(f"{WEIGHTS} has no entry '{where['key']}'")
            out[suffix] = stored[where["key"]]
            used.add(where["key"])
            continue
        pool = stored.get(where.get("pool"))
        offset, count = int(where.get("offset", -1)), int(where.get("count", -1))
        if pool is None or offset < 0 or count < 0 or offset + count > pool.numel():
            raise CheckpointError(f"stream {name}{suffix} lies outside its pool {where.get('pool')!r}")
        used.add(where["pool"])
        out[suffix] = pool[offset : offset + count].reshape([int(s) for s in where.get("shape", [count])])
    return out


# -- ONNX -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1 (C++ writes included) for the duration of the block."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no real fd 1 (e.g. some notebooks): do nothing
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, output_names: list[str] | None = None) -> tuple[bytes, str]:
    """Serialized ONNX of ``model`` with a dynamic batch dimension: ``(bytes, exporter)``.

    Tries the TorchScript exporter first (fast, self-contained), then the dynamo exporter (which
    handles e.g. adaptive pooling to a non-divisor size); raises ``ModelError`` if both fail.
    """
    model = model.eval()
    x = example_input.detach()
    output_names = output_names or ["output"]
    errors = []
    for kind in ("torchscript", "dynamo"):
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if kind == "torchscript":
                    buffer = io.BytesIO()
                    with _quiet_stdout():  # on failure the exporter dumps the whole IR graph to fd 1
                        torch.onnx.export(
                            model, (x,), buffer, dynamo=False, input_names=["input"], output_names=output_names,
                            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in output_names}}, opset_version=17,
                        )
                    return buffer.getvalue(), kind
                program = torch.onnx.export(
                    model, (x,), dynamo=True, input_names=["input"], output_names=output_names, verbose=False,
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},),
                )
                return program.model_proto.SerializeToString(), kind
        except Exception as error:  # noqa: BLE001 - try the other exporter, report both on failure
            message = str(error).strip().splitlines()
            errors.append(f"{kind}: {type(error).__name__}: {message[0] if message else ''}")
    raise ModelError("ONNX export failed: " + "; ".join(errors))


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path) -> dict[str, Any]:
    """Export ``model`` to ONNX (batch dimension dynamic), check it against torch with onnxruntime
    on ``example_input``, and write it atomically.

    Returns ``{"exporter", "opset", "max_abs_diff", "bytes", "sha256", ...}``.
    """
    import onnx
    import onnxruntime as ort

    model = model.eval()
    x = example_input.detach()
    with torch.no_grad():
        reference = model(x)
    outputs = reference if isinstance(reference, (list, tuple)) else (reference,)
    names = [f"output{i}" for i in range(len(outputs))] if len(outputs) > 1 else ["output"]
    data, exporter = onnx_bytes(model, x, names)
    opset = next((o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx")), None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})
    diff = max(float((torch.from_numpy(g) - o.detach().cpu()).abs().max()) for g, o in zip(got, outputs, strict=True))
    _atomic.atomic_write_bytes(path, data)
    return {"exporter": exporter, "opset": opset, "max_abs_diff": diff, "bytes": len(data), "sha256": _sha256(data),
            "input_shape": list(x.shape), "checked_with": f"onnxruntime {ort.__version__}"}


# -- save -------------------------------------------------------------------------------------


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
    :func:`load` rebuild the architecture. ``surgery``: ``"auto"`` shrinks the model when the
    strategy has FilterPrune/NeuronPrune (or, with no strategy, when a layer has all-zero rows) and
    stores it unshrunk if surgery is impossible (the reason is recorded); ``True`` requires it;
    ``False`` never shrinks. ``example_input`` drives surgery and the ONNX check (guessed from the
    first layer when ``None``).
    """
    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    spec, kwargs = _factory_spec(model_factory, model_kwargs)
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).cpu()  # never move the caller's model
    was_training = model.training
    model.eval()
    try:
        if example_input is None:
            example_input = infer_example_input(model)
        elif isinstance(example_input, torch.Tensor):
            example_input = example_input.detach().cpu()

        # 1. structured surgery
        structured = _strategy_names(strategy)
        want = surgery is True or (surgery == "auto" and (bool(structured) or (strategy is None and _has_zero_rows(plain_copy(model)))))
        report: ShrinkReport | None = None
        surgery_note = None
        if want:
            if example_input is None:
                if surgery is True:
                    raise ModelError("surgery needs an example_input (it could not be guessed)")
                surgery_note = "no example input to trace the model"
            else:
                try:
                    base, report = shrink_with_report(model, example_input, round_to=round_to)
                except ModelError as error:
                    if surgery is True:
                        raise
                    surgery_note = str(error)
                    report = None
        if report is None or not report.applied:
            base = plain_copy(model).eval()
            if report is not None and not report.applied:
                surgery_note = surgery_note or "no removable channels"
                report = None

        # 2. encode tensors
        quant = _quant_plan(model, record)
        aliases = _aliases(base)
        state = base.state_dict()
        pools = _Pools()
        layout: dict[str, dict] = {}
        payload = 0
        theory_bits = 0
        for name, tensor in state.items():
            if name in aliases:
                continue
            dtype = quant.get(name)
            if dtype is not None and dtype.startswith("int"):
                bits = int(dtype[3:])
                codes, scales = _int_codes(model, name, bits)
                if report is not None:
                    codes = report.select(name, codes)
                    scales = scales[report.kept_rows(name, scales.numel())]
                effective = params.dequantize_int(codes, scales).to(tensor.dtype)
                encoded = encode_tensor(effective, codes=codes, scales=scales, value_dtype=f"qint{bits}")
            elif dtype in ("fp16", "bf16"):
                low = torch.float16 if dtype == "fp16" else torch.bfloat16
                effective = tensor.detach().to(low).to(tensor.dtype)
                encoded = encode_tensor(effective, value_dtype="float16" if dtype == "fp16" else "bfloat16")
            else:
                encoded = encode_tensor(tensor.detach())
            encoded.meta["quantized"] = dtype
            streams = {}
            for suffix, value in encoded.entries.items():
                streams[suffix] = pools.put(name + suffix, value)
            encoded.meta["streams"] = streams
            layout[name] = encoded.meta
            payload += encoded.payload_bytes
            theory_bits += encoded.theory_bits
        tensors = pools.tensors()

        surgery_info: dict[str, Any] = {"applied": report is not None}
        if report is not None:
            surgery_info.update({
                "round_to": round_to, "widths": report.widths, "removed": report.removed,
                "skipped": [list(s) for s in report.skipped], "channels_before": report.channels_before,
                "channels_after": report.channels_after, "max_abs_diff": report.max_abs_diff,
            })
        elif surgery_note:
            surgery_info["reason"] = surgery_note
        layout_hash = _sha256(_canonical({"tensors": layout, "aliases": aliases, "widths": surgery_info.get("widths", {})}))

        from safetensors.torch import save as st_save

        data = st_save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION), "layout_sha256": layout_hash})
        _atomic.atomic_write_bytes(path_dir / WEIGHTS, data)
        files: dict[str, Any] = {WEIGHTS: {"bytes": len(data), "sha256": _sha256(data)}}

        # 3. ONNX
        if onnx:
            if isinstance(example_input, torch.Tensor):
                try:
                    files[ONNX] = export_onnx(base, example_input, path_dir / ONNX)
                except Exception as error:  # noqa: BLE001 - the packed file is still valid without ONNX
                    files[ONNX] = {"error": f"{type(error).__name__}: {error}"}
            else:
                files[ONNX] = {"error": "no tensor example_input to export with"}
        if ONNX not in files or "error" in files[ONNX]:
            (path_dir / ONNX).unlink(missing_ok=True)  # never leave a stale ONNX file next to a new checkpoint

        # 4. manifest (last: its presence marks a complete checkpoint)
        reference_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                              for t in model_tensors(model).values())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"factory": spec, "kwargs": _jsonable(kwargs), "class": f"{type(model).__module__}.{type(model).__qualname__}"},
            "strategy": _jsonable(strategy.to_dict() if hasattr(strategy, "to_dict") else strategy),
            "knobs": _jsonable(knobs),
            "metrics": _jsonable(metrics),
            "record": _jsonable(record.to_dict() if hasattr(record, "to_dict") else record),
            "surgery": _jsonable(surgery_info),
            "example_input": ({"shape": list(example_input.shape), "dtype": str(example_input.dtype).replace("torch.", "")}
                              if isinstance(example_input, torch.Tensor) else None),
            "size": {
                "file_bytes": len(data),
                "payload_bytes": payload,
                "theoretical_bytes": theory_bits / 8,
                "fp32_bytes": reference_bytes,
            },
            "content_hash": files[WEIGHTS]["sha256"],
            "files": files,
            "layout_sha256": layout_hash,
            "aliases": aliases,
            "tensors": layout,
            "versions": versions(),
        }
        _atomic.atomic_write_json(path_dir / MANIFEST, manifest)
        return manifest
    finally:
        model.train(was_training)


# -- load -------------------------------------------------------------------------------------

_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


def _looks_pickled(head: bytes) -> bool:
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(f"{path} is a pickle-based checkpoint (torch.save/pickle). {HOW_TO_CONVERT}")


def refuse_if_pickle(path: Path) -> None:
    """Raise :class:`CheckpointError` if ``path`` is a pickle file (by suffix or magic bytes)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError:
        head = b""
    if path.suffix in PICKLE_SUFFIXES or _looks_pickled(head):
        _refuse_pickle(path)


def _read_manifest(path_dir: Path) -> dict[str, Any]:
    manifest_path = path_dir / MANIFEST
    if not manifest_path.is_file():
        pickles = sorted(p.name for p in path_dir.iterdir() if p.suffix in PICKLE_SUFFIXES) if path_dir.is_dir() else []
        if pickles:
            raise CheckpointError(f"{path_dir} holds {', '.join(pickles)} but no {MANIFEST}. {HOW_TO_CONVERT}")
        raise CheckpointError(f"{path_dir}: no {MANIFEST}; not a checkpoint written by condensa.export.save")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: unreadable or not JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{manifest_path}: format version {manifest.get('format_version')!r}, this condensa reads {FORMAT_VERSION}")
    for key in ("tensors", "files"):
        if not isinstance(manifest.get(key), dict):
            raise CheckpointError(f"{manifest_path}: missing or malformed '{key}'")
    return manifest


def _verify_file(path: Path, expected: dict | None) -> bytes:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    data = path.read_bytes()
    if _looks_pickled(data[:4]):
        _refuse_pickle(path)
    if not isinstance(expected, dict) or "sha256" not in expected or "bytes" not in expected:
        raise CheckpointError(f"manifest has no hash for {path.name}")
    if len(data) < int(expected["bytes"]):
        raise CheckpointError(f"{path} is truncated: {len(data)} of {expected['bytes']} bytes")
    if len(data) > int(expected["bytes"]):
        raise CheckpointError(f"{path} has {len(data) - int(expected['bytes'])} trailing bytes; hash mismatch expected")
    digest = _sha256(data)
    if digest != expected["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 hash mismatch (file {digest[:16]}..., manifest {str(expected['sha256'])[:16]}...); "
                              "the file was modified or corrupted")
    return data


def read_tensors(path_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and decode the tensors of a checkpoint: ``(state dict of effective tensors, manifest)``."""
    path_dir = Path(path_dir)
    if path_dir.is_file():
        refuse_if_pickle(path_dir)
        if path_dir.suffix == ".safetensors" or path_dir.name == MANIFEST:
            path_dir = path_dir.parent
        else:
            raise CheckpointError(f"{path_dir}: pass the folder written by condensa.export.save")
    if not path_dir.exists():
        raise CheckpointError(f"{path_dir} does not exist")
    manifest = _read_manifest(path_dir)
    data = _verify_file(path_dir / WEIGHTS, manifest["files"].get(WEIGHTS))
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        stored = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except (SafetensorError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path_dir / WEIGHTS}: not a valid safetensors file ({error})") from None
    metadata = header.get("__metadata__") or {}
    aliases = manifest.get("aliases") or {}
    surgery = manifest.get("surgery") or {}
    layout_hash = _sha256(_canonical({"tensors": manifest["tensors"], "aliases": aliases, "widths": surgery.get("widths", {})}))
    if metadata.get("layout_sha256") != layout_hash:
        raise CheckpointError(f"{path_dir / MANIFEST}: tensor layout hash mismatch with {WEIGHTS}; the manifest was edited")
    state: dict[str, torch.Tensor] = {}
    expected_keys: set[str] = set()
    for name, meta in manifest["tensors"].items():
        entries = _streams(name, meta, stored, expected_keys)
        try:
            state[name] = decode_tensor(meta, entries)
        except CheckpointError as error:
            raise CheckpointError(f"{WEIGHTS}: tensor '{name}': {error}") from None
        except Exception as error:  # noqa: BLE001 - any decode failure is a corrupt file
            raise CheckpointError(f"{WEIGHTS}: tensor '{name}' cannot be decoded ({type(error).__name__}: {error})") from None
    extra = set(stored) - expected_keys
    if extra:
        raise CheckpointError(f"{WEIGHTS} has entries the manifest does not describe: {sorted(extra)[:5]}")
    for alias, canonical in aliases.items():
        if canonical not in state:
            raise CheckpointError(f"alias '{alias}' refers to missing tensor '{canonical}'")
        state[alias] = state[canonical]
    return state, manifest


def _build(manifest: dict, model_factory: Any) -> nn.Module:
    from ..models.registry import build_model

    info = manifest.get("model") or {}
    kwargs = dict(info.get("kwargs") or {})
    if model_factory is None:
        model_factory = info.get("factory")
        if not model_factory:
            raise CheckpointError(
                f"the manifest names no model factory (model class {info.get('class')}); pass model_factory= to load"
            )
    elif isinstance(model_factory, dict):
        kwargs = {**kwargs, **dict(model_factory.get("kwargs") or {})}
        model_factory = model_factory.get("name")
    return build_model(model_factory, **kwargs)


def load(path_dir: str | Path, model_factory: str | Callable[..., nn.Module] | dict | None = None,
         device: str | torch.device = "cpu", *, verify_onnx: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the compressed model of a checkpoint; returns ``(model in eval mode, manifest)``.

    The architecture comes from ``model_factory`` or the manifest's factory spec; surgery widths
    are re-applied, then the unpacked tensors are loaded (strictly: every tensor must fit). Outputs
    equal the model that was saved: bit-exact for pruned/fp32 and fp16/bf16 weights, and for
    integer codes dequantized exactly as ``FakeQuantize`` does.
    """
    state, manifest = read_tensors(path_dir)
    path_dir = Path(path_dir)
    if path_dir.is_file():
        path_dir = path_dir.parent
    onnx_info = manifest["files"].get(ONNX)
    if verify_onnx and isinstance(onnx_info, dict) and "sha256" in onnx_info and (path_dir / ONNX).exists():
        _verify_file(path_dir / ONNX, onnx_info)
    model = _build(manifest, model_factory)
    surgery = manifest.get("surgery") or {}
    if surgery.get("applied"):
        apply_widths(model, surgery.get("widths") or {}, {k: tuple(v.shape) for k, v in state.items()})
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit the rebuilt {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            " (wrong model factory or kwargs?)"
        )
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint tensor shapes do not fit the rebuilt model: {wrong[:5]}")
    model.load_state_dict({k: v.to(expected[k].dtype) if v.dtype != expected[k].dtype and v.is_floating_point() else v
                           for k, v in state.items()}, strict=True)
    return model.to(device).eval(), manifest


def verify(path_dir: str | Path) -> dict[str, Any]:
    """Check hashes and decode every tensor without building the model; returns the manifest."""
    _, manifest = read_tensors(path_dir)
    onnx_info = manifest["files"].get(ONNX)
    if isinstance(onnx_info, dict) and "sha256" in onnx_info:
        _verify_file(Path(path_dir) / ONNX, onnx_info)
    return manifest


__all__ = ["save", "load", "verify", "read_tensors", "export_onnx", "onnx_bytes", "versions", "HOW_TO_CONVERT"]
