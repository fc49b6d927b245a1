"""Trust: a folder condensa reads names no code it will run, valid safetensors always load, and
the files on disk are as small as the metrics say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from condensa import cli
from condensa.errors import UntrustedCodeError
from condensa.export import load, save
from condensa.io import is_safetensors, looks_pickled
from condensa.models.reference import load_weights
from condensa.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]
COMPRESS = ["--set", "recovery.epochs=1", "--set", "strategy.args.density=0.05", "--quiet"]


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("condensa: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    run = root / "run"
    assert cli.main(["compress", str(REPO / "configs/digits-compress.yaml"), "--out", str(run), *COMPRESS]) == 0
    assert cli.main(["export", str(run), "--out", str(root / "export"), "--quiet"]) == 0
    return run, root / "export"


def test_run_folder_weights_are_packed_and_match_the_footprint(run_and_export):
    run, _ = run_and_export
    result = json.loads((run / "result.json").read_text())
    on_disk = (run / "model.safetensors").stat().st_size
    assert result["weights_file_bytes"] == on_disk
    assert on_disk <= 1.10 * result["footprint_bytes"], (on_disk, result["footprint_bytes"])
    assert result["compression_ratio"] > 20


def test_int8_onnx_is_qdq_and_a_quarter_of_fp32(run_and_export, tmp_path):
    import onnx

    _, export = run_and_export
    manifest = json.loads((export / "manifest.json").read_text())
    info = manifest["files"]["model.onnx"]
    assert info["int8_initializers"] >= 4 and info["max_abs_diff"] < 1e-4
    proto = onnx.load(str(export / "model.onnx"))
    assert sum(n.op_type == "DequantizeLinear" for n in proto.graph.node) == info["int8_initializers"]
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)
    # the same architecture exported dense in fp32, side by side
    dense = build_model("digits_cnn").eval()
    save(dense, tmp_path / "dense", model_factory="digits_cnn", example_input=torch.zeros(1, 1, 8, 8))
    assert (export / "model.onnx").stat().st_size <= 0.3 * (tmp_path / "dense" / "model.onnx").stat().st_size


def test_a_manifest_naming_code_is_refused_and_nothing_runs(run_and_export, tmp_path, capsys):
    _, export = run_and_export
    edited = tmp_path / "edited"
    shutil.copytree(export, edited)
    marker = tmp_path / "ran"
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["model"] = {"factory": "os:system", "kwargs": {"command": f"echo X > {marker}"}}
    (edited / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["eval", str(edited)]) == 2
    line = one_line_error(capsys)
    assert "would import module 'os'" in line and "--trust-code" in line
    assert not marker.exists()
    with pytest.raises(UntrustedCodeError, match="module 'os'"):
        load(edited)
    assert not marker.exists()


def test_a_run_config_naming_a_file_needs_trust(run_and_export, tmp_path, capsys):
    run, _ = run_and_export
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef build(**kwargs):\n    raise SystemExit\n")
    for name in ("config.json", "manifest.json"):
        data = json.loads((copy / name).read_text())
        if name == "config.json":
            data["model"]["name"] = f"{evil}:build"
        else:
            data["model"]["factory"] = f"{evil}:build"
        (copy / name).write_text(json.dumps(data))
    assert cli.main(["export", str(copy), "--out", str(tmp_path / "out"), "--no-onnx"]) == 2
    assert f"would import file '{evil}'" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_code_lets_a_users_own_factory_load(run_and_export, tmp_path):
    _, export = run_and_export
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["factory"] = "condensa.models.digits:DigitsCNN"  # importable code, as a user model would be
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UntrustedCodeError):
        load(copy)
    model, _ = load(copy, trust_code=True)
    reference, _ = load(export)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x), reference(x))


def safetensors_with_header(path: Path, header_bytes: int, tensors: dict[str, torch.Tensor]) -> bytes:
    """A valid safetensors file whose JSON header is exactly ``header_bytes`` long (padded with
    metadata), so its first bytes are ``header_bytes`` in little-endian."""
    pad = 0
    while True:
        save_file(tensors, str(path), metadata={"pad": "x" * pad})
        data = path.read_bytes()
        length = int.from_bytes(data[:8], "little")
        if length >= header_bytes:
            assert length == header_bytes, (length, header_bytes)  # safetensors pads the header to 8 bytes
            return data
        pad += header_bytes - length


@pytest.mark.parametrize("header", [640, 896, 1152, 1408])
def test_safetensors_whose_length_bytes_look_like_pickle_magic_load(tmp_path, header):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = tmp_path / "weights.bin"  # not even the right suffix: recognized by structure
    data = safetensors_with_header(path, header, {k: v.contiguous() for k, v in model.state_dict().items()})
    assert looks_pickled(data[:4]) and is_safetensors(data)  # the trap: 80 02 / 80 03 / 80 04 / 80 05
    loaded = load_weights(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)), path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_checkpoint_whose_weights_file_starts_like_a_pickle_loads(tmp_path, monkeypatch):
    model = build_model("digits_cnn").eval()
    folder = tmp_path / "ckpt"
    manifest = save(model, folder, model_factory="digits_cnn", onnx=False)
    length = int.from_bytes((folder / "model.safetensors").read_bytes()[:8], "little")
    target = 896 if length < 896 else 1152 if length < 1152 else 1408
    # rewrite the weights with a padded header (keep the manifest's layout hash), then fix the hashes
    from safetensors.torch import load as st_load

    from condensa.export.manifest import sha256

    stored = st_load((folder / "model.safetensors").read_bytes())
    header = json.loads((folder / "model.safetensors").read_bytes()[8 : 8 + length])
    pad, path = 0, folder / "model.safetensors"
    while True:
        save_file(stored, str(path), metadata={**(header.get("__metadata__") or {}), "pad": "x" * pad})
        data = path.read_bytes()
        got = int.from_bytes(data[:8], "little")
        if got >= target:
            break
        pad += target - got
    assert looks_pickled(data[:4])
    manifest["files"]["model.safetensors"] = {"bytes": len(data), "sha256": sha256(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded, _ = load(folder)
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_a_real_pickle_is_still_refused(tmp_path):
    path = tmp_path / "weights.bin"
    torch.save(build_model("digits_cnn").state_dict(), path)
    from condensa.errors import CheckpointError
    from condensa.io import refuse_if_pickle

    with pytest.raises(CheckpointError, match="pickle"):
        refuse_if_pickle(path)
