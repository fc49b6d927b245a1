"""The command line as a user drives it: a subprocess, help texts, exit codes, plain output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def condensa(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "condensa.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, stdin=subprocess.DEVNULL, timeout=timeout)


@pytest.mark.parametrize("command", ["search", "compress", "eval", "export", "report"])
def test_every_command_has_help_with_examples(command):
    result = condensa(command, "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert f"condensa {command}" in result.stdout


def test_top_level_help_lists_commands():
    result = condensa("--help")
    assert result.returncode == 0
    for command in ("search", "compress", "eval", "export", "report"):
        assert command in result.stdout


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: [unclosed\n", "not valid YAML at line"),
        ("strategy: {scheme: prune_quantize}\nfoo: 1\n", "foo: unknown key"),
        ("strategy: {scheme: prune_quantize}\nsearch: {budget: 0}\n", "search.budget: must be an integer >= 1"),
        ("strategy: {scheme: nope}\n", "unknown scheme 'nope'"),
        ("strategy: {ops: [{Prune: {density: 2}}]}\n", "density must be a number in (0, 1]"),
        ("strategy: {scheme: prune_quantize}\ndata: {name: cifar10, root: /does/not/exist}\n", "data.root: /does/not/exist does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, text, fragment):
    result = condensa("compress", str(write(tmp_path, text)), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("condensa: error: ")
    assert fragment in lines[0]


def test_missing_config_file_exits_2(tmp_path):
    result = condensa("search", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_unknown_set_key_exits_2(tmp_path):
    config = write(tmp_path, "strategy: {scheme: prune_quantize}\n")
    result = condensa("compress", str(config), "--set", "recovery_epochs=3")
    assert result.returncode == 2
    assert "recovery_epochs: unknown key" in result.stderr


def test_report_on_folder_without_result_exits_2(tmp_path):
    result = condensa("report", str(tmp_path))
    assert result.returncode == 2
    assert "no result.json" in result.stderr


QUICK = ["--set", "search.budget=4", "--set", "search.eval_epochs=3", "--set", "recovery.epochs=4"]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    result = condensa("search", "configs/digits.yaml", "--out", str(out), *QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


def test_search_writes_results_and_prints_table(search_run):
    out, result = search_run
    summary = json.loads((out / "result.json").read_text())
    assert summary["samples"] == 4
    assert summary["feasible"] is True
    for key in ("reference_accuracy", "accuracy", "mismatches", "mismatches_ref_correct", "mismatch_rate", "density",
                "footprint_bytes", "compression_ratio", "flops_dense", "flops_effective", "strategy", "seed", "versions",
                "knobs", "test", "validation"):
        assert key in summary, key
    assert summary["test"]["split"] == "test" and summary["validation"]["split"] == "val"
    assert 0 < summary["knobs"]["prune.density"] <= 0.5
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()
    assert len((out / "journal.jsonl").read_text().splitlines()) == 5  # header + 4 evaluations
    # Not a TTY: progress comes as plain lines, no carriage returns.
    assert "search 4/4" in result.stderr and "\r" not in result.stderr
    assert "best: prune.density=" in result.stdout and "feasible" in result.stdout


def test_search_rerun_resumes_without_reevaluating(search_run):
    out, _ = search_run
    before = (out / "journal.jsonl").read_text()
    result = condensa("search", "configs/digits.yaml", "--out", str(out), *QUICK)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "journal.jsonl").read_text() == before  # nothing re-evaluated, nothing appended


def test_search_with_a_changed_config_on_the_same_folder_is_refused(search_run):
    out, _ = search_run
    result = condensa("search", "configs/digits.yaml", "--out", str(out), *QUICK, "--set", "search.objective=flops")
    assert result.returncode == 2
    assert "different config" in result.stderr and "objective" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_eval_and_report_on_a_finished_search(search_run, tmp_path):
    out, _ = search_run
    export_dir = tmp_path / "export"
    result = condensa("export", str(out), "--out", str(export_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"model.safetensors", "manifest.json", "model.onnx"} <= {p.name for p in export_dir.iterdir()}
    summary = json.loads((out / "result.json").read_text())
    assert (export_dir / "model.safetensors").stat().st_size < summary["reference_bytes"] / 10
    result = condensa("eval", str(export_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = json.loads((export_dir / "eval-test.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(summary["accuracy"])
    assert evaluated["mismatches"] == summary["mismatches"]
    assert evaluated["footprint_bytes"] == pytest.approx(summary["footprint_bytes"])
    result = condensa("report", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 4 and "data:image/png;base64," in html
    assert "Search evaluations" in (out / "report.md").read_text()


def test_compress_quiet_prints_nothing_and_overrides_apply(tmp_path):
    out = tmp_path / "c"
    result = condensa("compress", "configs/digits-compress.yaml", "--out", str(out), "--quiet",
                      "--set", "recovery.epochs=2", "--set", "strategy.args.density=0.2", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "" and result.stderr == ""
    summary = json.loads((out / "result.json").read_text())
    assert summary["seed"] == 1
    assert summary["density"] == pytest.approx(0.2, abs=0.01)


def test_compress_with_open_knob_exits_2(tmp_path):
    result = condensa("compress", "configs/digits.yaml", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "open knobs: prune.density" in result.stderr


def test_unwritable_output_folder_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = condensa("compress", "configs/digits-compress.yaml", "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert "--out: cannot write to" in result.stderr


@pytest.mark.parametrize("argv, module, extra", [
    (["export", "runs/any"], "onnx", "condensa[onnx]"),
    (["report", "runs/any"], "matplotlib", "condensa[report]"),
])
def test_missing_extra_is_named_in_one_line(monkeypatch, capsys, argv, module, extra):
    import importlib.util

    from condensa import cli, extras

    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and extra in lines[0] and f"{module} is not installed" in lines[0], lines


def test_export_with_no_onnx_works_without_the_onnx_extra(search_run, tmp_path, monkeypatch):
    import importlib.util

    from condensa import commands, extras

    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name.startswith("onnx") else real(name, *a))
    out, _ = search_run
    commands.export(out, out=str(tmp_path / "packed"), onnx=False, quiet=True)
    assert (tmp_path / "packed" / "model.safetensors").is_file() and not (tmp_path / "packed" / "model.onnx").exists()
    with pytest.raises(extras.MissingExtraError, match=r"condensa\[onnx\]"):
        commands.export(out, out=str(tmp_path / "with-onnx"), quiet=True)
