"""ONNX export of a (shrunk, baked) model, checked against torch with onnxruntime.

Integer-quantized weights are stored as int8 initializers followed by ``DequantizeLinear`` (QDQ,
per-output-channel fp32 scales), so an int8 model's ONNX file is about a quarter of the fp32 one
and runtimes can use integer kernels. Exporters fold BatchNorm into the preceding conv, which
rescales each output channel; a per-channel integer grid survives that, so weights are matched
to their grid by value (:func:`integer_grid`), not by name.

``onnx``, ``onnxruntime`` and ``onnxscript`` are the ``condensa[onnx]`` extra; they are imported
only when an ONNX file is written, so the rest of condensa works without them.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io as files
from ..errors import ModelError
from ..extras import require
from ..outputs import LogitsOnly
from .manifest import sha256

#: what the TorchScript and dynamo exporters raise on a model they cannot export
EXPORT_ERRORS = (RuntimeError, TypeError, ValueError, AttributeError, NotImplementedError, AssertionError,
                 IndexError, KeyError)


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
    require("onnx", "onnxscript")
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
        except EXPORT_ERRORS as error:  # try the other exporter, report both on failure
            message = str(error).strip().splitlines()
            errors.append(f"{kind}: {type(error).__name__}: {message[0] if message else ''}")
    raise ModelError("ONNX export failed: " + "; ".join(errors))


def integer_grid(weight: torch.Tensor, bits: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """``(int8 codes, fp32 scales, axis)`` when ``weight`` lies on a symmetric per-channel integer
    grid of one of ``bits`` (channels along axis 0, or 1 for transposed matmul weights), else None."""
    if weight.dim() < 2 or not weight.is_floating_point():
        return None
    for axis in (0, 1):
        rows = weight.movedim(axis, 0).reshape(weight.shape[axis], -1).float()
        for b in sorted(set(bits), reverse=True):
            qmax = 2 ** (b - 1) - 1
            scale = rows.abs().amax(dim=1) / qmax
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            codes = torch.clamp(torch.round(rows / scale[:, None]), -qmax, qmax)
            if torch.allclose(codes * scale[:, None], rows, rtol=1e-5, atol=1e-12):
                shape = list(weight.movedim(axis, 0).shape)
                return codes.to(torch.int8).reshape(shape).movedim(0, axis).contiguous(), scale, axis
    return None


def quantize_initializers(data: bytes, bits: Sequence[int]) -> tuple[bytes, list[str]]:
    """Rewrite every float weight initializer on an integer grid as int8 + ``DequantizeLinear``."""
    import onnx  # the [onnx] extra
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(data)
    graph = proto.graph
    replaced, nodes = [], []
    for initializer in list(graph.initializer):
        if initializer.data_type != onnx.TensorProto.FLOAT:
            continue
        grid = integer_grid(torch.from_numpy(numpy_helper.to_array(initializer).copy()), bits)
        if grid is None:
            continue
        codes, scale, axis = grid
        name = initializer.name
        graph.initializer.remove(initializer)
        graph.initializer.extend([numpy_helper.from_array(codes.numpy(), f"{name}__int8"),
                                  numpy_helper.from_array(scale.numpy().astype("float32"), f"{name}__scale")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}__int8", f"{name}__scale"], [name], axis=axis,
                                      name=f"{name}__dequantize"))
        replaced.append(name)
    for node in reversed(nodes):  # before every consumer
        graph.node.insert(0, node)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), replaced


def _tensors(output: Any) -> bool:
    """A tensor, or a tuple/list of tensors: what the exporters map to ONNX outputs as they are."""
    if isinstance(output, torch.Tensor):
        return True
    return isinstance(output, (list, tuple)) and bool(output) and all(isinstance(o, torch.Tensor) for o in output)


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path,
                int_bits: Sequence[int] = ()) -> dict[str, Any]:
    """Export ``model`` to ONNX (batch dimension dynamic), check it against torch with onnxruntime
    on ``example_input``, and write it atomically. A model whose output is not a tensor (a Hugging
    Face ``ModelOutput``) is exported through :class:`~condensa.outputs.LogitsOnly`: one logits output. ``int_bits``: the integer widths the model's
    quantized weights use; such weights are stored as int8 + ``DequantizeLinear``.

    Returns ``{"exporter", "opset", "max_abs_diff", "bytes", "sha256", "int8_initializers", ...}``.
    """
    require("onnx", "onnxruntime", "onnxscript")
    import onnx  # the [onnx] extra: imported only when an ONNX file is written
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    model = model.eval()
    x = example_input.detach()
    with torch.no_grad():
        reference = model(x)
        if not _tensors(reference):  # e.g. a Hugging Face ModelOutput: export the logits alone
            model = LogitsOnly(model).eval()
            reference = model(x)
    outputs = reference if isinstance(reference, (list, tuple)) else (reference,)
    names = [f"output{i}" for i in range(len(outputs))] if len(outputs) > 1 else ["output"]
    data, exporter = onnx_bytes(model, x, names)
    replaced: list[str] = []
    if int_bits:
        data, replaced = quantize_initializers(data, int_bits)
    opset = next((o.version for o in onnx.load_from_string(data).opset_import if o.domain in ("", "ai.onnx")), None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    ort_errors = (ort_state.Fail, ort_state.InvalidGraph, ort_state.InvalidArgument, ort_state.RuntimeException,
                  ort_state.NotImplemented)
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.cpu().numpy()})
    except ort_errors as error:
        first = (str(error).strip().splitlines() or [""])[0]
        raise ModelError(f"onnxruntime cannot run the exported model ({type(error).__name__}: {first})") from None
    diff = max(float((torch.from_numpy(g) - o.detach().cpu()).abs().max()) for g, o in zip(got, outputs, strict=True))
    files.atomic_write_bytes(path, data)
    return {"exporter": exporter, "opset": opset, "max_abs_diff": diff, "bytes": len(data), "sha256": sha256(data),
            "input_shape": list(x.shape), "checked_with": f"onnxruntime {ort.__version__}", "int8_initializers": len(replaced)}


__all__ = ["onnx_bytes", "export_onnx", "integer_grid", "quantize_initializers"]
