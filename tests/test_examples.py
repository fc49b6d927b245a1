"""Every example and shipped config that needs no external data runs (reduced size here;
the full-size runs are marked slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                            timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_quickstart():
    out = run("examples/quickstart.py").stdout
    assert "accuracy" in out and "smaller" in out and "flipped test examples" in out


@pytest.mark.parametrize("script, expect", [
    ("examples/search_in_python.py", "prune.density"),
    ("examples/custom_objective.py", "ms"),
    ("examples/language_model.py", "perplexity"),
    ("examples/speaker_encoder.py", "mean cosine"),  # needs: pip install --no-deps resemblyzer==0.1.4
])
def test_examples_small(script, expect):
    assert expect in run(script, "--small").stdout


def test_own_model_from_a_file(tmp_path):
    run("-m", "condensa.cli", "search", "examples/own_model.yaml", "--out", str(tmp_path / "own"), "--set", "search.budget=2",
        "--set", "search.eval_epochs=1", "--set", "recovery.epochs=1", "--set", "model.train.epochs=3")
    result = json.loads((tmp_path / "own" / "result.json").read_text())
    assert result["samples"] == 2 and "test" in result or not result["feasible"]


@pytest.mark.parametrize("config", ["configs/lm-char-lstm.yaml", "configs/lm-char-gpt.yaml", "configs/lm-char-gpt-heads.yaml",
                                    "configs/digits-2knob.yaml", "configs/digits-mlp.yaml"])
def test_shipped_configs_reduced(config, tmp_path):
    overrides = ["--set", "search.budget=2", "--set", "search.eval_epochs=1", "--set", "recovery.epochs=1"]
    if "lstm" in config:
        overrides += ["--set", "data.limit=800", "--set", "model.train.epochs=1", "--set", "model.kwargs={hidden: 64}"]
    if "gpt" in config:
        pytest.importorskip("transformers")
        overrides += ["--set", "data.limit=200", "--set", "model.train.epochs=1", "--set", "recovery.max_steps=2",
                      "--set", "model.kwargs={num_hidden_layers: 1, hidden_size: 32, intermediate_size: 64}"]
    if "mlp" in config:
        overrides += ["--set", "model.train.epochs=5"]
    run("-m", "condensa.cli", "search", config, "--out", str(tmp_path / "run"), "--quiet", *overrides)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["samples"] == 2


def test_distill_config_reduced(tmp_path):
    run("-m", "condensa.cli", "search", "configs/digits-distill.yaml", "--out", str(tmp_path / "run"), "--quiet",
        "--set", "search.budget=2", "--set", "search.eval_epochs=1", "--set", "recovery.epochs=1",
        "--set", "metrics.memorization_models=4", "--set", "metrics.memorization_epochs=2")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    if result["feasible"]:
        assert "memorization" in result and result["memorization"]["models"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("script", ["examples/search_in_python.py", "examples/custom_objective.py", "examples/language_model.py"])
def test_examples_full_size(script):
    run(script, timeout=3600)


@pytest.mark.slow
def test_default_search_full_size(tmp_path):
    run("-m", "condensa.cli", "search", "configs/digits.yaml", "--out", str(tmp_path / "run"), timeout=3600)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["feasible"] and result["compression_ratio"] >= 30 and result["accuracy_drop"] <= 1.0
