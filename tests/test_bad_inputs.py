"""Bad input never costs a traceback or data: the CLI answers with one line and exit code 2,
the Python API with a specific exception naming the field."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from condensa import Compose, NMPrune, Prune, Quantize, Range
from condensa.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    KnobError,
    LayerSelectionError,
    ModelError,
    SearchError,
)

REPO = Path(__file__).resolve().parents[1]
BASE = "model: {name: digits_cnn}\ndata: {name: digits}\nrecovery: {epochs: 1}\n"
PRUNE = "strategy: {scheme: prune_quantize, args: {density: 0.1}}\n"


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "condensa.cli", *args], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600, env={**os.environ})


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("condensa: error: "), result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "no_layers.py").write_text(
        "from torch import nn\n\ndef build(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.ReLU())\n")
    (root / "raises.py").write_text("def build(**kwargs):\n    raise RuntimeError('out of GPU memory')\n")
    (root / "weights.pkl").write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    (root / "empty.txt").write_text("")
    return root


CLI_CASES = [
    ("malformed YAML", "model: [unclosed\n", "not valid YAML at line"),
    ("unknown key", BASE + PRUNE + "optimiser: adam\n", "optimiser: unknown key"),
    ("wrong type", BASE + PRUNE + "seed: zero\n", "seed: expected an integer"),
    ("density outside (0, 1]", BASE + "strategy: {ops: [{Prune: {density: 1.5}}]}\n", "density must be a number in (0, 1]"),
    ("range with low >= high", BASE + "strategy: {scheme: prune_quantize, args: {density: {low: 0.5, high: 0.1}}}\n", "needs low < high"),
    ("unknown scheme", BASE + "strategy: {scheme: sparsify}\n", "unknown scheme 'sparsify'"),
    ("unknown operator", BASE + "strategy: {ops: [{Sparsify: {}}]}\n", "unknown operator 'Sparsify'"),
    ("layer pattern matching nothing", BASE + "strategy: {ops: [{Prune: {density: 0.1, layers: ['encoder.*']}}]}\n",
     "layer pattern 'encoder.*' matched no module"),
    ("model with no prunable layers", "model: {name: '{root}/no_layers.py:build'}\n" + PRUNE, "no compressible layers"),
    ("N:M where the dimension is not divisible by m", BASE + "strategy: {ops: [{NMPrune: {n: 2, m: 4}}]}\n",
     "input dimension 1, not divisible by m=4"),
    ("int8 on an unsupported layer", BASE + "strategy: {ops: [{Quantize: {dtype: int8, layers: [BatchNorm2d]}}]}\n",
     "'features.1' (BatchNorm2d) is not supported"),
    ("budget 0", BASE + PRUNE + "search: {budget: 0}\n", "search.budget: must be an integer >= 1"),
    ("negative accuracy bound", BASE + PRUNE + "search: {constraints: [{metric: accuracy_drop, upper: -1}]}\n", "upper: must be >= 0"),
    ("missing data path", BASE.replace("{name: digits}", "{name: cifar10, root: /no/such/dir}") + PRUNE, "/no/such/dir does not exist"),
    ("empty data set", BASE.replace("{name: digits}", "{name: text, root: '{root}/empty.txt'}") + PRUNE, "text too short"),
    ("a model factory that raises", "model: {name: '{root}/raises.py:build'}\n" + PRUNE, "raised RuntimeError: out of GPU memory"),
    ("pickle given as weights", "model: {name: digits_cnn, checkpoint: '{root}/weights.pkl'}\n" + PRUNE, "pickled objects beyond tensors"),
    ("unknown recovery method", BASE.replace("{epochs: 1}", "{method: sgd}") + PRUNE, "recovery.method: must be one of"),
    ("unknown device", BASE + PRUNE + "device: tpu\n", "device: must be one of"),
]


@pytest.mark.parametrize("name, text, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_config(files, tmp_path, name, text, fragment):
    config = tmp_path / "config.yaml"
    config.write_text(text.replace("{root}", str(files)))
    assert_one_line_error(run_cli("compress", str(config), "--out", str(tmp_path / "out")), fragment)


def test_cli_output_folder_not_writable(tmp_path):
    (tmp_path / "file").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(BASE + PRUNE)
    assert_one_line_error(run_cli("compress", str(config), "--out", str(tmp_path / "file" / "out")), "--out: cannot write to")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from condensa.export import save
    from condensa.models.digits import DigitsCNN

    out = tmp_path_factory.mktemp("export")
    model, record = Compose([Prune(density=0.1), Quantize("int8")]).apply(DigitsCNN())
    save(model, out, record=record, model_factory="digits_cnn", example_input=torch.randn(1, 1, 8, 8), onnx=False)
    (out / "config.json").write_text('{"model": {"name": "digits_cnn"}, "strategy": {"scheme": "prune_quantize"}}')
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for path in src.iterdir():
        (dst / path.name).write_bytes(path.read_bytes())
    return dst


def test_cli_eval_truncated_safetensors(export_dir, tmp_path):
    broken = _copy(export_dir, tmp_path / "cut")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("eval", str(broken)), "model.safetensors")


def test_cli_eval_tampered_byte_fails_the_hash(export_dir, tmp_path):
    broken = _copy(export_dir, tmp_path / "flip")
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (broken / "model.safetensors").write_bytes(bytes(data))
    assert_one_line_error(run_cli("eval", str(broken)), "hash mismatch")


def test_cli_eval_pickle_file_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    assert_one_line_error(run_cli("eval", str(tmp_path / "model.pt")), "never unpickles")


def test_cli_journal_from_a_different_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(BASE + "strategy: {scheme: prune_quantize, args: {density: {low: 0.05, high: 0.5, log: true}}}\n"
                      "search: {budget: 1, eval_epochs: 1}\n")
    assert run_cli("search", str(config), "--out", str(tmp_path / "run")).returncode == 0
    result = run_cli("search", str(config), "--out", str(tmp_path / "run"), "--set", "search.constraints=[{metric: mismatch_rate, upper: 2}]")
    assert_one_line_error(result, "different config")


# -- Python API: specific exception types ----------------------------------------------------

def test_api_errors(tmp_path):
    from condensa.config import parse_config
    from condensa.export import load
    from condensa.models.registry import build_model
    from condensa.search import Objective, search

    with pytest.raises(ConfigError, match="density"):
        Prune(density=0.0)
    with pytest.raises(KnobError, match="low < high"):
        Range(0.5, 0.1)
    with pytest.raises(KnobError, match="outside its range"):
        Prune(density=Range(0.01, 0.5)).bind({"prune.density": 0.9})
    with pytest.raises(KnobError, match="open knobs"):
        Prune(density=Range(0.01, 0.5)).apply(nn.Linear(4, 4))
    with pytest.raises(LayerSelectionError, match="no compressible layers"):
        Prune(density=0.1).apply(nn.Sequential(nn.ReLU()))
    with pytest.raises(LayerSelectionError, match="not divisible by m=4"):
        NMPrune().apply(nn.Linear(6, 4))
    with pytest.raises(ModelError, match="unknown model"):
        build_model("resnet9000")
    with pytest.raises(ConfigError, match="search.budget"):
        search(Prune(density=Range(0.01, 0.5)), lambda s: {}, Objective("x"), [], budget=0)
    with pytest.raises(SearchError, match="no open knobs"):
        search(Prune(density=0.1), lambda s: {}, Objective("x"), [], budget=1)
    with pytest.raises(ConfigError, match="data.name"):
        parse_config({"strategy": {"scheme": "x"}, "data": {"name": "mnist"}})
    pickled = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, pickled)
    with pytest.raises(CheckpointError, match="pickle"):
        load(pickled)


def test_api_data_errors(tmp_path):
    from condensa.config import DataConfig
    from condensa.data.loaders import load_splits

    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(name="cifar10", root=str(tmp_path / "missing")))
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="ImageFolder"):
        load_splits(DataConfig(name="imagefolder", root=str(tmp_path)))
