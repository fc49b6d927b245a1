"""Bad input never costs a traceback or data: the CLI answers with one line naming the field and
exit code 2, before any training, and leaves the files already in its folders byte for byte as they
were; the Python API raises a specific exception naming the field.

The CLI runs in-process (``condensa.cli.main``): a subprocess costs seconds of start-up per case.
Concurrency and signals are in ``test_faults.py``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn

from condensa import Compose, NMPrune, Prune, Quantize, Range, cli, runs
from condensa.config import parse_config
from condensa.errors import (
    CheckpointError,
    CondensaWarning,
    ConfigError,
    DataError,
    KnobError,
    LayerSelectionError,
    ModelError,
    SearchError,
)

BASE = ("model: {name: digits_cnn, train: {epochs: 1}}\ndata: {name: digits}\nrecovery: {epochs: 1}\n"
        "strategy: {scheme: prune_quantize, args: {density: 0.1}}\n")
OPEN = BASE.replace("density: 0.1", "density: {low: 0.05, high: 0.5, log: true}")
#: files of an earlier run in the output folder: a refused command must leave them byte-identical
EARLIER_RUN = {"result.json": b'{"command": "compress"}\n', "config.json": b"{}\n", "compressed.safetensors": b"\x00" * 64,
               "journal.jsonl": b'{"type": "header", "fingerprint": {}, "space": {}}\n{"type": "evaluation", "evalu'}
#: a journal line that parses but is no journal record, the field it names
JOURNAL_EDITS = {
    "a list": (b'[1, 2, 3]\n', "line 2 is a JSON list"),
    "an evaluation without keys": (b'{"type": "evaluation", "evaluation": {"index": 0}}\n', "without knobs"),
}


@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    """Files the cases point at (user code, checkpoints, data)."""
    root = tmp_path_factory.mktemp("helpers")
    (root / "no_layers.py").write_text(
        "from torch import nn\n\ndef build(num_classes=10):\n    return nn.Sequential(nn.Flatten(), nn.ReLU())\n")
    (root / "raises.py").write_text("def build(**kwargs):\n    raise RuntimeError('out of GPU memory')\n")
    (root / "syntax_error.py").write_text("def strategy(density=0.1:\n    pass\n")
    (root / "objective_nan.py").write_text("def objective(model, metrics):\n    return float('nan')\n")
    (root / "weights.pkl").write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    (root / "empty.txt").write_text("")
    (root / "a_folder").mkdir()
    from condensa.models.digits import DigitsCNN

    save_file({k: torch.full_like(v, math.nan) if v.is_floating_point() else v for k, v in DigitsCNN().state_dict().items()},
              str(root / "nan.safetensors"))
    return root


class Sandbox:
    """A case's world: an output folder holding an earlier run, and helpers to write inputs."""

    def __init__(self, tmp: Path, helpers: Path) -> None:
        self.tmp, self.helpers = tmp, helpers
        tmp.mkdir(exist_ok=True)
        self.out = tmp / "out"
        self.out.mkdir()
        for name, data in EARLIER_RUN.items():
            (self.out / name).write_bytes(data)
        self.config = self.write("config.yaml", BASE)

    def write(self, name: str, text: str | bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(text if isinstance(text, bytes) else text.replace("{helpers}", str(self.helpers)).encode())
        return path

    def edit_journal(self, line: bytes) -> Sandbox:
        (self.out / runs.JOURNAL).write_bytes(b'{"type": "header", "fingerprint": {}, "space": {}}\n' + line)
        return self

    def compress(self, *overrides: str, config: Path | None = None) -> list[str]:
        return ["compress", str(config or self.config), "--out", str(self.out), *[a for o in overrides for a in ("--set", o)]]

    def search(self, *overrides: str) -> list[str]:
        return ["search", str(self.write("open.yaml", OPEN)), "--out", str(self.out), *[a for o in overrides for a in ("--set", o)]]

    def run_folder(self, *, damage: str | None = None, file: str = runs.RESULT, export: bool = False) -> Path:
        """A compress run (or export) folder written by hand; ``damage`` spoils ``file``."""
        folder = self.tmp / ("export" if export else "run")
        folder.mkdir()
        (folder / runs.CONFIG).write_text(json.dumps(runs.resolved(parse_config(yaml.safe_load(BASE)))))
        (folder / runs.RESULT).write_text(json.dumps({"command": "compress", "strategy": {}, "record": {}, "test": {}}))
        if export:
            (folder / "manifest.json").write_text("{}")
        if damage is not None:
            original = (folder / file).read_bytes()
            (folder / file).write_bytes({"truncated": original[: len(original) // 2], "not JSON": b"not json\n",
                                         "a JSON list": b"[1, 2, 3]\n", "not UTF-8": b"\xff\xfe{}"}[damage])
        return folder


def snapshot(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders if folder.is_dir() for p in folder.rglob("*") if p.is_file()}


def assert_unchanged(before: dict[Path, bytes], *folders: Path) -> None:
    """Every file that was there before is still there, byte for byte (a lock file may appear)."""
    after = snapshot(*folders)
    assert {p: after.get(p) for p in before} == before


def run_cli(capfd, argv: list[str]) -> tuple[int, str]:
    capfd.readouterr()
    code = cli.main([str(a) for a in argv])
    return code, capfd.readouterr().err


def assert_one_line_error(code: int, err: str, field: str, fragment: str = "") -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"condensa: error: {field}"), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


def _nested(depth: int) -> str:
    return "[" * depth


def _elf_bytes() -> bytes:
    data = Path(sys.executable).resolve().read_bytes()[:65536]
    return data if data.startswith(b"\x7fELF") else b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 64


# (case, argv from a Sandbox, field the message starts with, fragment it contains)
CASES = [
    # -- files and the command line -------------------------------------------------------------
    ("config missing", lambda t: t.compress(config=t.tmp / "absent.yaml"), "config:", "does not exist"),
    ("config is a directory", lambda t: t.compress(config=t.helpers / "a_folder"), "config:", "is a directory"),
    ("config malformed YAML", lambda t: t.compress(config=t.write("c.yaml", "model: [unclosed\n")), "config:", "not valid YAML at line"),
    ("config random bytes", lambda t: t.compress(config=t.write("c.yaml", random.Random(0).randbytes(3000))), "config:", "not UTF-8"),
    ("config an ELF binary", lambda t: t.compress(config=t.write("c.yaml", _elf_bytes())), "config:", "not UTF-8"),
    ("config UTF-16", lambda t: t.compress(config=t.write("c.yaml", BASE.encode("utf-16"))), "config:", "UTF-16"),
    ("config nested 5000 deep", lambda t: t.compress(config=t.write("c.yaml", "model: " + _nested(5000))), "config:", "nest"),
    ("config a list", lambda t: t.compress(config=t.write("c.yaml", "- 1\n- 2\n")), "config:", "mapping of sections"),
    ("--set unclosed list", lambda t: t.compress("search.budget=[1,"), "search.budget:", "not valid YAML"),
    ("--set with a tab", lambda t: t.compress("search.budget=\t5"), "search.budget:", "not valid YAML"),
    ("--set python tag", lambda t: t.compress("search.budget=!!python/object:os.system x"), "search.budget:", "constructor"),
    ("--set nested 5000 deep", lambda t: t.compress("search.budget=" + _nested(5000)), "search.budget:", "nest"),
    ("--set without =", lambda t: t.compress("search.budget"), "--set:", "expected key.path=value"),
    ("--set unknown key", lambda t: t.compress("recovery_epochs=3"), "recovery_epochs:", "unknown key"),
    ("argparse unknown option", lambda t: t.compress() + ["--bogus"], "--bogus:", "unrecognized argument"),
    ("argparse missing config", lambda t: ["compress"], "config:", "required"),
    ("argparse unknown command", lambda t: ["serch", str(t.config)], "COMMAND:", "invalid choice: 'serch'"),
    ("argparse bad --seed", lambda t: t.compress() + ["--seed", "x"], "--seed:", "invalid int value"),
    ("--out under a file", lambda t: ["compress", t.config, "--out", t.out / "result.json" / "sub"], "--out:", "cannot write"),
    # -- config values ----------------------------------------------------------------------------
    ("unknown key", lambda t: t.compress(config=t.write("c.yaml", BASE + "optimiser: adam\n")), "optimiser:", "unknown key"),
    ("wrong type", lambda t: t.compress("seed=zero"), "seed:", "expected an integer"),
    ("seed too large", lambda t: t.compress("seed=99999999999999999999"), "seed:", "[0, 4294967295]"),
    ("split_seed negative", lambda t: t.compress("data.split_seed=-1"), "data.split_seed:", "[0, 4294967295]"),
    ("unknown device", lambda t: t.compress("device=tpu"), "device:", "must be one of"),
    ("budget 0", lambda t: t.compress("search.budget=0"), "search.budget:", "integer >= 1"),
    ("eval_epochs negative", lambda t: t.compress("search.eval_epochs=-1"), "search.eval_epochs:", ">= 0"),
    ("negative constraint bound", lambda t: t.compress("search.constraints=[{metric: accuracy_drop, upper: -1}]"),
     "search.constraints[0].upper:", ">= 0"),
    ("NaN constraint bound", lambda t: t.compress("search.constraints=[{metric: accuracy_drop, upper: .nan}]"),
     "search.constraints[0].upper:", "finite"),
    ("unknown objective", lambda t: t.search("search.objective=smallness"), "search.objective:", "no evaluation measures 'smallness'"),
    ("misspelled constraint metric", lambda t: t.search("search.constraints=[{metric: acuracy_drop, upper: 1}]"),
     "search.constraints[0].metric:", "did you mean 'accuracy_drop'"),
    ("latency constraint without latency", lambda t: t.search("search.constraints=[{metric: latency_ms, upper: 1}]"),
     "search.constraints[0].metric:", "metrics.latency: true"),
    ("latency_repeats 0", lambda t: t.compress("metrics.latency_repeats=0"), "metrics.latency_repeats:", ">= 1"),
    ("latency_batch_size 0", lambda t: t.compress("metrics.latency_batch_size=0"), "metrics.latency_batch_size:", ">= 1"),
    ("memorization_models 0", lambda t: t.compress("metrics.memorization_models=0"), "metrics.memorization_models:", ">= 2"),
    # -- data ---------------------------------------------------------------------------------------
    ("missing data path", lambda t: t.compress("data={name: cifar10, root: /no/such/dir}"), "data.root:", "/no/such/dir does not exist"),
    ("empty text file", lambda t: t.compress("data={name: text, root: " + str(t.helpers / "empty.txt") + "}", "model.name=char_lstm"),
     "data.root:", "too short for seq_len"),
    ("seq_len 0", lambda t: t.compress("data={name: text, seq_len: 0}"), "data.seq_len:", ">= 1"),
    ("text limit negative", lambda t: t.compress("data={name: text, limit: -100}"), "data.limit:", ">= 1"),
    ("image_size negative", lambda t: t.compress("data={name: imagefolder, root: /x, image_size: -4}"), "data.image_size:", ">= 1"),
    ("imagefolder image_size 0", lambda t: t.compress("data={name: imagefolder, root: /x, image_size: 0}"), "data.image_size:", ">= 1"),
    ("image_size for digits", lambda t: t.compress("data.image_size=16"), "data.image_size:", "cifar10 and imagefolder only"),
    ("imagefolder val_fraction negative", lambda t: t.compress("data={name: imagefolder, root: /x, val_fraction: -0.5}"),
     "data.val_fraction:", "(0, 1)"),
    ("imagefolder limit negative", lambda t: t.compress("data={name: imagefolder, root: /x, limit: -3}"), "data.limit:", ">= 1"),
    ("imagefolder limit 0", lambda t: t.compress("data={name: imagefolder, root: /x, limit: 0}"), "data.limit:", ">= 1"),
    ("digits val_fraction too large", lambda t: t.compress("data.val_fraction=0.85"), "data.val_fraction:", "below 0.8"),
    # -- model ------------------------------------------------------------------------------------
    ("model path outside", lambda t: t.compress("model.name=../../etc/passwd:x"), "model.name:", "neither a module name"),
    ("model with no prunable layers", lambda t: t.compress(f"model.name={t.helpers}/no_layers.py:build"),
     "strategy.scheme:", "no compressible layers"),
    ("model factory raises", lambda t: t.compress(f"model.name={t.helpers}/raises.py:build"), "model.name:",
     "raised RuntimeError: out of GPU memory"),
    ("checkpoint is a directory", lambda t: t.compress(f"model.checkpoint={t.helpers / 'a_folder'}"), "model.checkpoint:", "is a directory"),
    ("checkpoint a pickle", lambda t: t.compress(f"model.checkpoint={t.helpers / 'weights.pkl'}"), "model.checkpoint:",
     "pickled objects beyond tensors"),
    ("checkpoint all NaN", lambda t: t.compress(f"model.checkpoint={t.helpers / 'nan.safetensors'}"), "model.checkpoint:", "NaN"),
    # -- strategy -----------------------------------------------------------------------------------
    ("density outside (0, 1]", lambda t: t.compress("strategy={ops: [{Prune: {density: 1.5}}]}"), "strategy.ops[0].Prune:",
     "density must be a number in (0, 1]"),
    ("density choice outside (0, 1]", lambda t: t.compress("strategy.args.density={choice: [0.1, 2.0]}"), "strategy.args:",
     "density choices must be numbers in (0, 1]"),
    ("range with low >= high", lambda t: t.compress("strategy.args.density={low: 0.5, high: 0.1}"), "strategy.args.density:",
     "needs low < high"),
    ("unknown scheme", lambda t: t.compress("strategy.scheme=sparsify"), "strategy.scheme:", "unknown scheme 'sparsify'"),
    ("scheme file with a syntax error", lambda t: t.compress(f"strategy.scheme={t.helpers / 'syntax_error.py'}"),
     "strategy.scheme:", "syntax error"),
    ("unknown operator", lambda t: t.compress("strategy={ops: [{Sparsify: {}}]}"), "strategy.ops[0]:", "unknown operator"),
    ("empty ops", lambda t: t.compress("strategy={ops: []}"), "strategy.ops:", "the list is empty"),
    ("two Prune ops on one weight", lambda t: t.compress("strategy={ops: [{Prune: {density: 0.5}}, {Prune: {density: 0.1}}]}"),
     "strategy.ops:", "both prune"),
    ("layer pattern matching nothing", lambda t: t.compress("strategy={ops: [{Prune: {density: 0.1, layers: ['encoder.*']}}]}"),
     "strategy.ops:", "layer pattern 'encoder.*' matched no module"),
    ("N:M not divisible", lambda t: t.compress("strategy={ops: [{NMPrune: {n: 2, m: 4}}]}"), "strategy.ops:", "not divisible by m=4"),
    ("int8 on BatchNorm", lambda t: t.compress("strategy={ops: [{Quantize: {dtype: int8, layers: [BatchNorm2d]}}]}"),
     "strategy.ops:", "is not supported"),
    ("compress with an open knob", lambda t: ["compress", t.write("open.yaml", OPEN), "--out", t.out], "strategy: has open knobs:",
     "prune.density"),
    # -- recovery -----------------------------------------------------------------------------------
    ("unknown recovery method", lambda t: t.compress("recovery.method=sgd"), "recovery.method:", "must be one of"),
    ("max_steps 0", lambda t: t.compress("recovery.max_steps=0"), "recovery.max_steps:", ">= 1"),
    ("temperature 0", lambda t: t.compress("recovery.temperature=0"), "recovery.temperature:", "> 0"),
    ("distill weights all zero", lambda t: t.compress("recovery.loss=distill", "recovery.weights={ce: 0, kl: 0}"),
     "recovery.weights:", "positive sum"),
    ("distill weights negative", lambda t: t.compress("recovery.loss=distill", "recovery.weights={ce: 1, kl: -1}"),
     "recovery.weights:", ">= 0"),
    ("distributed outside torchrun", lambda t: t.compress("recovery.distributed=true"), "recovery.distributed:", "torchrun"),
    # -- journal --------------------------------------------------------------------------------------
    *[(f"journal line {what}", lambda t, line=line: t.edit_journal(line).search(), "{out}/journal.jsonl:", fragment)
      for what, (line, fragment) in JOURNAL_EDITS.items()],
    # -- export, eval, report on damaged folders ------------------------------------------------------
    *[(f"export, {file} {damage}", lambda t, d=damage, f=file: ["export", t.run_folder(damage=d, file=f), "--no-onnx"],
       f"{'{tmp}'}/run/{file}:", "") for file in (runs.CONFIG, runs.RESULT) for damage in ("truncated", "not JSON", "a JSON list")],
    *[(f"report, result.json {damage}", lambda t, d=damage: ["report", t.run_folder(damage=d)], "{tmp}/run/result.json:", "")
      for damage in ("truncated", "not JSON", "a JSON list", "not UTF-8")],
    *[(f"eval, config.json {damage}", lambda t, d=damage: ["eval", t.run_folder(damage=d, file=runs.CONFIG, export=True)],
       "{tmp}/export/config.json:", "") for damage in ("truncated", "not JSON", "a JSON list")],
    ("report without result.json", lambda t: ["report", t.helpers / "a_folder"], "{helpers}/a_folder:", "no result.json"),
    ("eval on a run folder", lambda t: ["eval", t.run_folder()], "{tmp}/run:", "condensa export {tmp}/run"),
    ("eval on a pickle file", lambda t: ["eval", t.helpers / "weights.pkl"], "{helpers}/weights.pkl", "never unpickles"),
    *[(f"{command} --out is a file", lambda t, c=command: [c, t.run_folder(export=c == "eval"), "--out", t.out / "result.json"]
       + (["--no-onnx"] if c == "export" else []), "--out:", "is a file") for command in ("export", "eval", "report")],
    *[(f"{command} --out unwritable", lambda t, c=command: [c, t.run_folder(export=c == "eval"), "--out", "/proc/condensa-test"]
       + (["--no-onnx"] if c == "export" else []), "--out:", "cannot write") for command in ("export", "eval", "report")],
]


@pytest.mark.parametrize("argv, field, fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_any_training(helpers, tmp_path, capfd, monkeypatch, argv, field, fragment):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CONDENSA_CACHE", str(cache))  # nothing may be trained: the cache must stay empty
    monkeypatch.chdir(tmp_path)
    sandbox = Sandbox(tmp_path / "case", helpers)
    args = argv(sandbox)
    before = snapshot(sandbox.out, sandbox.tmp / "run", sandbox.tmp / "export")
    code, err = run_cli(capfd, args)
    names = {"{tmp}": str(sandbox.tmp), "{helpers}": str(helpers), "{out}": str(sandbox.out)}
    for key, value in names.items():
        field, fragment = field.replace(key, value), fragment.replace(key, value)
    assert_one_line_error(code, err, field, fragment)
    assert_unchanged(before, sandbox.out, sandbox.tmp / "run", sandbox.tmp / "export")
    assert not cache.exists() or not any(cache.iterdir())  # refused before any training


def test_a_folder_in_use_is_refused_naming_the_holder(helpers, tmp_path, capfd):
    from filelock import FileLock

    sandbox = Sandbox(tmp_path, helpers)
    with FileLock(str(sandbox.out / runs.LOCK)):  # what a running search holds (test_faults runs two for real)
        (sandbox.out / runs.PID).write_text(f"{os.getpid()}\n")
        before = snapshot(sandbox.out)
        code, err = run_cli(capfd, sandbox.search())
    assert_one_line_error(code, err, "--out:", f"in use by another condensa run (pid {os.getpid()})")
    assert_unchanged(before, sandbox.out)


def test_an_objective_returning_nan_is_an_error_not_an_infeasible_point(helpers, tmp_path, capfd):
    sandbox = Sandbox(tmp_path, helpers)
    before = snapshot(sandbox.out)
    code, err = run_cli(capfd, sandbox.compress(f"search.objective={helpers / 'objective_nan.py'}:objective", "recovery.epochs=0"))
    assert_one_line_error(code, err, "search.objective:", "returned nan; it must return a finite number")
    assert_unchanged(before, sandbox.out)


# -- values that used to be accepted and ignored now take effect -------------------------------------

def test_digits_limit_and_val_fraction_take_effect():
    from condensa.config import DataConfig
    from condensa.data.loaders import load_splits

    default = load_splits(DataConfig())
    assert (len(default.train), len(default.val), len(default.test)) == (1077, 360, 360)  # unchanged default split
    wider = load_splits(DataConfig(val_fraction=0.4))
    assert len(wider.val) == round(0.4 * 1797) and len(wider.test) == 360
    capped = load_splits(DataConfig(limit=100))
    assert (len(capped.train), len(capped.val), len(capped.test)) == (100, 100, 100)
    assert torch.equal(capped.train.indices, default.train.indices[:100])


def test_result_json_is_strict_json(tmp_path):
    from condensa.io import atomic_write_json

    atomic_write_json(tmp_path / "r.json", {"mean": math.nan, "bound": [math.inf, 1.5]})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "mean": None, "bound": [None, 1.5]}


def test_fp16_autocast_on_cpu_says_it_runs_bf16():
    from condensa.pipeline import Workspace

    with pytest.warns(CondensaWarning, match="recovery.amp: fp16 autocast needs CUDA; on cpu recovery runs bf16"):
        Workspace(nn.Linear(4, 2), None, recovery={"amp": "fp16"}, device="cpu")


def test_warnings_print_as_one_line(capsys):
    cli._show_warning(CondensaWarning("journal.jsonl: lines 3\ncannot be read"), CondensaWarning, "x.py", 1)
    cli._show_warning(RuntimeWarning("overflow"), RuntimeWarning, "x.py", 1)
    assert capsys.readouterr().err == ("condensa: warning: journal.jsonl: lines 3 cannot be read\n"
                                       "condensa: warning: RuntimeWarning: overflow\n")


# -- Python API: specific exception types ----------------------------------------------------------

def test_api_errors(tmp_path):
    from condensa.export import load
    from condensa.models.registry import build_model
    from condensa.search import Constraint, Objective, search

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
    with pytest.raises(LayerSelectionError, match="Prune at positions 0 and 1 both prune 'weight'"):
        Compose([Prune(0.5), Prune(0.1), Quantize("int8")]).apply(nn.Linear(4, 4))
    with pytest.raises(ModelError, match="unknown model"):
        build_model("resnet9000")
    with pytest.raises(SearchError, match="no open knobs"):
        search(Prune(density=0.1), lambda s: {}, Objective("x"), [], budget=1)
    with pytest.raises(ConfigError, match="bound of 'accuracy_drop' must be a finite number"):
        search(Prune(density=Range(0.01, 0.5)), lambda s: {}, Objective("x"), [Constraint("accuracy_drop", math.nan)])
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
