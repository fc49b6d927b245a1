"""The command line as a user drives it: a subprocess, help texts, exit codes, plain output.

Bad input (one line, exit code 2) is tested in-process in ``test_bad_inputs.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def condensa(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "condensa.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, stdin=subprocess.DEVNULL, timeout=timeout)


def help_text(capsys, *argv: str) -> str:
    from condensa import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["search", "compress", "eval", "export", "report"])
def test_every_command_has_help_with_examples(capsys, command):
    text = help_text(capsys, command, "--help")
    assert text.startswith(f"usage: condensa {command}")  # --help keeps argparse's usage; errors are one line
    assert "examples:" in text


def test_top_level_help_lists_commands(capsys):
    text = help_text(capsys, "--help")
    for command in ("search", "compress", "eval", "export", "report"):
        assert command in text


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


def test_search_with_a_changed_config_on_the_same_folder_is_refused(search_run, capsys):
    from condensa import cli

    out, _ = search_run
    before = (out / "journal.jsonl").read_bytes()
    assert cli.main(["search", str(REPO / "configs/digits.yaml"), "--out", str(out), *QUICK, "--set", "search.objective=flops"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "objective" in err and len(err.splitlines()) == 1
    assert (out / "journal.jsonl").read_bytes() == before


def test_a_damaged_journal_is_set_aside_with_one_warning_line(search_run, tmp_path, capsys):
    from condensa import cli

    out = tmp_path / "run"
    shutil.copytree(search_run[0], out)
    good = (out / "journal.jsonl").read_bytes()
    damaged = good.replace(b"\n", b'\n}{"type": "evaluation", "ev\n', 1)  # what two interleaved writers left
    (out / "journal.jsonl").write_bytes(damaged)
    assert cli.main(["search", str(REPO / "configs/digits.yaml"), "--out", str(out), *QUICK, "--quiet"]) == 0
    warning, = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    corrupt, = out.glob("journal.jsonl.corrupt-*")
    assert warning.startswith("condensa: warning: ") and corrupt.name in warning and "line 2" in warning
    assert corrupt.read_bytes() == damaged
    assert (out / "journal.jsonl").read_bytes() == good  # every evaluation kept, none re-run


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


def test_lc_with_defaults_is_at_least_as_accurate_as_finetuning(tmp_path):
    """The shipped fixed-compression config with ``recovery.method=lc`` and nothing else changed
    (lr: auto, the budget-derived schedule) keeps at least fine-tuning's test accuracy (98.61 vs
    98.06 % when written)."""
    accuracy = {}
    for method in ("finetune", "lc"):
        out = tmp_path / method
        result = condensa("compress", "configs/digits-compress.yaml", "--out", str(out), "--quiet",
                          "--set", f"recovery.method={method}")
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((out / "result.json").read_text())
        assert summary["test"]["recovery_lr"] > 0  # lr: auto recorded the rate it picked
        accuracy[method] = summary["accuracy"]
    assert accuracy["lc"] >= accuracy["finetune"], accuracy


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
