"""Packed export: save -> load gives the same model, files are as small as the footprint metric
says, ONNX matches, and tampered, truncated or pickled files are refused."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from condensa import BlockPrune, Compose, FilterPrune, NeuronPrune, NMPrune, Prune, Quantize
from condensa.errors import CheckpointError, UntrustedCodeError
from condensa.export import load, save, verify
from condensa.metrics.footprint import footprint
from condensa.models.registry import build_model
from condensa.operators import params
from condensa.packing import layout as packing

X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def digits() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("digits_cnn")
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial norms so that outputs depend on every tensor
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    return model.eval()


STRATEGIES = {
    "prune": Prune(0.1),
    "filter": FilterPrune(0.5),
    "neuron": NeuronPrune(0.5),
    "block": BlockPrune(0.25),
    "nm": NMPrune(2, 4, exclude=("@first",)),
    "nm14": NMPrune(1, 4, exclude=("@first",)),
    "int8": Quantize("int8"),
    "int4": Quantize("int4"),
    "int3": Quantize("int3"),
    "fp16": Quantize("fp16"),
    "bf16": Quantize("bf16"),
    "prune+int8": Compose([Prune(0.05), Quantize("int8")]),
    "filter+int4": Compose([FilterPrune(0.5), Quantize("int4")]),
}
EXACT = {"prune", "block", "nm", "nm14", "int8", "int4", "int3", "fp16", "bf16", "prune+int8"}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_save_load_roundtrip(tmp_path, name):
    strategy = STRATEGIES[name]
    model, record = strategy.apply(digits())
    manifest = save(model, tmp_path, strategy=strategy, record=record, knobs={"density": 0.1},
                    metrics={"accuracy": 97.5}, model_factory="digits_cnn", example_input=X[:1], onnx=False)
    loaded, man = load(tmp_path)
    assert man["content_hash"] == manifest["content_hash"]
    assert man["strategy"] == strategy.to_dict() and man["knobs"] == {"density": 0.1}
    assert man["record"] == record.to_dict() and man["metrics"] == {"accuracy": 97.5}
    with torch.no_grad():
        expected, got = model(X), loaded(X)
    if name in EXACT:
        assert torch.equal(expected, got), float((expected - got).abs().max())
    else:  # structured surgery: a smaller model, equal up to float summation order
        assert manifest["surgery"]["applied"]
        assert torch.allclose(expected, got, rtol=1e-5, atol=1e-6)
        assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    # the stored tensors are exactly what the model uses
    if not manifest["surgery"]["applied"]:
        for key, tensor in loaded.state_dict().items():
            module_name, _, tensor_name = key.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            quant = params.get_quant(module, tensor_name)
            if quant is not None and quant.dtype.startswith("int"):
                assert torch.equal(tensor, quant.quantized(params.masked_tensor(module, tensor_name)))
            elif quant is not None:
                assert torch.equal(tensor, params.masked_tensor(module, tensor_name).to(
                    torch.float16 if quant.dtype == "fp16" else torch.bfloat16).float())
            else:
                assert torch.equal(tensor, getattr(module, tensor_name))


def header_bytes(path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


@pytest.mark.parametrize("name", ["prune", "prune+int8", "nm14", "int8", "int4", "fp16", "block", "filter", "filter+int4"])
def test_file_bytes_are_the_footprint(tmp_path, name):
    """The footprint metric is the exact size of the weights file (computed without writing);
    after structured surgery the file is smaller still (the next layer's inputs go too)."""
    strategy = STRATEGIES[name]
    model, record = strategy.apply(digits())
    manifest = save(model, tmp_path, strategy=strategy, record=record, model_factory="digits_cnn", onnx=False)
    theory = footprint(model).bytes
    file_bytes = os.path.getsize(tmp_path / "model.safetensors")
    assert manifest["size"]["file_bytes"] == file_bytes
    if manifest["surgery"]["applied"]:
        assert file_bytes < theory
    else:
        assert file_bytes == theory
    assert header_bytes(tmp_path / "model.safetensors") <= 80  # one entry, no metadata
    if name in ("int8", "int4", "fp16"):  # dense: ~value bits per weight, whatever the coder adds or saves
        bits = {"int8": 8, "int4": 4, "fp16": 16}[name]
        weights = sum(p.numel() for n, p in digits().named_parameters() if n.endswith("weight") and p.dim() > 1)
        assert file_bytes <= 1.02 * (weights * bits / 8) + 0.1 * 4 * sum(p.numel() for p in digits().parameters())


def test_dense_and_sparse_ratios_on_a_wide_model(tmp_path):
    model = build_model("digits_cnn", width=64).eval()
    for name, strategy in (("dense", Quantize("int8")), ("sparse", Prune(0.1))):
        compressed, record = strategy.apply(model)
        manifest = save(compressed, tmp_path / name, strategy=strategy, model_factory="digits_cnn",
                        model_kwargs={"width": 64}, onnx=False)
        assert manifest["size"]["file_bytes"] == footprint(compressed).bytes
        loaded, _ = load(tmp_path / name)
        assert torch.equal(loaded(X), compressed(X))


def test_finalized_model_with_record_bits(tmp_path):
    model, record = Compose([Prune(0.2), Quantize("int4")]).apply(digits())
    baked = params.finalize(model)
    manifest = save(baked, tmp_path, record=record, model_factory="digits_cnn", onnx=False)
    assert {m["kind"] for m in manifest["tensors"].values()} >= {"int4"}
    loaded, _ = load(tmp_path)
    assert torch.allclose(loaded(X), baked(X), atol=1e-6)


def test_onnx_matches_torch(tmp_path):
    import onnxruntime as ort

    strategy = Compose([FilterPrune(0.5), Quantize("int8")])
    model, record = strategy.apply(digits())
    manifest = save(model, tmp_path, strategy=strategy, record=record, model_factory="digits_cnn", example_input=X[:1])
    info = manifest["files"]["model.onnx"]
    assert info["max_abs_diff"] < 1e-5 and "sha256" in info
    loaded, _ = load(tmp_path)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: X.numpy()})  # dynamic batch of 6
    assert np.allclose(out, loaded(X).detach().numpy(), atol=1e-5)
    # the ONNX graph is the shrunk model: its first conv has half the filters
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    shapes = sorted(tuple(init.dims) for init in graph.initializer if len(init.dims) == 4)
    assert (16, 1, 3, 3) in shapes


def test_resnet18_filter_prune_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18").eval()
    x = torch.randn(2, 3, 32, 32)
    strategy = FilterPrune(0.5, exclude=())
    compressed, record = strategy.apply(model)
    manifest = save(compressed, tmp_path, strategy=strategy, model_factory="resnet18", example_input=x[:1], onnx=False)
    assert manifest["surgery"]["applied"] and manifest["surgery"]["widths"]["layer1.0.conv1"]["out_channels"] == 32
    assert manifest["size"]["file_bytes"] < 0.3 * manifest["size"]["fp32_bytes"]
    loaded, _ = load(tmp_path)
    assert loaded.layer4[1].conv2.out_channels == 256
    with torch.no_grad():
        assert torch.allclose(loaded(x), compressed(x), rtol=1e-4, atol=1e-5)


def test_callable_factory_and_missing_factory(tmp_path):
    model, record = Prune(0.3).apply(digits())
    save(model, tmp_path, record=record, onnx=False)
    with pytest.raises(CheckpointError, match="model_factory"):
        load(tmp_path)
    from condensa.models.digits import DigitsCNN

    loaded, _ = load(tmp_path, model_factory=DigitsCNN)
    assert torch.equal(loaded(X), model(X))
    save(model, tmp_path / "b", record=record, model_factory=DigitsCNN, onnx=False)
    with pytest.raises(UntrustedCodeError, match="condensa.models.digits"):
        load(tmp_path / "b")  # a manifest naming code to import needs the caller's trust
    assert load(tmp_path / "b", trust_code=True)[1]["model"]["factory"] == "condensa.models.digits:DigitsCNN"
    with pytest.raises(CheckpointError, match="does not fit"):
        load(tmp_path, model_factory="digits_mlp")


@pytest.fixture()
def saved(tmp_path):
    model, record = Compose([Prune(0.2), Quantize("int8")]).apply(digits())
    save(model, tmp_path, record=record, model_factory="digits_cnn", example_input=X[:1])
    return tmp_path


def test_tampered_byte_is_detected(saved):
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load(saved)


def test_tampered_onnx_is_detected(saved):
    path = saved / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        verify(saved)


def test_truncated_file_is_detected(saved):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load(saved)


def test_edited_manifest_layout_is_detected(saved):
    path = saved / "manifest.json"
    manifest = json.loads(path.read_text())
    name = next(n for n, m in manifest["tensors"].items() if m.get("index") in ("relative", "relative-ec"))
    manifest["tensors"][name]["b"] += 1
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="layout hash mismatch"):
        load(saved)


def test_pickle_files_are_refused(tmp_path):
    model = digits()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load(tmp_path)  # a folder with only a .pt file
    legacy = tmp_path / "weights.dat"
    legacy.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=2))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load(legacy)


def test_pickle_in_place_of_safetensors_is_refused(saved):
    torch.save({"x": torch.zeros(3)}, saved / "model.safetensors")  # zip archive ("PK") with a pickle inside
    with pytest.raises(CheckpointError, match="never unpickles"):
        load(saved)


def test_writes_are_atomic_and_leave_no_temp_files(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["manifest.json", "model.onnx", "model.safetensors"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert {"torch", "safetensors", "onnx", "onnxruntime"} <= set(manifest["versions"])


def test_packed_encodings_roundtrip():
    """Every layout the encoder may pick decodes bit-exactly, and the planned size is the written size."""
    w = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    cases = [w, w * (torch.rand_like(w) < 0.03), w * (torch.rand_like(w) < 0.5), w * (torch.rand(32) < 0.5)[:, None, None, None],
             torch.zeros(7), torch.tensor(2.5), torch.arange(5)]
    options = [packing.Options(), packing.Options(("dense",), False, False), packing.Options(("bitmask",), False),
               packing.Options(("relative",), False, False), packing.Options(("relative-ec",))]
    for option in options:
        specs = [packing.Spec(f"t{i}", t, packing.NATIVE, value_dtype=t.dtype) for i, t in enumerate(cases)]
        for bits in (2, 3, 4, 5, 8):
            q, scale = params.quantize_int(cases[1], bits)
            qmax = 2 ** (bits - 1) - 1
            specs.append(packing.Spec(f"q{bits}", params.dequantize_int(q, scale), packing.INT, bits,
                                      (q.to(torch.int64) + qmax).numpy(), 2 * qmax + 1, qmax, scales=scale))
        data, size = packing.encode(specs, bytes(8), option)
        assert len(data) == size.file_bytes == packing.packed_size(specs, option).file_bytes
        from safetensors.torch import load as st_load

        payload = st_load(data)[packing.ENTRY].numpy().tobytes()
        state = packing.decode(payload, {s.name: (tuple(s.effective.shape), s.effective.dtype) for s in specs}, bytes(8))
        for spec in specs:
            assert torch.equal(state[spec.name], spec.effective), spec.name


class OddPool(nn.Module):
    """Adaptive pooling to a size that does not divide the input: the TorchScript exporter refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def test_onnx_falls_back_to_the_dynamo_exporter(tmp_path, capfd):
    import onnxruntime as ort

    model, record = Prune(0.5).apply(OddPool().eval())
    manifest = save(model, tmp_path, record=record, example_input=X[:1])
    info = manifest["files"]["model.onnx"]
    assert info["exporter"] == "dynamo" and info["max_abs_diff"] < 1e-5
    assert "Torch IR graph" not in capfd.readouterr().out  # the failed first attempt stays quiet
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": X.numpy()})
    assert np.allclose(out, model(X).detach().numpy(), atol=1e-5)
